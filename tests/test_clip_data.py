"""Image-caption tables, the LiT embedding cache, precomputed embedding shards and tar shard streaming."""
import json
import logging

import numpy as np
import pytest
import torch

from clip_fixtures import colour_image, png_bytes, write_shard
from hbfast.clip import cache, shards
from hbfast.clip.data import load_image_text_table


def _table(tmp_path, rows, name="captions.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _images(tmp_path, n):
    for i in range(n):
        colour_image(i).save(tmp_path / f"{i}.png")
    return [f"{i}.png" for i in range(n)]


# ---- tables -----------------------------------------------------------------------------------------

def test_wide_and_long_tables_give_the_same_availability(tmp_path):
    names = _images(tmp_path, 3)
    wide = load_image_text_table(_table(tmp_path, [
        {"image": names[0], "en": "a red dog", "de": "ein roter Hund"},
        {"image": names[1], "en": "a cat", "de": None},
        {"image": names[2], "en": None, "de": "ein Baum"}]))
    long = load_image_text_table(_table(tmp_path, [
        {"image": names[0], "language": "en", "caption": "a red dog"},
        {"image": names[0], "language": "de", "caption": "ein roter Hund"},
        {"image": names[1], "language": "en", "caption": "a cat"},
        {"image": names[2], "language": "de", "caption": "ein Baum"}], "long.jsonl"), ["de", "en"])
    assert wide.languages == ("en", "de") and long.languages == ("de", "en")
    np.testing.assert_array_equal(wide.availability, [[True, True], [True, False], [False, True]])
    np.testing.assert_array_equal(long.availability[:, ::-1], wide.availability)
    assert wide.caption(2, 1) == "ein Baum" and long.caption(0, 0) == "ein roter Hund"
    assert np.asarray(wide.load_image(1)).shape == (32, 32, 3)
    np.testing.assert_array_equal(np.asarray(wide.load_image(1)), np.asarray(colour_image(1).convert("RGB")))


def test_parquet_table_with_image_bytes(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(colour_image(i)), "path": None} for i in range(2)],
                                "fr": ["un chat", "un chien"]}).to_parquet(tmp_path / "t.parquet")
    data = load_image_text_table(tmp_path / "t.parquet")
    np.testing.assert_array_equal(np.asarray(data.load_image(0)), np.asarray(colour_image(0).convert("RGB")))


def test_table_errors_name_the_problem(tmp_path):
    names = _images(tmp_path, 2)
    path = _table(tmp_path, [{"image": names[0], "en": "x"}, {"image": "gone.png", "en": "y"}])
    with pytest.raises(ValueError, match="missing: .*gone.png"):
        load_image_text_table(path)
    (tmp_path / "broken.png").write_text("not an image")
    data = load_image_text_table(_table(tmp_path, [{"image": "broken.png", "en": "x"}], "b.jsonl"))
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        data.load_image(0)
    with pytest.raises(ValueError, match=r"none of the requested languages \['ko', 'ja'\].*found: \['en'\]"):
        load_image_text_table(path, ["ko", "ja"], check_images=False)
    with pytest.raises(ValueError, match=r"no captions in \['ko'\]"):
        load_image_text_table(path, ["en", "ko"], check_images=False)
    with pytest.raises(ValueError, match="does not exist"):
        load_image_text_table(tmp_path / "nope.jsonl")


# ---- the LiT cache and precomputed embeddings ----------------------------------------------------------

def test_cache_stores_float16_shards_and_is_reused(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.standard_normal((23, 8)).astype(np.float32)
    calls = []

    def features_of(rows):
        calls.append(list(rows))
        return torch.from_numpy(truth[rows])

    built = cache.build_cache(tmp_path / "c", "k1", 23, features_of, batch_size=4, shard_rows=8, progress=False)
    assert len(built.shards) == 3 and all(s.dtype == np.float16 and isinstance(s, np.memmap) for s in built.shards)
    np.testing.assert_allclose(built[np.arange(23)], truth, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(built[[22, 0, 9]], truth[[22, 0, 9]], rtol=1e-3, atol=1e-3)
    assert [r for c in calls for r in c] == list(range(23))
    assert cache.open_cache(tmp_path / "c", "k1") is not None  # same key: reused, nothing recomputed
    assert cache.open_cache(tmp_path / "c", "other key") is None  # another model / image list: rebuilt
    (tmp_path / "c" / "index.json").unlink()  # an interrupted build has no index: never reused
    assert cache.open_cache(tmp_path / "c", "k1") is None


def test_cached_features_match_the_tower(tmp_path):
    from hbfast.clip.synthetic import tiny_clip_model
    from hbfast.encoders import packaged_model_path

    names = _images(tmp_path, 5)
    data = load_image_text_table(_table(tmp_path, [{"image": n, "en": f"image {i}"} for i, n in enumerate(names)]))
    model = tiny_clip_model(packaged_model_path(), freeze_image=True)
    cached = cache.cached_image_features(model, data, tmp_path / "cache", model_name="tiny", progress=False)
    with torch.no_grad():
        direct = model.image_features(model.preprocess([data.load_image(i) for i in range(5)])).numpy()
    np.testing.assert_allclose(cached[np.arange(5)], direct, rtol=2e-3, atol=2e-3)
    again = cache.cached_image_features(model, data, tmp_path / "cache", model_name="tiny", progress=False)
    assert again.shards[0].filename == cached.shards[0].filename
    before = cached[[0]].copy()
    import os

    colour_image(99).save(tmp_path / names[0])  # a changed image file is never served from the old cache
    os.utime(tmp_path / names[0], ns=(1, 1))
    rebuilt = cache.cached_image_features(model, data, tmp_path / "cache", model_name="tiny", progress=False)
    with torch.no_grad():
        fresh = model.image_features(model.preprocess([data.load_image(0)])).numpy()
    np.testing.assert_allclose(rebuilt[[0]], fresh, rtol=2e-3, atol=2e-3)
    assert not np.allclose(rebuilt[[0]], before, atol=1e-2)


def test_precomputed_embeddings_are_checked(tmp_path):
    np.save(tmp_path / "img_emb_0.npy", np.ones((3, 4), np.float16))
    np.save(tmp_path / "img_emb_1.npy", np.zeros((2, 4), np.float16))
    array = cache.load_precomputed_embeddings(tmp_path, n_expected=5, dim=4)
    np.testing.assert_array_equal(array[[2, 3]], [[1] * 4, [0] * 4])
    with pytest.raises(ValueError, match="5 embeddings for 6 captioned images"):
        cache.load_precomputed_embeddings(tmp_path, n_expected=6)
    with pytest.raises(ValueError, match="dimension 4, the model's image side expects 8"):
        cache.load_precomputed_embeddings(tmp_path, dim=8)
    np.save(tmp_path / "img_emb_2.npy", np.zeros((2, 3), np.float16))
    with pytest.raises(ValueError, match="different widths"):
        cache.load_precomputed_embeddings(tmp_path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"embedding": [[1.0, 2.0], [3.0, 4.0]]}), tmp_path / "e.parquet")
    np.testing.assert_array_equal(cache.load_precomputed_embeddings(tmp_path / "e.parquet")[[1]], [[3.0, 4.0]])
    names = _images(tmp_path, 3)
    with pytest.raises(ValueError, match="2 image embeddings for 3 captioned images"):
        load_image_text_table(_table(tmp_path, [{"image": n, "en": "x"} for n in names]),
                              features=cache.load_precomputed_embeddings(tmp_path / "e.parquet"))


# ---- tar shards ---------------------------------------------------------------------------------------

def _write_shards(tmp_path, n_shards=5, per_shard=3):
    for s in range(n_shards):
        write_shard(tmp_path / f"shard-{s:03d}.tar", [
            {"key": f"{s:03d}{i:03d}", "png": png_bytes(colour_image(s * 10 + i)),
             "json": {"captions": {"en": f"image {s}-{i}", "de": f"Bild {s}-{i}"} if i % 2 == 0 else {"en": f"image {s}-{i}"}},
             "npy": np.full(4, s * 10 + i, np.float32)} for i in range(per_shard)], gzip=(s == 1))
    return tmp_path


def _keys(stream):
    return [s["__key__"] for s in stream]


def test_shards_split_by_rank_and_worker(tmp_path):
    _write_shards(tmp_path)
    everything = _keys(shards.TarShardStream(tmp_path, rank=0, world_size=1))
    assert len(everything) == 15 and len(set(everything)) == 15
    per_rank = [_keys(shards.TarShardStream(tmp_path, rank=r, world_size=2)) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything) and not set(per_rank[0]) & set(per_rank[1])
    assert {k[:3] for k in per_rank[1]} == {"001", "003"}
    loader = torch.utils.data.DataLoader(shards.TarShardStream(tmp_path, rank=1, world_size=2), batch_size=None,
                                         num_workers=2)
    assert sorted(_keys(loader)) == sorted(per_rank[1])  # workers split rank 1's shards, nothing repeats


def test_shards_resume_at_shard_granularity(tmp_path):
    _write_shards(tmp_path)
    progress = shards.ShardProgress()
    seen = []
    for sample in shards.TarShardStream(tmp_path, rank=0, world_size=1):
        seen.append(sample["__key__"])
        progress.update(sample)
        if len(seen) == 7:  # stopped in the middle of shard 2
            break
    state = json.loads(json.dumps(progress.state_dict()))
    assert state == {"completed": [0, 1]}
    rest = _keys(shards.TarShardStream(tmp_path, rank=0, world_size=1, skip=shards.ShardProgress.from_state(state).completed))
    assert rest[0] == "002000" and len(rest) == 9  # shard 2 is read again from its start


def test_corrupt_shard_is_skipped_and_counted_or_fatal(tmp_path, caplog):
    _write_shards(tmp_path)
    whole = (tmp_path / "shard-002.tar").read_bytes()
    (tmp_path / "shard-002.tar").write_bytes(whole[:700] + b"\x00garbage" * 50)
    (tmp_path / "shard-004.tar").write_bytes(b"this is not a tar file at all" * 30)
    stream = shards.TarShardStream(tmp_path, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="hbfast.clip.shards"):
        keys = _keys(stream)
    assert [k[:3] for k in keys].count("000") == 3 and [k[:3] for k in keys].count("003") == 3
    assert not any(k.startswith("004") for k in keys)
    assert len(stream.corrupt) == 2 and "skipped 2 corrupt shard(s)" in caplog.text
    with pytest.raises(shards.CorruptShardError, match="shard-00[24].tar"):
        _keys(shards.TarShardStream(tmp_path, rank=0, world_size=1, on_corrupt="fail"))


def test_shards_to_table(tmp_path):
    _write_shards(tmp_path)
    data = shards.shards_to_table(tmp_path, ["en", "de"])
    assert len(data) == 15 and data.availability[:, 0].all() and data.availability[:, 1].sum() == 10
    np.testing.assert_array_equal(np.asarray(data.load_image(0)), np.asarray(colour_image(0).convert("RGB")))
    embedded = shards.shards_to_table(tmp_path, ["en"], embeddings=True)
    assert embedded.features.shape == (15, 4) and embedded.features[4, 0] == 11
    with pytest.raises(ValueError, match=r"no captions in \['fr'\]"):
        shards.shards_to_table(tmp_path, ["en", "fr"])
