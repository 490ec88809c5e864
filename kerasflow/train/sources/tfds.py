"""A TFDS dataset (default malaria), prepared once by `make data` into tfds_data_dir.

Read once, resized in a parallel tf.data map; the digest is of the prepared files themselves, so a
re-prepared or edited copy is other data. `make doctor` checks the prepared files without TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.files import atomic_write
from kerasflow.train.cache import Sink, lookup
from kerasflow.train.examples import Examples, aligned_empty, resize_uint8
from kerasflow.train.sources import Source

# Lazy imports: tensorflow, tensorflow_datasets, inside the functions that use them (seconds to load).

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import tensorflow as tf

# The offline hint, one string wherever a missing dataset is reported.
OFFLINE_DEMO = "make run ARGS='-P data_source=synthetic -P model=cnn -P image_size=48'"


def check(cfg: Config) -> None:
    """Fail in milliseconds when the data cannot be had, instead of after tfds' ~200 s of retries."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(
            f"TFDS has no dataset named '{cfg.tfds_name}': fix tfds_name (e.g. malaria)"
        ) from None
    if not builder.is_prepared():
        raise UserError(
            f"TFDS dataset '{cfg.tfds_name}' is not downloaded in {cfg.tfds_data_dir}: run "
            "`make data` where there is internet (or copy that folder here), or train offline with "
            "--set data_source=synthetic or --set data_source=image_dir"
        )


def class_names(cfg: Config) -> list[str]:
    import tensorflow_datasets as tfds

    check(cfg)
    return list(tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir).info.features["label"].names)


def prepared(folder: Path, name: str) -> bool:
    """TFDS keeps a prepared dataset as NAME/[CONFIG/]VERSION/ with dataset_info.json beside the split's
    record files: a folder with the info file alone (a download cut short) is not prepared."""
    base = folder / name
    for info in [*base.glob("*/dataset_info.json"), *base.glob("*/*/dataset_info.json")]:
        records = [p for pattern in ("*.tfrecord*", "*.array_record*") for p in info.parent.glob(pattern)]
        if any(p.is_file() for p in records):
            return True
    return False


def look(cfg: Config, host: Path) -> str:
    """The prepared files are in the folder the container will read (doctor: no TensorFlow needed)."""
    if not prepared(host, cfg.tfds_name):
        raise UserError(f"TFDS {cfg.tfds_name} is not in {host} (tfds_data_dir={cfg.tfds_data_dir}): "
                        "download it first with `make data` (internet, ~340 MB; without .venv it runs in "
                        "the image), "
                        f"or try the offline demo: {OFFLINE_DEMO}")
    return f"tfds data in {host}"


def fetch(cfg: Config) -> None:
    """Download and prepare the dataset into tfds_data_dir, once (tfds prints its progress bars)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir)
    if builder.is_prepared():
        log.info(f"{cfg.tfds_name} is already prepared in {cfg.tfds_data_dir}")
        return
    try:
        builder.download_and_prepare()
    except Exception as exc:
        if "Connection" in type(exc).__name__ or "Connection" in str(exc):
            raise UserError(
                f"cannot download {cfg.tfds_name} (no internet?): run `make data` on a machine with "
                f"internet and copy {cfg.tfds_data_dir} here"
            ) from None
        raise
    log.info(f"{cfg.tfds_name} prepared in {cfg.tfds_data_dir}")


def _tfds_files_digest(folder: Path, spec: str) -> str:
    """Digest of the prepared dataset's files (name and content), not only its name and version: a
    re-prepared or edited copy gets another digest, so a reproduction sees that its data changed.
    ~1 s per GB; the result is cached beside the data by size and mtime of every file."""
    memo = folder / ".kerasflow-digest.json"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != memo) if folder.is_dir() else []
    listing = "".join(f"{p.relative_to(folder)}|{p.stat().st_size}|{p.stat().st_mtime_ns}\n" for p in files)
    key = hashlib.sha256(f"{spec}\n{listing}".encode()).hexdigest()
    try:
        saved = json.loads(memo.read_text())
        if saved.get("key") == key:
            return saved["digest"]
    except (OSError, ValueError, AttributeError):
        pass
    h = hashlib.sha256(spec.encode())
    for path in files:
        h.update(f"{path.relative_to(folder)}\n".encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    try:
        atomic_write(memo, json.dumps({"key": key, "digest": digest}))
    except OSError:
        pass  # a read-only dataset folder: hash again next time
    return digest


def load(cfg: Config) -> Examples:
    """Read the prepared TFDS split once, resizing in a parallel tf.data map, into uint8 arrays."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    check(cfg)
    builder = tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir)
    split = "train"
    label_feature = builder.info.features["label"]
    classes = list(label_feature.names)
    spec = f"tfds:{cfg.tfds_name}:{builder.info.version}:{split}"
    digest = _tfds_files_digest(Path(str(builder.data_path)), spec)
    source = {"source": "tfds", "name": cfg.tfds_name, "version": str(builder.info.version),
              "split": split, "data_dir": str(Path(cfg.tfds_data_dir).resolve())}
    size = cfg.image_size
    key = f"tfds-{digest}-{size}"
    cached = lookup(cfg, key)
    if cached is not None:
        labels = np.array(cached[1]["labels"], np.int32)
        return Examples(cached[0], labels, classes, digest, source, [str(i) for i in range(len(labels))])

    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)

    def resize(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return resize_uint8(image, size), tf.cast(label, tf.int32)

    ds = ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE).batch(256).prefetch(2)
    splits = builder.info.splits  # empty under tfds.testing.mock_data: then collect chunks instead
    n = int(splits[split].num_examples) if split in splits else 0
    chunks_x, chunks_y = [], []
    sink = Sink(n, size, cfg, key) if n else None
    at = 0
    try:
        for x, y in ds.as_numpy_iterator():
            if sink is not None:
                sink.put(slice(at, at + len(x)), x)
            else:
                chunks_x.append(x)
            chunks_y.append(y)
            at += len(x)
        labels = np.concatenate(chunks_y).astype(np.int32)
        images = sink.finish({"labels": labels.tolist()}) if sink is not None else None
    except BaseException:
        if sink is not None:
            sink.discard()
        raise
    if images is None:
        images = aligned_empty((at, size, size, 3))
        np.concatenate(chunks_x, out=images)
    return Examples(images, labels, classes, digest, source, [str(i) for i in range(len(labels))])


SOURCE = Source(keys=("tfds_name", "tfds_data_dir"), load=load, class_names=class_names, check=check,
                folder_key="tfds_data_dir", look=look, fetch=fetch)
