"""Data sources behind one interface, decoded and resized once, then served by a fast tf.data pipeline.

Every source yields the same `Examples`: uint8 images of one size, int labels, class names, and a digest
that identifies the data for lineage. Decoding happens once per run (or once ever, through the cache
file for data over the RAM budget); epochs then only gather batches from memory, which is what keeps a
GPU fed (see BENCHMARKS.md). Shuffling is a stateless permutation keyed by (seed, epoch), so an epoch's
order does not depend on how many epochs this process has already run: a resumed run sees the same
batches as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.files import atomic_write

# Lazy imports: tensorflow, tensorflow_datasets, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}  # what tf.io.decode_image reads
SYNTHETIC_CLASSES = ["parasitized", "uninfected"]  # same order and meaning as TFDS malaria


@dataclass
class Examples:
    """All examples of a source: images (N, S, S, 3) uint8 (in RAM or a read-only memmap), labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    digest: str
    source: dict[str, Any]
    names: list[str] = field(default_factory=list)  # file paths / example ids, for splits and errors
    _tensors: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Images and labels as TF tensors (made once; the images share memory when aligned)."""
        if self._tensors is None:
            import tensorflow as tf

            self._tensors = (as_tensor(np.ascontiguousarray(self.images)), tf.constant(self.labels))
        return self._tensors


@dataclass
class Splits:
    """Indices into `Examples` for each split; disjoint and stratified by class."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            h.update(np.asarray(part, np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- checks that must run before anything slow ----------------------------------------------------

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
        _list_image_tree(Path(cfg.image_dir))


def _list_image_tree(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
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


def aligned_empty(shape: tuple[int, ...], align: int = 64) -> np.ndarray:
    """An uninitialised uint8 array on a 64-byte boundary, which TF can then use without a copy."""
    count = int(np.prod(shape))
    buffer = np.empty(count + align, np.uint8)
    offset = (-buffer.ctypes.data) % align
    return buffer[offset:offset + count].reshape(shape)


def as_tensor(array: np.ndarray) -> tf.Tensor:
    """The array as a TF tensor, sharing its memory when it is aligned (no second copy of the data)."""
    import tensorflow as tf

    if array.flags.c_contiguous and array.ctypes.data % 64 == 0:
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.constant(array)


# --- the cache: decode once, keep uint8 in RAM or in a memmap file ---------------------------------

class _Sink:
    """Preallocated uint8 storage for decoded images: RAM when it fits the budget, else a cache file.

    The file is written with pwrite, not through a memory map: written pages of a map count in the
    process's RSS, so filling a 4 GB cache through one would take 4 GB of RSS, which is what the budget
    is there to avoid; pages in the kernel's page cache do not count, and the kernel drops them first.
    """

    def __init__(self, n: int, size: int, cfg: Config, key: str) -> None:
        nbytes = n * size * size * 3
        self.path: Path | None = None
        self.fd: int | None = None
        if nbytes <= cfg.cache_ram_mb * 2**20:
            self.array = aligned_empty((n, size, size, 3))
        else:
            cache = Path(cfg.cache_dir)
            cache.mkdir(parents=True, exist_ok=True)
            _remove_orphans(cache, key)
            self.path = cache / f"{key}.u8"
            self.tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            self.shape = (n, size, size, 3)
            header = np.lib.format.open_memmap(self.tmp, "w+", np.uint8, self.shape)  # .npy header, size
            self.offset = header.offset
            del header
            self.record = size * size * 3
            self.fd = os.open(self.tmp, os.O_WRONLY)

    def put(self, where: slice | np.ndarray, values: np.ndarray) -> None:
        """Images at positions `where` (a slice, or indices in any order)."""
        if self.fd is None:
            self.array[where] = values
            return
        values = np.ascontiguousarray(values, np.uint8)
        if isinstance(where, slice):
            _pwrite_all(self.fd, values, self.offset + where.start * self.record)
        else:
            for index, image in zip(where, values, strict=True):
                _pwrite_all(self.fd, image, self.offset + int(index) * self.record)

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Remove the (possibly multi-GB) temp file of a fill that did not complete (Ctrl-C, an error)."""
        if self.path is not None:
            self._close()
            for tmp in (self.tmp, self.tmp.with_suffix(".compact")):
                tmp.unlink(missing_ok=True)

    def finish(self, meta: dict[str, Any], keep: np.ndarray | None = None) -> np.ndarray:
        """The filled images; a cache file is published with its metadata written FIRST (atomically),
        so that a `.u8` file a reader finds always has its JSON beside it."""
        if self.path is None:
            return self.array if keep is None else self.array[keep]
        if self.fd is not None:
            os.fsync(self.fd)
        self._close()
        if keep is not None:  # corrupt files were dropped: compact into a new file (a rare path)
            filled = np.load(self.tmp, mmap_mode="r")
            compact = np.lib.format.open_memmap(
                self.tmp.with_suffix(".compact"), "w+", np.uint8, (int(keep.sum()), *self.shape[1:])
            )
            compact[:] = filled[keep]
            compact.flush()
            del compact, filled
            os.replace(self.tmp.with_suffix(".compact"), self.tmp)
        atomic_write(self.path.with_suffix(".json"), json.dumps(meta))
        os.replace(self.tmp, self.path)
        return np.load(self.path, mmap_mode="r")


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    view = memoryview(array).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _remove_orphans(cache: Path, key: str) -> None:
    """Temp files of fills whose process was SIGKILLed (no cleanup ran): they may be gigabytes."""
    for tmp in cache.glob(f"{key}.tmp*"):
        pid = tmp.suffix.removeprefix(".tmp")
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, another user's


def _cached(cfg: Config, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """A published cache entry (images, metadata), or None: missing, or torn by a kill of an older
    version (then it is simply rebuilt)."""
    path = Path(cfg.cache_dir) / f"{key}.u8"
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        images = np.load(path, mmap_mode="r")
        if images.nbytes <= cfg.cache_ram_mb * 2**20:  # it fits the budget now: the faster RAM path
            in_ram = aligned_empty(images.shape)
            with path.open("rb") as f:  # read, not copied through the map (whose pages would stay in RSS)
                f.seek(images.offset)
                if f.readinto(memoryview(in_ram).cast("B")) != in_ram.nbytes:
                    return None  # shorter than its header says: rebuilt
            return in_ram, meta
        return images, meta
    except (OSError, ValueError):
        return None


# --- sources -------------------------------------------------------------------------------------

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


def _content_digest(root: Path, classes: list[str], decoded: list[tuple[str, int, str]]) -> str:
    """Lineage digest of the decoded files' (name, label, sha256) rows; a class left without a readable
    image is an error."""
    for label, name in enumerate(classes):
        if not any(row[1] == label for row in decoded):
            raise UserError(f"no readable image in class folder {root / name}: replace the corrupt files")
    content = hashlib.sha256()
    for name, label, digest in decoded:
        content.update(f"{name}|{label}|{digest}\n".encode())
    return content.hexdigest()[:16]


def load_image_dir(cfg: Config) -> Examples:
    """Decode an image tree in TF's C++ threads; unreadable files are skipped and counted."""
    import tensorflow as tf

    root = Path(cfg.image_dir)
    classes, files = _list_image_tree(root)
    size = cfg.image_size
    labels = np.array([label for _, label in files], np.int32)
    names = [str(p.relative_to(root)) for p, _ in files]
    key = _listing_key(files, names, size)
    cached = _cached(cfg, key)
    if cached is not None:
        images, meta = cached
        keep = np.array(meta["keep"], bool)
        return Examples(images, labels[keep], classes, meta["digest"], meta["source"],
                        [n for n, k in zip(names, keep, strict=True) if k])

    def decode(path: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, resize_uint8(image, size)

    paths = np.array([str(p) for p, _ in files])
    sink = _Sink(len(files), size, cfg, key)
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
            _warn(f"skipped {len(bad)} unreadable image(s) of {len(files)}, e.g. {root / bad[0]}")
        decoded = [(names[i], int(labels[i]), hashes[i]) for i in np.flatnonzero(ok)]
        digest = _content_digest(root, classes, decoded)
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
    cached = _cached(cfg, key)
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
    sink = _Sink(n, size, cfg, key) if n else None
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


def class_names(cfg: Config) -> list[str]:
    """The class names of the configured source, without loading any image."""
    if cfg.data_source == "tfds":
        import tensorflow_datasets as tfds

        check_available(cfg)
        return list(tfds.builder(cfg.tfds_name, data_dir=cfg.tfds_data_dir).info.features["label"].names)
    if cfg.data_source == "image_dir":
        return _list_image_tree(Path(cfg.image_dir))[0]
    return list(SYNTHETIC_CLASSES)


_DATA_KEYS = ("data_source", "tfds_name", "tfds_data_dir", "image_dir", "synthetic_examples", "image_size",
              "seed", "cache_ram_mb", "cache_dir")
_reuse: dict[str, Any] = {"on": False, "key": None, "examples": None}


@contextmanager
def reusing_loaded_examples() -> Iterator[None]:
    """Within the block, the last loaded examples serve the next run with the same data keys (cv folds
    and search trials decode the data once); after it nothing is kept (the memory is freed)."""
    _reuse.update(on=True, key=None, examples=None)
    try:
        yield
    finally:
        _reuse.update(on=False, key=None, examples=None)


def load_examples(cfg: Config) -> Examples:
    """Load every example of the configured source, decoded and resized to image_size."""
    key = tuple(getattr(cfg, k) for k in _DATA_KEYS)
    if _reuse["on"] and _reuse["key"] == key:
        return _reuse["examples"]
    loaders = {"tfds": load_tfds, "image_dir": load_image_dir, "synthetic": load_synthetic}
    examples = loaders[cfg.data_source](cfg)
    if _reuse["on"]:
        _reuse.update(key=key, examples=examples)
    return examples


def split(examples: Examples, cfg: Config) -> Splits:
    """Stratified, seeded train/val/test split by index (the same for every source)."""
    rng = np.random.default_rng(cfg.seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in range(len(examples.class_names)):
        idx = rng.permutation(np.flatnonzero(examples.labels == label))
        n_test = round(len(idx) * cfg.test_fraction)
        n_val = round(len(idx) * cfg.val_fraction)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    out = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    for name, idx in out.items():
        if len(idx) == 0:
            raise UserError(
                f"the {name} split is empty ({len(examples)} examples): use more data or change "
                "val_fraction/test_fraction"
            )
    return Splits(out["train"], out["val"], out["test"])


def _file_reader(images: np.memmap) -> Callable[[np.ndarray], np.ndarray]:
    """Images by index, read from the cache file with pread. Through a memory map every page read stays
    in the process's RSS (and this kernel maps whole large folios, ~2.6 MB per image read at random),
    until the whole file is resident: 1.35 GB for malaria at 128 px, the size the budget is there to
    keep out of RAM. Pages read with pread stay in the kernel's page cache, outside the RSS. One
    thread reads ~240k images/s; several threads contend on the GIL and read 5x slower, so the dataset
    calls this from one thread (BENCHMARKS.md)."""
    record = int(np.prod(images.shape[1:]))
    fd = os.open(images.filename, os.O_RDONLY)
    base = images.offset

    def read(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *images.shape[1:]), np.uint8)
        rows = out.reshape(len(idx), record)
        for row, index in enumerate(idx):
            if os.preadv(fd, [rows[row]], base + int(index) * record) != record:
                raise OSError(f"the cache file {images.filename} is shorter than its header says: "
                              "delete it (cache_dir) and rerun")
        return out

    weakref.finalize(read, os.close, fd)
    return read


def to_tf_dataset(examples: Examples, indices: np.ndarray, batch_size: int, *,
                  shuffle_seed: int | None = None, epoch: tf.Variable | None = None) -> tf.data.Dataset:
    """Batches of (uint8 images, labels) gathered from the decoded arrays.

    With `shuffle_seed`, each epoch is a stateless permutation of `indices` keyed by (seed, epoch.value),
    and `epoch` is set by `EpochKeyedRandomness` at each epoch's start.
    """
    import tensorflow as tf

    images, labels = examples.images, examples.labels
    size = images.shape[1]
    order = tf.constant(np.asarray(indices, np.int64))
    if shuffle_seed is not None:
        if epoch is None:
            raise ValueError("a shuffled dataset needs the epoch variable")
        seed = tf.constant(shuffle_seed, tf.int64)

        def permute(_: tf.Tensor) -> tf.Tensor:
            key = tf.stack([seed, tf.cast(epoch.read_value(), tf.int64)])
            return tf.random.experimental.stateless_shuffle(order, seed=key)

        ds = tf.data.Dataset.range(1).map(permute).unbatch()
    else:
        ds = tf.data.Dataset.from_tensor_slices(order)

    calls = tf.data.AUTOTUNE
    if isinstance(images, np.memmap):  # over the RAM budget: read batches from the cache file
        read = _file_reader(images)
        calls = 1  # one reader thread: parallel numpy_function calls fight over the GIL (5x slower)

        def gather_np(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return read(idx), labels[idx]

        def gather(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = tf.numpy_function(gather_np, [idx], (tf.uint8, tf.int32), stateful=False)
            x.set_shape((None, size, size, 3))
            y.set_shape((None,))
            return x, y
    else:  # in RAM: a graph-side gather, 2x faster than numpy_function and free of the GIL
        images_t, labels_t = examples.tensors()

        def gather(idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.gather(images_t, idx), tf.gather(labels_t, idx)

    return ds.batch(batch_size).map(gather, num_parallel_calls=calls).prefetch(
        tf.data.AUTOTUNE
    )
