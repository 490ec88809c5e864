"""The data sources (each its own module, behind one interface), the cache, the split and the epoch-keyed
shuffle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, write_png_tree
from helpers.stand_ins import calls

from kerasflow.errors import UserError
from kerasflow.train import data, pipeline, sources
from kerasflow.train.examples import Examples
from kerasflow.train.sources import image_dir, synthetic


def test_synthetic_is_deterministic_by_seed_and_index():
    a, la = synthetic.draw(20, 32, seed=1)
    b, lb = synthetic.draw(20, 32, seed=1)
    c, _ = synthetic.draw(20, 32, seed=2)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    tail, _ = synthetic.draw(20, 32, seed=1)
    assert np.array_equal(tail[5], a[5])
    assert set(np.unique(la)) == {0, 1}


def test_split_is_stratified_disjoint_and_seeded(tiny_cfg):
    examples = synthetic.load(tiny_cfg.replace(synthetic_examples=400))
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
    examples = image_dir.load(cfg)
    assert examples.class_names == ["Parasitized", "Uninfected"]
    assert examples.images.shape == (22, 32, 32, 3) and examples.images.dtype == np.uint8
    assert np.bincount(examples.labels).tolist() == [12, 10]
    assert "skipped 1 unreadable image(s) of 23" in caplog.text  # a warning of the library's logger
    assert examples.source["skipped"] == 1
    assert image_dir.load(cfg).digest == examples.digest
    (root / "Uninfected" / "C1P0ThinF_IMG_0000_cell_0.png").unlink()
    assert image_dir.load(cfg).digest != examples.digest


def test_over_the_ram_budget_images_go_to_a_reusable_cache_file(tiny_cfg, tmp_path):
    root = write_png_tree(tmp_path / "cells", {"a": 8, "b": 8})
    (root / "a" / "zzz.png").write_bytes(b"garbage")
    in_ram = image_dir.load(tiny_cfg.replace(data_source="image_dir", image_dir=str(root)))
    cfg = tiny_cfg.replace(data_source="image_dir", image_dir=str(root), cache_ram_mb=0)
    on_disk = image_dir.load(cfg)
    assert isinstance(on_disk.images, np.memmap)
    assert np.array_equal(np.asarray(on_disk.images), in_ram.images)
    assert list((tmp_path / "cache").glob("*.u8"))
    again = image_dir.load(cfg)  # served from the cache file, same digest and labels
    assert again.digest == in_ram.digest and np.array_equal(again.labels, in_ram.labels)
    # batches read from the file (pread) are the RAM path's, in the same shuffled order
    import tensorflow as tf

    def batches(examples: Examples) -> list[tuple[np.ndarray, np.ndarray]]:
        epoch = tf.Variable(3, dtype=tf.int64)
        ds = pipeline.to_tf_dataset(examples, np.arange(len(examples)), 5, shuffle_seed=7, epoch=epoch)
        return list(ds.as_numpy_iterator())

    from_file, from_ram = batches(again), batches(in_ram)
    # a cache file that fits a (now larger) budget is read into RAM, for the faster path
    bigger = image_dir.load(cfg.replace(cache_ram_mb=64))
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
        sources.check(tiny_cfg.replace(data_source="image_dir", image_dir=str(root)))


def test_missing_image_dir(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="does not exist: point image_dir at a folder"):
        sources.check(tiny_cfg.replace(data_source="image_dir", image_dir=str(tmp_path / "no")))


def test_tfds_not_downloaded_fails_fast_naming_make_data(tiny_cfg, tmp_path):
    import time

    cfg = tiny_cfg.replace(data_source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"not downloaded in .*run `make data`.*data_source=synthetic"):
        sources.check(cfg)
    assert time.perf_counter() - start < 10  # tfds itself would retry for ~200 s


def test_tfds_loading_with_mock_data(tiny_cfg, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # mock_data fakes the records but not `is_prepared`, which our fast offline check reads
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    cfg = tiny_cfg.replace(data_source="tfds", tfds_data_dir=str(tmp_path / "tfds"), image_size=32)
    with tfds.testing.mock_data(num_examples=40):
        examples = data.load_examples(cfg)
        names = sources.class_names(cfg)
    assert names == ["parasitized", "uninfected"] == examples.class_names
    assert examples.images.shape == (40, 32, 32, 3) and examples.images.dtype == np.uint8
    assert examples.source["name"] == "malaria" and len(examples.digest) == 16
    splits = data.split(examples, cfg)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40


def test_shuffle_is_a_function_of_seed_and_epoch(tiny_cfg):
    import tensorflow as tf

    examples = synthetic.load(tiny_cfg.replace(synthetic_examples=100))
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


# --- the sources' one interface -------------------------------------------------------------------

STRIPES = '''"""Stripes: horizontal (class 0) or vertical (class 1), drawn from (seed, index)."""

from __future__ import annotations

import numpy as np

from kerasflow.config import Config
from kerasflow.train.examples import Examples, aligned_empty
from kerasflow.train.sources import Source

CLASSES = ["horizontal", "vertical"]


def load(cfg: Config) -> Examples:
    n, size = cfg.synthetic_examples, cfg.image_size
    images, labels = aligned_empty((n, size, size, 3)), np.arange(n, dtype=np.int32) % 2
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, i])
        stripes = (np.arange(size) // int(rng.integers(2, 5)) % 2 * 200 + 30).astype(np.uint8)
        images[i] = (stripes[:, None] if labels[i] == 0 else stripes[None, :])[..., None]
    return Examples(images, labels, list(CLASSES), f"stripes-{cfg.seed}-{n}-{size}", {"source": "stripes"},
                    [str(i) for i in range(n)])


SOURCE = Source(keys=("synthetic_examples", "seed"), load=load, class_names=lambda cfg: list(CLASSES))
'''

# A source that reads a key it does not declare: another tfds_name would reuse its data.
LEAKY = STRIPES.replace('f"stripes-{cfg.seed}', 'f"{cfg.tfds_name}-{cfg.seed}')


def _checkout_with_sources(tmp_path, **modules: str):
    """This working tree (tracked and new files, as a clone plus edits would be) with extra source files."""
    import shutil
    import subprocess

    from helpers import ROOT

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    copy = tmp_path / "checkout"
    for name in filter(None, listed):
        if (ROOT / name).is_file() and not name.startswith(("tests/", "docs/", "bench/")):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    for name, text in modules.items():
        (copy / "kerasflow" / "train" / "sources" / f"{name}.py").write_text(text)
    return copy


@pytest.mark.slow  # two trainings in a copy of the checkout (~25 s)
def test_a_new_source_is_one_file_and_a_key_it_does_not_declare_is_stopped(tmp_path):
    """Adding a source took ~9 files and a key missed in data.py's hand-kept key list made cv folds reuse
    the previous data; now one module is a source (a choice of the config, trained on, split into folds,
    passed by doctor) and reading an undeclared key fails its first run."""
    import subprocess

    from helpers import PY, TINY, set_args

    copy = _checkout_with_sources(tmp_path, stripes=STRIPES, leaky=LEAKY)
    tiny = set_args([*TINY, f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'c'}"])
    trained = subprocess.run([PY, "train.py", *tiny, "--set", "data_source=stripes", "--set", "run_name=s"],
                             cwd=copy, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "s" / "metrics.json").read_text())
    assert metrics["class_names"] == ["horizontal", "vertical"] and metrics["examples"] == 20
    folds = subprocess.run([PY, "-m", "kerasflow", "splits", *tiny, "--set", "data_source=stripes",
                            "--out", str(tmp_path / "splits.json")], cwd=copy, capture_output=True,
                           text=True, timeout=300)
    assert folds.returncode == 0, folds.stderr[-3000:]
    assert '"class_names":["horizontal","vertical"]' in (tmp_path / "splits.json").read_text()
    probe = ("from pathlib import Path; from kerasflow import config, preflight\n"
             "cfg = config.load(None, ['data_source=stripes'])\n"
             "print(config.SOURCE_NAMES, preflight.data(cfg, 'main', Path('.'), '').status)")
    asked = subprocess.run([PY, "-c", probe], cwd=copy, capture_output=True, text=True, timeout=120)
    assert asked.stdout.split() == ["('image_dir',", "'leaky',", "'stripes',", "'synthetic',", "'tfds')",
                                    "pass"], asked.stderr[-2000:]
    leaky = subprocess.run([PY, "train.py", *tiny, "--set", "data_source=leaky", "--set", "run_name=l"],
                           cwd=copy, capture_output=True, text=True, timeout=600)
    assert leaky.returncode != 0
    assert "data source leaky read config key 'tfds_name' without declaring it" in leaky.stderr
    assert not (tmp_path / "out" / "l").exists()  # nothing half-made


def test_the_loaded_data_is_reused_by_exactly_the_keys_its_source_reads(tiny_cfg):
    """cv folds and search trials reuse loaded data: a key of the source decides, another does not."""
    for name in ("tfds", "image_dir", "synthetic"):
        source = sources.get(name)
        cfg = tiny_cfg.replace(data_source=name)
        for key in source.keys:
            value = getattr(cfg, key)
            changed = cfg.replace(**{key: value + 1 if isinstance(value, int) else f"{value}x"})
            assert sources.data_key(changed) != sources.data_key(cfg), (name, key)
        assert sources.data_key(cfg.replace(epochs=cfg.epochs + 1)) == sources.data_key(cfg)
    with data.reusing_loaded_examples():
        first = data.load_examples(tiny_cfg)
        assert data.load_examples(tiny_cfg.replace(epochs=3)) is first
        assert len(data.load_examples(tiny_cfg.replace(synthetic_examples=60))) == 60


# --- make data ------------------------------------------------------------------------------------


def test_make_data_without_a_full_env_downloads_inside_the_image(sandbox):
    """A GPU server has only the light env: `make data` stopped at "no Python 3.11, 3.12 or 3.13
    found". Now it runs the download in the project image (here: a stand-in docker records it)."""
    sb = sandbox
    shutil.copy2(ROOT / "Makefile", sb["repo"] / "Makefile")
    env = {**os.environ, **sb["env"], "PATH": f"{sb['bin']}:/usr/bin:/bin", "GPU": "off",
           "KERASFLOW_PYTHON": sys.executable}  # the light env's place (run_script.bash runs kerasflow)
    done = subprocess.run(["make", "--no-print-directory", "data", "VENV=/nonexistent"], cwd=sb["repo"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "downloading inside the project image" in done.stdout
    run = calls(sb, "run")[-1]
    assert run[-3:] == ["make", "data", "ARGS="], run
    assert "--volume" in run and f"{sb['repo']}:/workspace" in run  # data/tfds lands in the checkout


def test_make_data_downloads_only_what_the_configured_source_needs(tmp_path):
    """`make data` downloaded TFDS malaria whatever data_source said (a user of an image folder waited for
    a download they did not need, and without internet got its error)."""
    import subprocess

    from helpers import PY, ROOT

    for source in ("synthetic", "image_dir"):
        done = subprocess.run([PY, "-m", "kerasflow", "data", "--set", f"data_source={source}",
                               "--set", f"tfds_data_dir={tmp_path / 'tfds'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == f"data_source={source} needs no download"
    assert not (tmp_path / "tfds").exists()
