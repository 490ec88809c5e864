"""What every data source yields: `Examples` (uint8 images, labels, class names, a digest) and `Splits`
(indices), with the helpers they share (64-byte aligned buffers, zero-copy tensors, the one resize)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

# Lazy imports: tensorflow, inside the functions that use them (seconds to load).

if TYPE_CHECKING:
    import tensorflow as tf


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


def resize_uint8(image: tf.Tensor, size: int) -> tf.Tensor:
    """The one resize every source uses: bilinear (antialiasing halves decode throughput), uint8."""
    import tensorflow as tf

    image = tf.image.resize(image, (size, size))
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
