import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # so tests can `import testing`

# The loss's measured products are kept per machine in a file (hbfast.ops.gemm.loss_backend): the tests
# and the processes they start share one in a temporary directory, not the user's ~/.cache.
if "HBFAST_CACHE" not in os.environ:
    import tempfile

    os.environ["HBFAST_CACHE"] = tempfile.mkdtemp(prefix="hbfast-test-cache-")


import pytest  # noqa: E402


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles and blocks small enough that tests of a few hundred rows cross their boundaries (the CUDA
    tests, on a GPU or emulated)."""
    from hbfast.ops.loss import blocks, cuda as loss_cuda
    from hbfast.ops.search import flat

    monkeypatch.setattr(flat, "CUDA_QUERY_TILE", 16)
    monkeypatch.setattr(flat, "CUDA_CORPUS_TILE", 64)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 16)  # block_rows() keeps at least 16 rows
    monkeypatch.setattr(loss_cuda, "COLUMN_CHUNK_ROWS", 5)  # 16-row blocks: chunks of 5, 5, 5, 1
    monkeypatch.setattr(loss_cuda, "ROW_SPAN_COLUMNS", 32)  # 16 rows of 100 columns: 4 CTAs per row
