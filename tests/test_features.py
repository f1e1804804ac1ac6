"""The feature cache: rows named by image digests, shards published whole, bounded, least recently used out."""

import os
import time

import numpy as np
import pytest

from tlcore.features import FeatureCache, Rows


def write_shard(store, ids, values, variant="avg", **extra):
    writer = store.writer(ids, {variant: values.shape[1:], **{k: v.shape[1:] for k, v in extra.items()}})
    writer.write({variant: values[: len(values) // 2], **{k: v[: len(v) // 2] for k, v in extra.items()}})
    writer.write({variant: values[len(values) // 2 :], **{k: v[len(v) // 2 :] for k, v in extra.items()}})
    return writer.commit()


def test_rows_are_found_by_id_in_any_order_and_with_repeats(tmp_path):
    store = FeatureCache(tmp_path / "cache").store("key")
    values = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    write_shard(store, ["a", "b", "c", "d"], values)
    located = store.locate(["d", "a", "a", "x"], "avg")
    assert located.missing == ["x"]
    with pytest.raises(KeyError):
        located.rows()
    rows = store.locate(["d", "a", "a"], "avg").rows()
    np.testing.assert_array_equal(rows, values[[3, 0, 0]])
    assert rows.dtype == np.float32


def test_a_later_shard_fills_in_what_the_first_lacks(tmp_path):
    store = FeatureCache(tmp_path / "cache").store("key")
    first, second = np.ones((2, 2), "float32"), np.full((2, 2), 2.0, "float32")
    write_shard(store, ["a", "b"], first)
    write_shard(store, ["c", "d"], second)
    np.testing.assert_array_equal(store.locate(["c", "a", "d", "b"], "avg").rows()[:, 0], [2, 1, 2, 1])
    assert store.locate(["a"], "max").missing == ["a"], "a variant a shard does not hold is missing"


def test_maps_are_float16_and_nothing_is_visible_before_commit(tmp_path):
    store = FeatureCache(tmp_path / "cache").store("key")
    maps = np.random.default_rng(0).normal(size=(4, 2, 2, 3)).astype("float32")
    writer = store.writer(list("abcd"), {"map": (2, 2, 3)})
    writer.write({"map": maps[:3]})
    assert store.locate(list("abcd"), "map").missing == list("abcd")
    writer.write({"map": maps[3:]})
    shard = writer.commit()
    assert shard.array("map").dtype == np.float16
    np.testing.assert_allclose(store.locate(list("abcd"), "map").rows(), maps, rtol=1e-3, atol=1e-3)
    aborted = store.writer(["e"], {"avg": (3,)})
    aborted.abort()
    assert not [p for p in store.folder.iterdir() if p.name.startswith(".")]


def test_a_shard_with_fewer_rows_than_promised_is_refused(tmp_path):
    store = FeatureCache(tmp_path / "cache").store("key")
    writer = store.writer(["a", "b"], {"avg": (3,)})
    writer.write({"avg": np.ones((1, 3))})
    with pytest.raises(ValueError):
        writer.commit()
    assert store.shards() == []


def test_least_recently_used_shards_are_evicted_but_never_those_in_use(tmp_path):
    cache = FeatureCache(tmp_path / "cache", max_bytes=10**9)
    stores = [cache.store(f"key{i}") for i in range(5)]
    shards = []
    for index, store in enumerate(stores):
        shards.append(write_shard(store, [f"a{index}", f"b{index}"], np.ones((2, 1000), "float32")))
        # Distinct times of use, oldest first, so the order does not hang on the clock's resolution.
        os.utime(shards[-1].rows_path, (1000 + index, 1000 + index))
    stores[1].locate(["a1"], "avg").touch()  # reading marks it as recently used
    one = shards[0].nbytes()
    cache.max_bytes = 3 * one
    cache.evict(keep={shards[0].name})
    assert sorted(s.name for s in cache.shards()) == sorted([shards[0].name, shards[1].name, shards[4].name])


def test_rows_read_from_disk_equal_the_array_and_survive_eviction(tmp_path):
    store = FeatureCache(tmp_path / "cache").store("key")
    values = np.random.default_rng(0).normal(size=(50, 3, 2)).astype("float16")
    write_shard(store, [f"i{n}" for n in range(25)], values[:25], "map")
    write_shard(store, [f"i{n}" for n in range(25, 50)], values[25:], "map")
    order = [f"i{n}" for n in np.random.default_rng(1).permutation(50)]
    rows = store.locate(order, "map").rows(max_bytes=10)
    assert isinstance(rows, Rows) and len(rows) == 50 and rows.shape == values.shape
    expected = values[[int(name[1:]) for name in order]]
    picked = np.array([0, 1, 2, 7, 30, 31, 49])
    np.testing.assert_array_equal(rows[picked], expected[picked])
    np.testing.assert_array_equal(rows[5:9], expected[5:9])
    for shard in store.shards():
        shard.path("map").unlink()  # evicted meanwhile: the open files still read
    np.testing.assert_array_equal(rows[[3]], expected[[3]])


def test_stale_temporary_files_are_removed(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    store = cache.store("key")
    dead = store.writer(["a"], {"avg": (2,)})  # a training killed mid-extraction leaves this behind
    live = store.writer(["b"], {"avg": (2,)})
    tmp = next(store.folder.glob(f".{dead.name}*.tmp"))
    old = time.time() - 7 * 3600
    os.utime(tmp, (old, old))
    assert cache.remove_stale() == 1
    assert not tmp.exists() and list(store.folder.glob(f".{live.name}*.tmp"))
    live.abort()
