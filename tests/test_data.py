"""The three data sources, the cache, the split and the epoch-keyed shuffle."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_png_tree

from kerasflow.errors import UserError
from kerasflow.train import data, pipeline, sources
from kerasflow.train.examples import Examples


def test_synthetic_is_deterministic_by_seed_and_index():
    a, la = sources.draw_synthetic(20, 32, seed=1)
    b, lb = sources.draw_synthetic(20, 32, seed=1)
    c, _ = sources.draw_synthetic(20, 32, seed=2)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    tail, _ = sources.draw_synthetic(20, 32, seed=1)
    assert np.array_equal(tail[5], a[5])
    assert set(np.unique(la)) == {0, 1}


def test_split_is_stratified_disjoint_and_seeded(tiny_cfg):
    examples = sources.load_synthetic(tiny_cfg.replace(synthetic_examples=400))
    s1 = data.split(examples, tiny_cfg)
    s2 = data.split(examples, tiny_cfg)
    assert s1.digest() == s2.digest()
    parts = [set(s1.train), set(s1.val), set(s1.test)]
    assert sum(map(len, parts)) == 400 == len(parts[0] | parts[1] | parts[2])
    overall = examples.labels.mean()
    for idx in (s1.val, s1.test):
        assert abs(examples.labels[idx].mean() - overall) < 0.03
    assert data.split(examples, tiny_cfg.replace(seed=7)).digest() != s1.digest()


def test_image_dir_decodes_resizes_and_skips_corrupt_files(tiny_cfg, tmp_path, caplog):
    root = write_png_tree(tmp_path / "cells", {"Parasitized": 12, "Uninfected": 10}, size=45)
    (root / "Parasitized" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cfg = tiny_cfg.replace(data_source="image_dir", image_dir=str(root), image_size=32)
    examples = sources.load_image_dir(cfg)
    assert examples.class_names == ["Parasitized", "Uninfected"]
    assert examples.images.shape == (22, 32, 32, 3) and examples.images.dtype == np.uint8
    assert np.bincount(examples.labels).tolist() == [12, 10]
    assert "skipped 1 unreadable image(s) of 23" in caplog.text  # a warning of the library's logger
    assert examples.source["skipped"] == 1
    assert sources.load_image_dir(cfg).digest == examples.digest
    (root / "Uninfected" / "C1P0ThinF_IMG_0000_cell_0.png").unlink()
    assert sources.load_image_dir(cfg).digest != examples.digest


def test_over_the_ram_budget_images_go_to_a_reusable_cache_file(tiny_cfg, tmp_path):
    root = write_png_tree(tmp_path / "cells", {"a": 8, "b": 8})
    (root / "a" / "zzz.png").write_bytes(b"garbage")
    in_ram = sources.load_image_dir(tiny_cfg.replace(data_source="image_dir", image_dir=str(root)))
    cfg = tiny_cfg.replace(data_source="image_dir", image_dir=str(root), cache_ram_mb=0)
    on_disk = sources.load_image_dir(cfg)
    assert isinstance(on_disk.images, np.memmap)
    assert np.array_equal(np.asarray(on_disk.images), in_ram.images)
    assert list((tmp_path / "cache").glob("*.u8"))
    again = sources.load_image_dir(cfg)  # served from the cache file, same digest and labels
    assert again.digest == in_ram.digest and np.array_equal(again.labels, in_ram.labels)
    # batches read from the file (pread) are the RAM path's, in the same shuffled order
    import tensorflow as tf

    def batches(examples: Examples) -> list[tuple[np.ndarray, np.ndarray]]:
        epoch = tf.Variable(3, dtype=tf.int64)
        ds = pipeline.to_tf_dataset(examples, np.arange(len(examples)), 5, shuffle_seed=7, epoch=epoch)
        return list(ds.as_numpy_iterator())

    from_file, from_ram = batches(again), batches(in_ram)
    # a cache file that fits a (now larger) budget is read into RAM, for the faster path
    bigger = sources.load_image_dir(cfg.replace(cache_ram_mb=64))
    assert not isinstance(bigger.images, np.memmap) and np.array_equal(bigger.images, in_ram.images)
    assert len(from_file) == len(from_ram) == 4  # 16 images (the garbage file skipped), 5 a batch
    for (x1, y1), (x2, y2) in zip(from_file, from_ram, strict=True):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "has no class folders"),
        ({"only": 3}, "has only one class folder (only)"),
        ({"a": 3, "empty": 0}, "holds no images"),
    ],
)
def test_bad_image_trees_are_refused(tiny_cfg, tmp_path, layout, message):
    root = tmp_path / "tree"
    root.mkdir()
    for name, n in layout.items():
        (root / name).mkdir()
        if n:
            write_png_tree(root, {name: n})
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.check_available(tiny_cfg.replace(data_source="image_dir", image_dir=str(root)))


def test_missing_image_dir(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="does not exist: point image_dir at a folder"):
        data.check_available(tiny_cfg.replace(data_source="image_dir", image_dir=str(tmp_path / "no")))


def test_tfds_not_downloaded_fails_fast_naming_make_data(tiny_cfg, tmp_path):
    import time

    cfg = tiny_cfg.replace(data_source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"not downloaded in .*run `make data`.*data_source=synthetic"):
        data.check_available(cfg)
    assert time.perf_counter() - start < 10  # tfds itself would retry for ~200 s


def test_tfds_loading_with_mock_data(tiny_cfg, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # mock_data fakes the records but not `is_prepared`, which our fast offline check reads
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    cfg = tiny_cfg.replace(data_source="tfds", tfds_data_dir=str(tmp_path / "tfds"), image_size=32)
    with tfds.testing.mock_data(num_examples=40):
        examples = data.load_examples(cfg)
        names = data.class_names(cfg)
    assert names == ["parasitized", "uninfected"] == examples.class_names
    assert examples.images.shape == (40, 32, 32, 3) and examples.images.dtype == np.uint8
    assert examples.source["name"] == "malaria" and len(examples.digest) == 16
    splits = data.split(examples, cfg)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40


def test_shuffle_is_a_function_of_seed_and_epoch(tiny_cfg):
    import tensorflow as tf

    examples = sources.load_synthetic(tiny_cfg.replace(synthetic_examples=100))
    idx = np.arange(10, 90)
    epoch = tf.Variable(0, dtype=tf.int64)
    ds = pipeline.to_tf_dataset(examples, idx, 16, shuffle_seed=3, epoch=epoch)

    def labels_of_epoch(e: int) -> np.ndarray:
        epoch.assign(e)
        return np.concatenate([y for _, y in ds.as_numpy_iterator()])

    def images_of_epoch(e: int) -> np.ndarray:
        epoch.assign(e)
        return np.concatenate([x for x, _ in ds.as_numpy_iterator()])

    first, second = images_of_epoch(0), images_of_epoch(1)
    assert not np.array_equal(first, second)
    assert np.array_equal(images_of_epoch(0), first)  # epoch 0 again: same order, any history
    assert sorted(labels_of_epoch(5).tolist()) == sorted(examples.labels[idx].tolist())
    fresh = pipeline.to_tf_dataset(examples, idx, 16, shuffle_seed=3, epoch=tf.Variable(1, dtype=tf.int64))
    assert np.array_equal(np.concatenate([x for x, _ in fresh.as_numpy_iterator()]), second)
