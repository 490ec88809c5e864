"""Data sources behind one interface: each module in this folder is one source, named by its file.

`data_source: NAME` in the config picks `kerasflow/train/sources/NAME.py`; the config's choices are
this folder's modules (`config.SOURCE_NAMES`), so a new source is one new file that defines `SOURCE`
(a `Source`), plus its test. Files whose name starts with `_` are helpers, not sources.

Every source yields the same `Examples` (uint8 images of one size, int labels, class names, a digest of
what was read). A source reads the config only through the keys it declares in `Source.keys` (and the
keys every source shares, `COMMON_KEYS`): the loaded data is reused by that key set (cv folds and search
trials decode once), so a key read but not declared would let another value reuse old data. Reading an
undeclared key is therefore an error the first test of the source meets, not a silent reuse.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast

from kerasflow.config import SOURCE_NAMES, Config
from kerasflow.errors import UserError
from kerasflow.train.examples import Examples

# What every source may read besides its own keys: the size it resizes to and where the cache lives.
COMMON_KEYS = ("image_size", "cache_ram_mb", "cache_dir")


def _nothing(cfg: Config) -> None:
    """The check of a source that needs nothing from outside (a generator)."""


@dataclass(frozen=True)
class Source:
    """One data source: what it reads, how it loads, and what `doctor`, `make data` and the folds ask."""

    keys: tuple[str, ...]  # the config keys that decide which data it loads (the reuse key)
    load: Callable[[Config], Examples]  # every example, decoded and resized to image_size
    class_names: Callable[[Config], list[str]]  # without loading any image (the model is built first)
    check: Callable[[Config], None] = _nothing  # fail in milliseconds (UserError) when it cannot load
    folder_key: str | None = None  # the config key naming the folder it reads: doctor checks the
    # container will see it (under the checkout or DATA) and asks `look` what is there
    look: Callable[[Config, Path], str] | None = None  # doctor's PASS line for the folder on the host,
    # or UserError naming the fix; reads files only (doctor runs without TensorFlow)
    fetch: Callable[[Config], None] | None = None  # `make data`: download it, where there is internet
    grouped: bool = False  # example names carry a patient id: group_pattern groups the cv folds


class UndeclaredKey(AttributeError):
    """A source read a config key it does not declare: a bug in the source, caught by its first test."""


class _Declared:
    """The config as a source sees it: its declared keys and the common ones, nothing else."""

    def __init__(self, cfg: Config, name: str, allowed: tuple[str, ...]) -> None:
        self._cfg, self._name, self._allowed = cfg, name, allowed

    def __getattr__(self, key: str) -> Any:
        if key in self._allowed:
            return getattr(self._cfg, key)
        raise UndeclaredKey(
            f"data source {self._name} read config key {key!r} without declaring it: add it to its "
            f"Source(keys=...) in kerasflow/train/sources/{self._name}.py (data loaded with another "
            f"{key} would otherwise be reused)"
        )


def get(name: str) -> Source:
    """The source named `name` (a module of this folder)."""
    if name not in SOURCE_NAMES:
        raise UserError(f"no data source {name!r}: use one of {', '.join(SOURCE_NAMES)}")
    source = getattr(importlib.import_module(f"{__name__}.{name}"), "SOURCE", None)
    if not isinstance(source, Source):
        raise TypeError(f"kerasflow/train/sources/{name}.py defines no SOURCE = Source(...)")
    known = {f.name for f in fields(Config)}
    unknown = [k for k in (*source.keys, *(k for k in [source.folder_key] if k)) if k not in known]
    if unknown:
        raise TypeError(f"data source {name} declares keys the config does not have: {unknown}")
    if source.folder_key and source.folder_key not in source.keys:
        raise TypeError(f"data source {name}: its folder_key {source.folder_key} is not one of its keys")
    if (source.folder_key is None) != (source.look is None):
        raise TypeError(f"data source {name}: folder_key and look go together (doctor checks the folder)")
    return source


def _view(cfg: Config) -> tuple[Source, Config]:
    source = get(cfg.data_source)
    allowed = (*source.keys, *COMMON_KEYS)
    return source, cast(Config, _Declared(cfg, cfg.data_source, allowed))


def data_key(cfg: Config) -> tuple[Any, ...]:
    """What identifies the loaded data: the source and the value of every key it reads."""
    source = get(cfg.data_source)
    return (cfg.data_source, *((k, getattr(cfg, k)) for k in (*source.keys, *COMMON_KEYS)))


def load(cfg: Config) -> Examples:
    """Every example of the configured source, decoded and resized to image_size."""
    source, view = _view(cfg)
    return source.load(view)


def class_names(cfg: Config) -> list[str]:
    """The class names of the configured source, without loading any image."""
    source, view = _view(cfg)
    return source.class_names(view)


def check(cfg: Config) -> None:
    """Fail in milliseconds when the configured data cannot be had (before a run or a model exists)."""
    source, view = _view(cfg)
    source.check(view)


def look(cfg: Config, host: Path) -> str:
    """What the source finds in its folder on the host (doctor's PASS line), or UserError with the fix."""
    source, view = _view(cfg)
    if source.look is None:  # a source without a folder: get() pairs folder_key and look
        raise TypeError(f"data source {cfg.data_source} reads no folder")
    return source.look(view, host)


def fetch(cfg: Config) -> str:
    """Download the configured source where it needs it (`make data`); what was done, in one line."""
    source, view = _view(cfg)
    if source.fetch is None:
        return f"data_source={cfg.data_source} needs no download"
    source.fetch(view)
    return f"data_source={cfg.data_source} is ready"
