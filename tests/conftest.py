import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # so tests can `import testing`

# The loss's measured products are kept per machine in a file (hbfast._gemm.loss_backend): the tests
# and the processes they start share one in a temporary directory, not the user's ~/.cache.
if "HBFAST_CACHE" not in os.environ:
    import tempfile

    os.environ["HBFAST_CACHE"] = tempfile.mkdtemp(prefix="hbfast-test-cache-")
