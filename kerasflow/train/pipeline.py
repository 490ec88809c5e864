"""The tf.data pipeline over decoded `Examples`: a stateless (seed, epoch) permutation, batches gathered
from memory (or the cache file), augmentation on the device."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from kerasflow.train.examples import Examples

# Lazy imports: tensorflow, inside the functions that use them (seconds to load).

if TYPE_CHECKING:
    import tensorflow as tf


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
