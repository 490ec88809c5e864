"""The configured data, decoded and resized once, split, then served by a fast tf.data pipeline.

Every source (kerasflow/train/sources/, one module each) yields the same `Examples`: uint8 images of
one size, int labels, class names, and a digest that identifies the data for lineage. Decoding happens
once per run (or once ever, through the cache file for data over the RAM budget); epochs then only
gather batches from memory, which is what keeps a GPU fed (see BENCHMARKS.md). Shuffling is a stateless
permutation keyed by (seed, epoch), so an epoch's order does not depend on how many epochs this process
has already run: a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.train import sources
from kerasflow.train.examples import Examples, Splits

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
    key = sources.data_key(cfg)
    if _reuse["on"] and _reuse["key"] == key:
        return _reuse["examples"]
    examples = sources.load(cfg)
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
