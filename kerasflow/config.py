"""Typed training configuration: one YAML file is the single source of every hyperparameter.

The dataclass below mirrors `config.yaml` key for key; a test keeps the two (and the comments on every
key) in sync. Loading is strict because a silently ignored typo in a hyperparameter costs a whole run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from kerasflow.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"

# The data sources are the modules of kerasflow/train/sources/ (one file each, named as users choose
# them): listed from the folder, not imported, so the config stays below the training layer and a new
# source is one new file (kerasflow/train/sources/__init__.py says what the file defines).
SOURCES_FOLDER = Path(__file__).resolve().parent / "train" / "sources"
SOURCE_NAMES = tuple(sorted(p.stem for p in SOURCES_FOLDER.glob("*.py") if not p.stem.startswith("_")))


def _choice(*options: str) -> dict[str, Any]:
    return {"choices": options}


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> dict[str, Any]:
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}


@dataclass(frozen=True)
class Config:
    """Every hyperparameter of a run. No defaults here: config.yaml is their one source."""

    # data
    data_source: str = field(metadata=_choice(*SOURCE_NAMES))
    tfds_name: str
    tfds_data_dir: str
    image_dir: str
    synthetic_examples: int = field(metadata=_range(10))
    val_fraction: float = field(metadata=_range(0, 1, lo_open=True, hi_open=True))
    test_fraction: float = field(metadata=_range(0, 1, lo_open=True, hi_open=True))
    splits_file: str
    outer_fold: int = field(metadata=_range(0))
    inner_fold: int = field(metadata=_range(0))
    # folds
    n_outer_folds: int = field(metadata=_range(2, 100))
    n_inner_folds: int = field(metadata=_range(2, 100))
    group_pattern: str
    # model
    model: str = field(metadata=_choice("vgg16", "cnn"))
    image_size: int = field(metadata=_range(8, 1024))
    weights: str
    cnn_blocks: int = field(metadata=_range(1, 6))
    cnn_filters: int = field(metadata=_range(1, 512))
    dense_units: int = field(metadata=_range(0, 8192))
    dropout: float = field(metadata=_range(0, 1, hi_open=True))
    # train
    batch_size: int = field(metadata=_range(1, 65536))
    epochs: int = field(metadata=_range(1))
    learning_rate: float = field(metadata=_range(0, 10, lo_open=True))
    fine_tune_blocks: int = field(metadata=_range(0, 5))
    fine_tune_epochs: int = field(metadata=_range(0))
    fine_tune_learning_rate: float = field(metadata=_range(0, 10, lo_open=True))
    augment: bool
    rotation: float = field(metadata=_range(0, 0.5))
    seed: int = field(metadata=_range(0, 2**31 - 1))
    deterministic: bool
    # speed
    distribute: str = field(metadata=_choice("none", "mirrored"))
    precision: str = field(metadata=_choice("float32", "mixed_float16", "mixed_bfloat16"))
    jit_compile: bool
    # output
    output_dir: str
    run_name: str
    # resources
    cache_ram_mb: int = field(metadata=_range(0))
    steps_per_execution: int = field(metadata=_range(1, 10000))
    cache_dir: str
    # search
    search_metric: str
    search_direction: str = field(metadata=_choice("maximize", "minimize"))
    search_space: dict = field(metadata={"search_space": True})

    @property
    def total_epochs(self) -> int:
        """Epochs over both phases: the x axis of every curve and the resume bookkeeping."""
        return self.epochs + (self.fine_tune_epochs if self.has_fine_tune else 0)

    @property
    def has_fine_tune(self) -> bool:
        return self.model == "vgg16" and self.fine_tune_blocks > 0 and self.fine_tune_epochs > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with some keys changed (used by tests and the search)."""
        return from_dict({**self.to_dict(), **changes})


# The config's concerns, as config.yaml's `# --- NAME` headers group its keys (a test keeps them equal).
# Keys keep their flat names everywhere (`--set epochs=3`, `-P epochs=3`); a key's section is found here.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data_source", "tfds_name", "tfds_data_dir", "image_dir", "synthetic_examples", "val_fraction",
             "test_fraction", "splits_file", "outer_fold", "inner_fold"),
    "folds": ("n_outer_folds", "n_inner_folds", "group_pattern"),
    "model": ("model", "image_size", "weights", "cnn_blocks", "cnn_filters", "dense_units", "dropout"),
    "train": ("batch_size", "epochs", "learning_rate", "fine_tune_blocks", "fine_tune_epochs",
              "fine_tune_learning_rate", "augment", "rotation", "seed", "deterministic"),
    "speed": ("distribute", "precision", "jit_compile"),
    "output": ("output_dir", "run_name"),
    "resources": ("cache_ram_mb", "steps_per_execution", "cache_dir"),
    "search": ("search_metric", "search_direction", "search_space"),
}
# A run's identity: what changes the trained model. A resume must match these and only these (more
# cache memory or another search space does not change a run); a tracked run logs them as params.
IDENTITY_SECTIONS = ("data", "model", "train", "speed")
# What a search may vary: the model and its training, never the seed that makes trials comparable.
SEARCHABLE = frozenset(SECTIONS["model"] + SECTIONS["train"]) - {"seed", "deterministic"}


def section_of(key: str) -> str:
    return next(name for name, keys in SECTIONS.items() if key in keys)


def identity(cfg: Config) -> dict[str, Any]:
    """The keys that make the trained model what it is, with their values."""
    values = cfg.to_dict()
    return {k: values[k] for name in IDENTITY_SECTIONS for k in SECTIONS[name]}


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _as_float(value: Any) -> Any:
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)  # PyYAML reads 1e-4 (no dot) as a string: YAML 1.1 quirk
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# type -> the accepted value converted, or None when it is not one (bool is no int here)
_CONVERT: dict[type, Any] = {
    bool: lambda v: v if isinstance(v, bool) else None,
    int: lambda v: v if isinstance(v, int) and not isinstance(v, bool) else None,
    float: _as_float,
    str: lambda v: v if isinstance(v, str) else None,
    dict: lambda v: v if isinstance(v, dict) else None,
}


def _check_type(name: str, value: Any, typ: type) -> Any:
    converted = _CONVERT[typ](value)
    if converted is not None:
        return converted
    raise UserError(
        f"config key '{name}' must be {typ.__name__}, got {type(value).__name__} {value!r}: "
        f"fix it in the config file or with --set {name}=..."
    )


def _check_range(name: str, value: Any, meta: dict[str, Any]) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(
            f"config key '{name}' is {value!r}; choose one of: {', '.join(meta['choices'])}"
        )
    lo, hi = meta.get("lo"), meta.get("hi")
    too_low = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    too_high = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
    if too_low or too_high:
        left = "(" if meta.get("lo_open") else "["
        right = ")" if meta.get("hi_open") else "]"
        bounds = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise UserError(f"config key '{name}' is {value}, outside {bounds}: pick a value in range")


# A name that becomes a folder or file name (run_name, a study): one path component, no '..', no '/'.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(value: str, what: str) -> str:
    """Refuse names that would escape their folder (`../x`, `a/b`) or that a shell or URL would mangle."""
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise UserError(f"{what} {value!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
                        "letter or digit (it names a folder): choose another")
    return value


# An automatic run name: empty, or holding {time} (`make demo`: demo-{time}). The clock fills it in and
# the name is claimed exclusively (-2, -3, ... when taken), so it is never another run's; a run is
# resumed only by the name the user gave it (kerasflow/train/rundir.py, claim).
AUTO_NAME = "{time}"


def automatic_name(name: str) -> bool:
    return not name or AUTO_NAME in name


def _check_together(cfg: Config) -> None:
    if cfg.run_name:
        check_name(cfg.run_name.replace(AUTO_NAME, "20260101-000000"), "run_name")
    if cfg.model == "vgg16" and cfg.image_size < 32:
        raise UserError(
            f"image_size {cfg.image_size} is too small for vgg16 (needs >= 32): "
            "set image_size: 32 or more, or model: cnn"
        )
    if cfg.val_fraction + cfg.test_fraction >= 0.95:
        raise UserError(
            "val_fraction + test_fraction leaves under 5% for training: lower one of them"
        )
    for name in ("val_fraction", "test_fraction"):
        value = getattr(cfg, name)
        if abs(value * 100 - round(value * 100)) > 1e-9:
            raise UserError(f"config key '{name}' is {value}: use a multiple of 0.01")
    if cfg.group_pattern:
        try:
            re.compile(cfg.group_pattern)
        except re.error as exc:
            raise UserError(f"group_pattern {cfg.group_pattern!r} is not a valid regular expression "
                            f"({exc}): fix it, or set it to \"\" for no grouping") from None
    if cfg.model == "cnn" and cfg.image_size < 2 ** cfg.cnn_blocks:
        raise UserError(
            f"image_size {cfg.image_size} is too small for {cfg.cnn_blocks} cnn blocks "
            f"(each halves it): use image_size >= {2 ** cfg.cnn_blocks} or fewer cnn_blocks"
        )
    if cfg.jit_compile:
        _check_xla(cfg)


def _check_xla(cfg: Config) -> None:
    """Keras quietly trains without XLA when it cannot compile the model (model_supports_jit): refuse
    instead, so jit_compile: true always means XLA."""
    blockers = []
    if cfg.deterministic:  # Keras: not every op has a deterministic XLA kernel
        blockers.append(("deterministic: false", "Keras turns XLA off under TensorFlow op determinism"))
    if cfg.augment and cfg.rotation > 0:
        blockers.append(("rotation: 0", "the rotation augmentation has no XLA kernel"))
    if cfg.distribute == "mirrored":  # tests/test_speed.py: the replicas' seed states, read across devices
        blockers.append(("distribute: none", "XLA under MirroredStrategy fails on Keras' random-seed state"))
    if blockers:
        raise UserError(f"jit_compile: true cannot take effect ({'; '.join(why for _, why in blockers)}): "
                        f"set {' and '.join(fix for fix, _ in blockers)}, or jit_compile: false")


SPEC_KEYS = {"low", "high", "log", "step", "choices"}


def _choices(where: str, spec: dict[str, Any]) -> list[Any]:
    if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
        raise UserError(f"{where} has an empty or malformed choices list: give at least one value")
    return list(spec["choices"])


def _range_ends(where: str, key: str, spec: dict[str, Any], typ: type) -> list[Any]:
    """[low, high] of a numeric range, checked as Optuna will check it at the first trial: typed,
    non-empty, `log` a boolean and only above 0, `step` a positive number inside the range and never
    with `log` (an int range takes log only with step 1)."""
    if typ not in (int, float) or "low" not in spec or "high" not in spec:
        raise UserError(f"{where} needs low and high (numbers; a {typ.__name__} key takes choices)")
    low, high = spec["low"], spec["high"]
    for bound in (low, high):
        try:
            _check_type(key, bound, typ)
        except UserError:
            raise UserError(f"{where}: low and high must be {typ.__name__}s, got {low!r} and "
                            f"{high!r}") from None
    if not low < high:
        raise UserError(f"{where} has an empty range (low {low} >= high {high}): make low < high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false, got {type(log).__name__}")
    if log and low <= 0:
        raise UserError(f"{where} is log-scaled, so low must be > 0 (got {low})")
    if "step" in spec:
        _check_step(where, spec["step"], typ, (low, high), log=log)
    return [low, high]


def _check_step(where: str, step: Any, typ: type, ends: tuple[Any, Any], *, log: bool) -> None:
    fits = isinstance(step, int) if typ is int else isinstance(step, (int, float))
    if isinstance(step, bool) or not fits or step <= 0:
        raise UserError(f"{where}: step must be a positive {typ.__name__}, got {step!r}")
    if log and not (typ is int and step == 1):
        raise UserError(f"{where} has both log: true and step {step}, which Optuna refuses: drop one")
    low, high = ends
    if step > high - low:
        raise UserError(f"{where}: step {step} is larger than the range {low}..{high}: only low would "
                        "ever be tried; use a smaller step")


MAX_COMBINATIONS = 4096  # of the space's extremes checked together; beyond it, every pair of keys


def _check_search_space(cfg: Config) -> None:
    """Every range must be non-empty, every value it can produce a valid value of its key, and every
    combination of the space's extremes a valid config (the smallest image_size with the most cnn_blocks):
    a search must not stop at trial 7 on something the config could have said when it loaded."""
    hints = get_type_hints(Config)
    extremes: dict[str, list[Any]] = {}
    for key, spec in cfg.search_space.items():
        where = f"search_space key '{key}'"
        if key not in SEARCHABLE:
            raise UserError(f"{where} is not a config key the search can vary: use a key of the model or "
                            "train sections of config.yaml (not seed), like learning_rate or dropout")
        if not isinstance(spec, dict) or not spec or set(spec) - SPEC_KEYS:
            raise UserError(f"{where} must be {{low: .., high: .., log: true?, step: ..?}} or "
                            f"{{choices: [..]}}, got {spec!r}")
        candidates = _choices(where, spec) if "choices" in spec else _range_ends(where, key, spec, hints[key])
        for value in candidates:
            try:
                _check_type(key, value, hints[key])
                _check_range(key, value, dict(next(f for f in dataclasses.fields(Config)
                                                   if f.name == key).metadata))
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
        extremes[key] = list(dict.fromkeys(candidates))
    _check_combinations(cfg, extremes)


def _check_combinations(cfg: Config, extremes: dict[str, list[Any]]) -> None:
    """The rules between keys (_check_together), over every combination of the space's extremes (the
    ends of each range, each choice), or over every pair of keys when there are too many."""
    keys_ = list(extremes)
    total = 1
    for values in extremes.values():
        total *= len(values)
    if total <= MAX_COMBINATIONS:
        groups = [keys_]
    else:
        groups = [list(pair) for pair in itertools.combinations(keys_, 2)] or [keys_]
    for group in groups:
        for combo in itertools.product(*(extremes[k] for k in group)):
            changes = dict(zip(group, combo, strict=True))
            try:
                _check_together(dataclasses.replace(cfg, **changes, search_space={}))
            except UserError as exc:
                shown = ", ".join(f"{k}={v}" for k, v in changes.items())
                raise UserError(f"search_space can try {shown} together, and then: {exc} (narrow the "
                                "search space)") from None


def from_dict(raw: dict[str, Any], source: str = "the config") -> Config:
    """Build a Config from a plain mapping, rejecting unknown, missing and ill-typed keys."""
    if not isinstance(raw, dict):
        raise UserError(f"{source} must be a mapping of key: value lines, got {type(raw).__name__}")
    known = keys()
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise UserError(
            f"unknown config key '{unknown[0]}' in {source}: valid keys are listed in config.yaml"
        )
    missing = [k for k in known if k not in raw]
    if missing:
        raise UserError(f"config key '{missing[0]}' is missing from {source}: add it (see config.yaml)")
    hints = get_type_hints(Config)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        value = raw[f.name]
        if value is None and hints[f.name] is str:
            value = ""
        values[f.name] = _check_type(f.name, value, hints[f.name])
        _check_range(f.name, values[f.name], dict(f.metadata))
    cfg = Config(**values)
    _check_together(cfg)
    _check_search_space(cfg)
    return cfg


MAX_YAML_BYTES = 1 << 20  # a config, a preset or a logged config.yaml from a store: far below this


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: a config never needs them, and 500 bytes of nested aliases (a
    "billion laughs" in a config pulled from a store) expand to gigabytes wherever the value is copied."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"YAML aliases (*name) are not allowed in a config (line {mark.line + 1})")
        return super().compose_node(parent, index)


def read_yaml(text: str, source: str) -> Any:
    """Parse a config's YAML, bounded: at most MAX_YAML_BYTES and no aliases; one line when it is not."""
    if len(text) > MAX_YAML_BYTES:
        raise UserError(f"{source} is {len(text)} bytes, over the {MAX_YAML_BYTES}-byte limit of a config: "
                        "is it really a config file?")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        why = "" if mark else f" ({exc})"
        raise UserError(f"{source} is not valid YAML{where}{why}: fix the syntax") from None


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `key=value` override; the value is YAML so `epochs=3` is an int, `augment=false` a bool."""

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override {text!r} is not key=value: write e.g. --set epochs=3")
    if key not in keys():
        raise UserError(f"unknown config key '{key}' in --set: valid keys are listed in config.yaml")
    try:
        parsed = read_yaml(value, f"--set {key}") if value.strip() else ""
    except UserError:  # not YAML (a regex like ^([^_]+)_): the text itself
        parsed = value
    if get_type_hints(Config)[key] is str and not isinstance(parsed, str):
        parsed = value  # `run_name=2024` means the string, not a number
    return key, parsed


PRESETS = DEFAULT_CONFIG.parent / "presets"


def read_preset(name: str) -> dict[str, Any]:
    """A preset's overrides: presets/NAME.yaml beside config.yaml, or a YAML file's path."""

    path = Path(name) if name.endswith((".yaml", ".yml")) or "/" in name else PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml"))) or "none"
        raise UserError(f"preset {name!r} does not exist ({path}): use one of {known}, or a YAML file's path")
    values = read_yaml(path.read_text(), f"preset {path}") or {}
    if not isinstance(values, dict):
        raise UserError(f"preset {path} must be a mapping of key: value lines")
    unknown = sorted(set(values) - set(keys()))
    if unknown:
        raise UserError(f"unknown config key '{unknown[0]}' in preset {path}: valid keys are in config.yaml")
    return values


def load(path: str | Path | None = None, overrides: list[str] | None = None,
         presets: list[str] | None = None) -> Config:
    """Read the YAML config file, apply presets then `key=value` overrides, and validate everything."""

    path = Path(path) if path else DEFAULT_CONFIG
    try:
        size = path.stat().st_size  # checked before reading: a config.yaml from a store may be anything
        if size > MAX_YAML_BYTES:
            raise UserError(f"config file {path} is {size} bytes, over the {MAX_YAML_BYTES}-byte limit of a "
                            "config: is it really a config file?")
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist: pass an existing file with --config") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path} ({exc.strerror}): check its permissions") from None
    raw = read_yaml(text, f"config file {path}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must be a mapping of key: value lines")
    for name in presets or []:
        raw.update(read_preset(name))
    for text_override in overrides or []:
        key, value = parse_override(text_override)
        raw[key] = value
    return from_dict(raw, source=str(path))


# Keys whose empty value asks the run to choose one (a generated run name, splits written for a CV):
# what was chosen is in the run's config.yaml artifact, not in the empty param `mlflow run` logged.
RESOLVED_WHEN_EMPTY = frozenset({"run_name", "splits_file"})


def same_param(key: str, logged: str, value: Any) -> bool:
    """Whether a param text logged by someone else means `value`.

    `mlflow run` logs every entry-point parameter as its command-line text: shell-quoted ("''",
    "'^([^_]+)_'") and unparsed ("false" for False, "5" for 5.0). MLflow refuses to change a logged
    param, so agreement is decided on the parsed values, not the strings.
    """

    try:
        words = shlex.split(logged)
    except ValueError:
        words = [logged]
    text = words[0] if len(words) == 1 else ("" if not words else logged)
    if key not in keys() or key == "search_space":
        return str(value) in (logged, text)
    try:
        parsed = _check_type(key, parse_override(f"{key}={text}")[1], get_type_hints(Config)[key])
    except UserError:
        return False
    if parsed == "" and key in RESOLVED_WHEN_EMPTY:
        return True
    return parsed == value


def dump(cfg: Config) -> str:
    """The resolved config as YAML, in the key order of config.yaml, loadable by `load`."""

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)
