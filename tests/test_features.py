"""The feature cache: keyed by exactly what decides the features, bounded, least recently used out."""

import os
import time

import numpy as np

from tlcore.features import FeatureCache, feature_key
from tlcore.model import ModelConfig


def make_files(tmp_path, n=3):
    paths = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        path.write_bytes(b"x" * (i + 1))
        paths.append(path)
    return paths


def test_key_changes_with_backbone_settings_and_files_but_not_with_head(tmp_path):
    paths = make_files(tmp_path)
    base = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, cut_layer="out_relu")
    key = feature_key(base.feature_key(), paths)
    head_only = ModelConfig(**{**base.to_dict(), "dropout": 0.5, "dense_units": (7,), "pooling": "flatten"})
    assert feature_key(head_only.feature_key(), paths) == key
    for change in ({"input_size": 128}, {"cut_layer": "block_16_add"}, {"weights": "none"}, {"alpha": 0.5}):
        other = ModelConfig(**{**base.to_dict(), **change})
        assert feature_key(other.feature_key(), paths) != key, change
    assert feature_key(base.feature_key(), paths[:2]) != key
    paths[0].write_bytes(b"edited image")
    assert feature_key(base.feature_key(), paths) != key


def test_entries_are_float16_memory_maps_published_only_on_commit(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    writer = cache.create("abc", (4, 2, 2, 3))
    assert cache.get("abc") is None
    values = np.random.default_rng(0).normal(size=(4, 2, 2, 3)).astype("float32")
    writer.write(values[:3])
    writer.write(values[3:])
    stored = writer.commit()
    assert isinstance(stored, np.memmap) and stored.dtype == np.float16
    np.testing.assert_allclose(stored, values, rtol=1e-3, atol=1e-3)
    aborted = cache.create("def", (2, 1))
    aborted.abort()
    assert cache.get("def") is None and [p.name for p in cache.folder.iterdir()] == ["abc.npy"]


def test_least_recently_used_entries_are_evicted_past_the_size_bound(tmp_path):
    cache = FeatureCache(tmp_path / "cache", max_bytes=10**9)
    for name in ("old", "used", "new"):
        writer = cache.create(name, (1000,))
        writer.write(np.ones(1000))
        writer.commit()
        past = time.time() - {"old": 300, "used": 200, "new": 100}[name]
        os.utime(cache.folder / f"{name}.npy", (past, past))
    assert cache.get("old") is not None  # reading marks it as recently used
    one_entry = (cache.folder / "new.npy").stat().st_size
    cache.max_bytes = 2 * one_entry
    cache.evict()
    assert sorted(p.stem for p in cache.entries()) == ["new", "old"]
