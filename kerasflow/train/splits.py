"""A splits file: the dataset's examples and their nested cross-validation folds, written once.

    kerasflow splits [--config FILE] [--set key=value ...] [--out outputs/splits.json]

One random split makes a result depend on which examples landed in the test set; a file of folds
written once (seeded, stratified by class and, for the NIH image tree, grouped by patient so no patient
is on both sides) makes every run that uses it comparable, and its digest is logged with each of them.

Layout (JSON): `examples` (file paths relative to image_dir / TFDS example indices / generator indices)
with their `labels` and `groups`, then `outer` folds, each with its `test` indices and `inner` folds of
`train`/`dev` indices. `examples_digest` identifies the dataset (names + labels); training refuses a
splits file made for other data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerasflow.config import Config
from kerasflow.errors import UserError
from kerasflow.files import atomic_write
from kerasflow.train import data, sources
from kerasflow.train.examples import Examples, Splits

log = logging.getLogger(__name__)

# Lazy imports: sklearn, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

FORMAT = "kerasflow-splits/1"


def examples_digest(names: list[str], labels: np.ndarray, class_names: list[str]) -> str:
    """Identity of a dataset for splits: which examples, in which order, with which labels."""
    h = hashlib.sha256(json.dumps(class_names).encode())
    for name, label in zip(names, labels.tolist(), strict=True):
        h.update(f"{name}\t{label}\n".encode())
    return h.hexdigest()[:16]


def groups_of(names: list[str], pattern: str) -> tuple[list[str] | None, int]:
    """Each example's group from its file name (None: no grouping) and how many names did not match."""
    if not pattern:
        return None, 0
    regex = re.compile(pattern)
    groups, unmatched = [], 0
    for name in names:
        match = regex.search(Path(name).name)
        if match is None:
            unmatched += 1
            groups.append(f"<own>{name}")  # an unmatched file is a group of its own
        else:
            groups.append(match.group(1) if regex.groups else match.group(0))
    return groups, unmatched


def _kfold(labels: np.ndarray, groups: list[str] | None, n: int, seed: int, what: str
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(labels)
    if groups is None:
        if counts[counts > 0].min() < n:
            raise UserError(f"{what}: a class has {counts[counts > 0].min()} examples, fewer than the {n} "
                            "folds asked for: lower the number of folds or use more data")
        folds = StratifiedKFold(n_splits=n, shuffle=True, random_state=seed)
        return list(folds.split(np.zeros(len(labels)), labels))
    distinct = len(set(groups))
    if distinct < n:
        raise UserError(f"{what}: {distinct} groups (patients) cannot fill {n} folds: lower the number "
                        "of folds, or set group_pattern: \"\" if the images are independent")
    folds = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(labels)), labels, groups))


def make(cfg: Config, examples: Examples) -> dict[str, Any]:
    """The splits of `examples`: n_outer_folds outer folds, each with n_inner_folds train/dev folds."""
    names = list(examples.names)
    labels = np.asarray(examples.labels, np.int64)
    grouped = sources.get(cfg.data_source).grouped  # file names carry the patient
    groups, unmatched = groups_of(names, cfg.group_pattern) if grouped else (None, 0)
    if unmatched:
        log.warning(f"{unmatched} of {len(names)} file names do not match group_pattern "
                    f"{cfg.group_pattern!r}; each is its own group")
    outer = []
    for o, (rest, test) in enumerate(_kfold(labels, groups, cfg.n_outer_folds, cfg.seed, "outer folds")):
        rest_groups = None if groups is None else [groups[i] for i in rest]
        inner = [{"train": sorted(rest[tr].tolist()), "dev": sorted(rest[dv].tolist())}
                 for tr, dv in _kfold(labels[rest], rest_groups, cfg.n_inner_folds, cfg.seed + 1 + o,
                                      f"inner folds of outer fold {o}")]
        outer.append({"test": sorted(test.tolist()), "inner": inner})
    body = {
        "format": FORMAT,
        "dataset": {**{k: v for k, v in examples.source.items() if isinstance(v, (str, int, float))},
                    "class_names": examples.class_names, "data_digest": examples.digest},
        "examples_digest": examples_digest(names, labels, examples.class_names),
        "seed": cfg.seed, "n_outer_folds": cfg.n_outer_folds, "n_inner_folds": cfg.n_inner_folds,
        "group_pattern": cfg.group_pattern if groups is not None else "",
        "examples": names, "labels": labels.tolist(), "groups": groups, "outer": outer,
    }
    return {**body, "digest": _digest(body)}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write(splits: dict[str, Any], path: Path) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(splits, separators=(",", ":")))


def make_file(cfg: Config, path: Path) -> dict[str, Any]:
    """Load the data, make its folds and write them to `path`; returns the splits."""
    splits = make(cfg, data.load_examples(cfg))
    write(splits, path)
    sizes = [len(o["test"]) for o in splits["outer"]]
    grouping = f", grouped into {len(set(splits['groups']))} groups" if splits["groups"] else ""
    log.info(f"splits: {len(splits['examples'])} examples, {cfg.n_outer_folds} outer folds (test sizes "
             f"{sizes}) x {cfg.n_inner_folds} inner, stratified{grouping}; digest {splits['digest']} "
             f"-> {path}")
    return splits


def read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"splits file {path} does not exist: write it with `make splits` (or "
                        "kerasflow splits), or set splits_file: \"\"") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"splits file {path} is not valid JSON: write it again with `make splits`") from None
    if not isinstance(splits, dict) or splits.get("format") != FORMAT:
        raise UserError(f"{path} is not a kerasflow splits file ({FORMAT}): write one with `make splits`")
    body = {k: v for k, v in splits.items() if k != "digest"}
    if _digest(body) != splits.get("digest"):
        raise UserError(f"splits file {path} was edited (its digest does not match its content): write "
                        "it again with `make splits`")
    return splits


@dataclass
class Fold:
    """One (outer, inner) fold of a splits file, as indices into the dataset."""

    splits: Splits
    digest: str


def check_matches(splits: dict[str, Any], examples: Examples, path: str | Path) -> None:
    found = examples_digest(list(examples.names), np.asarray(examples.labels), examples.class_names)
    if found != splits["examples_digest"]:
        made_for = splits["dataset"].get("source", "?")
        raise UserError(
            f"splits file {path} was made for another dataset ({made_for}, {len(splits['examples'])} "
            f"examples, digest {splits['examples_digest']}; this config loads {len(examples)} examples, "
            f"digest {found}): write a new one with `make splits` using the training config"
        )


def check_counts(splits: dict[str, Any], n_outer: int, n_inner: int, path: str | Path) -> None:
    have_outer, have_inner = len(splits["outer"]), len(splits["outer"][0]["inner"])
    if n_outer > have_outer:
        raise UserError(f"{n_outer} outer folds asked for, but splits file {path} has {have_outer}: "
                        f"use at most {have_outer}, or write a new file with n_outer_folds={n_outer}")
    if n_inner > have_inner:
        raise UserError(f"{n_inner} inner folds asked for, but splits file {path} has {have_inner}: "
                        f"use at most {have_inner}, or write a new file with n_inner_folds={n_inner}")


def fold(cfg: Config, examples: Examples) -> Fold:
    """The train/val/test indices of cfg's (outer_fold, inner_fold) in cfg.splits_file."""
    splits = read(cfg.splits_file)
    check_matches(splits, examples, cfg.splits_file)
    check_counts(splits, cfg.outer_fold + 1, cfg.inner_fold + 1, cfg.splits_file)
    outer = splits["outer"][cfg.outer_fold]
    inner = outer["inner"][cfg.inner_fold]
    parts = [np.asarray(x, np.int64) for x in (inner["train"], inner["dev"], outer["test"])]
    return Fold(Splits(*parts), splits["digest"])
