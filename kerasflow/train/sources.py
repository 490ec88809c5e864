"""The three data sources (an image folder tree, TFDS, synthetic cells), each decoded and resized once into
`Examples` with a digest of what was read."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.files import atomic_write
from kerasflow.train.cache import Sink, lookup
from kerasflow.train.examples import Examples, aligned_empty

log = logging.getLogger(__name__)

# Lazy imports: tensorflow, tensorflow_datasets, inside the functions that use them (seconds to load).

if TYPE_CHECKING:
    import tensorflow as tf


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}  # what tf.io.decode_image reads

SYNTHETIC_CLASSES = ["parasitized", "uninfected"]  # same order and meaning as TFDS malaria


def list_image_tree(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise UserError(
            f"image_dir {root} does not exist: point image_dir at a folder with one sub-folder per "
            "class (e.g. cell_images/ with Parasitized/ and Uninfected/)"
        )
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(
            f"image_dir {root} has no class folders: put each class's images in its own sub-folder"
        )
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(
            p for p in (root / name).rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not found:
            raise UserError(
                f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                "add images or remove the folder"
            )
        files.extend((p, label) for p in found)
    if len(classes) < 2:
        raise UserError(
            f"image_dir {root} has only one class folder ({classes[0]}): a classifier needs at least two"
        )
    return classes, files


def resize_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
    """The one resize every source uses: bilinear (antialiasing halves decode throughput), uint8."""
    import tensorflow as tf

    image = tf.image.resize(image, (size, size))
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _listing_key(files: list[tuple[Path, int]], names: list[str], size: int) -> str:
    """Cache key of an image tree: names, labels, sizes and mtimes (the content hash comes later)."""
    listing = hashlib.sha256()
    for (path, label), name in zip(files, names, strict=True):
        stat = path.stat()
        listing.update(f"{name}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"dir-{listing.hexdigest()[:20]}-{size}"


def content_digest(root: Path, classes: list[str], decoded: list[tuple[str, int, str]]) -> str:
    """Lineage digest of the decoded files' (name, label, sha256) rows; a class left without a readable
    image is an error."""
    for label, name in enumerate(classes):
        if not any(row[1] == label for row in decoded):
            raise UserError(f"no readable image in class folder {root / name}: replace the corrupt files")
    content = hashlib.sha256()
    for name, label, digest in decoded:
        content.update(f"{name}|{label}|{digest}\n".encode())
    return content.hexdigest()[:16]


def check_available(cfg: Config) -> None:
    """Fail in milliseconds when the data cannot be had, instead of after tfds' ~200 s of retries."""
    if cfg.data_source == "tfds":
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
    elif cfg.data_source == "image_dir":
        list_image_tree(Path(cfg.image_dir))


def load_image_dir(cfg: Config) -> Examples:
    """Decode an image tree in TF's C++ threads; unreadable files are skipped and counted."""
    import tensorflow as tf

    root = Path(cfg.image_dir)
    classes, files = list_image_tree(root)
    size = cfg.image_size
    labels = np.array([label for _, label in files], np.int32)
    names = [str(p.relative_to(root)) for p, _ in files]
    key = _listing_key(files, names, size)
    cached = lookup(cfg, key)
    if cached is not None:
        images, meta = cached
        keep = np.array(meta["keep"], bool)
        return Examples(images, labels[keep], classes, meta["digest"], meta["source"],
                        [n for n, k in zip(names, keep, strict=True) if k])

    def decode(path: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, resize_uint8(image, size)

    paths = np.array([str(p) for p, _ in files])
    sink = Sink(len(files), size, cfg, key)
    ok = np.zeros(len(files), bool)

    def decode_pass(indices: np.ndarray, tolerant: bool) -> None:
        ds = tf.data.Dataset.from_tensor_slices((paths[indices], indices)).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)  # scattered by index
        if tolerant:
            ds = ds.ignore_errors()  # drops corrupt files; `ok` tells which. Costs ~15%, so not first
        for index, images in ds.batch(256).prefetch(2).as_numpy_iterator():
            sink.put(index, images)
            ok[index] = True

    try:
        with ThreadPoolExecutor(1) as pool:  # hash the files' bytes for lineage while TF decodes them
            hashing = pool.submit(lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p, _ in files])
            try:
                decode_pass(np.arange(len(files)), tolerant=False)
            except tf.errors.OpError:  # some file is unreadable: decode what is left, skipping failures
                decode_pass(np.flatnonzero(~ok), tolerant=True)
            hashes = hashing.result()
        bad = [names[i] for i in np.flatnonzero(~ok)]
        if bad:
            log.warning(f"skipped {len(bad)} unreadable image(s) of {len(files)}, e.g. {root / bad[0]}")
        decoded = [(names[i], int(labels[i]), hashes[i]) for i in np.flatnonzero(ok)]
        digest = content_digest(root, classes, decoded)
        source = {"source": "image_dir", "path": str(root.resolve()), "classes": classes,
                  "files": int(ok.sum()), "skipped": len(bad)}
        images = sink.finish({"keep": ok.tolist(), "digest": digest, "source": source},
                             None if ok.all() else ok)
    except BaseException:
        sink.discard()  # a published cache entry is not touched: only the temp files go
        raise
    kept_names = [n for n, k in zip(names, ok, strict=True) if k]
    return Examples(images, labels[ok], classes, digest, source, kept_names)


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


def load_tfds(cfg: Config) -> Examples:
    """Read the prepared TFDS split once, resizing in a parallel tf.data map, into uint8 arrays."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    check_available(cfg)
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


def draw_synthetic(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-like images: a pale stained disc; 'parasitized' ones carry 1-4 small dark ring-stage dots.

    Image i depends only on (seed, i), so any subset or split is reproducible on its own.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = aligned_empty((n, size, size, 3))
    labels = np.empty(n, np.int32)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        label = int(rng.integers(0, 2))
        cx, cy = rng.uniform(0.4, 0.6, 2)
        radius = rng.uniform(0.30, 0.42)
        background = rng.uniform(225, 250)
        cell = np.array([rng.uniform(200, 235), rng.uniform(140, 175), rng.uniform(160, 200)], np.float32)
        inside = ((xx - cx) ** 2 + (yy - cy) ** 2) < radius**2
        img = np.full((size, size, 3), background, np.float32)
        img[inside] = cell
        if label == 0:
            for _ in range(int(rng.integers(1, 5))):
                angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, radius * 0.75)
                px, py = cx + dist * np.cos(angle), cy + dist * np.sin(angle)
                r = rng.uniform(0.05, 0.08)
                dot = ((xx - px) ** 2 + (yy - py) ** 2) < r**2
                img[dot] = np.array([90, 40, 110], np.float32) + rng.normal(0, 8, 3)
        img += rng.normal(0, 6, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        labels[i] = label
    return images, labels


def load_synthetic(cfg: Config) -> Examples:
    images, labels = draw_synthetic(cfg.synthetic_examples, cfg.image_size, cfg.seed)
    params = {"source": "synthetic", "examples": cfg.synthetic_examples, "image_size": cfg.image_size,
              "seed": cfg.seed, "generator": "draw_synthetic-v1"}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return Examples(images, labels, list(SYNTHETIC_CLASSES), digest, params,
                    [str(i) for i in range(len(labels))])
