"""An image folder tree, one sub-folder per class (NIH's cell_images/ with Parasitized/ and Uninfected/).

Decoded once in TF's C++ threads; unreadable files are skipped and counted; the digest is of every
decoded file's name, label and bytes. File names carry the patient (NIH: C<slide>P<patient>...), so the
cv folds can group by it (group_pattern).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.train.cache import Sink, lookup
from kerasflow.train.examples import Examples, resize_uint8
from kerasflow.train.sources import Source

log = logging.getLogger(__name__)

# Lazy imports: tensorflow, inside the functions that use them (seconds to load).

if TYPE_CHECKING:
    import tensorflow as tf


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}  # what tf.io.decode_image reads


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


def load(cfg: Config) -> Examples:
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




def class_names(cfg: Config) -> list[str]:
    return list_image_tree(Path(cfg.image_dir))[0]


def check(cfg: Config) -> None:
    list_image_tree(Path(cfg.image_dir))


def look(cfg: Config, host: Path) -> str:
    """What training will read there: class folders with images (the same listing, so the same verdict)."""
    shown = f"image_dir={cfg.image_dir}"
    if not host.is_dir():
        raise UserError(f"image_dir {host} ({shown}) is not a folder: give the folder of class sub-folders "
                        "(-P image_dir=...), or mount one with DATA=/host/folder -P image_dir=/data/...")
    try:
        classes, files = list_image_tree(host)
    except UserError as exc:
        raise UserError(f"{exc} ({shown})") from None
    return f"{len(files)} images in {len(classes)} class folders in {host}"


SOURCE = Source(keys=("image_dir",), load=load, class_names=class_names, check=check,
                folder_key="image_dir", look=look, grouped=True)
