"""Model registry helpers: resolve a model URI with a clear error, and promote an alias by a metric.

    kerasflow promote NAME --metric test_accuracy [--alias champion] [--mode max]
    kerasflow versions NAME
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kerasflow.errors import UserError
from kerasflow.track import filters, store

# Lazy imports: mlflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import mlflow


@contextmanager
def opened(store_dir: str = store.DEFAULT_STORE, *, write: bool = False) -> Iterator[mlflow.MlflowClient]:
    """A client of the checked store (the same resolution as train_mlflow.py), the store active for the
    block only: the previous tracking URI is back afterwards (a notebook or a test keeps its own).
    Looking needs no write access (a pulled store one may only read); `write` for promote."""
    import mlflow

    with store.open_store(store_dir, create=False, write=write) as uri:
        yield mlflow.MlflowClient(uri)


def _metrics(c: mlflow.MlflowClient, run_id: str | None) -> dict[str, float]:
    """The metrics of a version's run; none when it has no run or its run is gone (deleted, then
    removed by `mlflow gc`, or never copied with the version): one such version must not break the list."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        return dict(c.get_run(run_id).data.metrics)
    except MlflowException:
        return {}


def _registered(c: mlflow.MlflowClient, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_registered_model(name)
    except MlflowException:
        names = [m.name for m in c.search_registered_models(max_results=20)]
        raise UserError(
            f"no registered model named '{name}' in {store.tracking_uri()}: registered models are "
            f"{', '.join(names) or 'none'} (register with train_mlflow.py --register NAME)"
        ) from None


def resolve(uri: str, c: mlflow.MlflowClient) -> str:
    """Check that a model URI points at something; the returned URI is what MLflow will load."""
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)@(.+)", uri)
    if match:
        name, alias = match.groups()
        model = _registered(c, name)
        if alias not in (model.aliases or {}):
            known = ", ".join(f"@{a}" for a in sorted(model.aliases or {})) or "none"
            raise UserError(
                f"registered model '{name}' has no alias '{alias}' (its aliases: {known}): use one of "
                f"those, or set it with `kerasflow promote {name} --alias {alias}`"
            )
        return uri
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
    if match:
        name, version = match.groups()
        _registered(c, name)
        try:
            c.get_model_version(name, version)
        except MlflowException:
            raise UserError(f"registered model '{name}' has no version {version}") from None
        return uri
    import mlflow

    try:
        mlflow.models.get_model_info(uri)
    except Exception as exc:  # noqa: BLE001 - MlflowException, OSError, ... all mean "no model there"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"no MLflow model at {uri} ({first[:200]}): use models:/NAME@ALIAS, models:/NAME/VERSION, "
            "models:/<model id> or runs:/<run id>/model"
        ) from None
    return uri


def promote(c: mlflow.MlflowClient, name: str, metric: str, alias: str = "champion",
            mode: str = "max") -> dict[str, Any]:
    """Point `alias` at the version whose source run has the best `metric`."""
    _registered(c, name)
    versions = filters.model_versions(c, name)
    scored, seen = [], set()
    for v in versions:
        metrics = _metrics(c, v.run_id)
        seen.update(metrics)
        if metric in metrics:
            scored.append((metrics[metric], int(v.version)))
    if not scored:
        hint = ", ".join(sorted(m for m in seen if m.startswith("test_"))) or "none"
        raise UserError(
            f"no version of '{name}' has a run with metric '{metric}': choose one its runs log "
            f"(e.g. {hint})"
        )
    best_value, best_version = (max if mode == "max" else min)(scored, key=lambda s: (s[0], s[1]))
    model = c.get_registered_model(name)
    before = (model.aliases or {}).get(alias)
    c.set_registered_model_alias(name, alias, str(best_version))
    return {"name": name, "alias": alias, "version": best_version, "metric": metric,
            "value": best_value, "previous": before, "candidates": len(scored)}


def versions(c: mlflow.MlflowClient, name: str) -> list[dict[str, Any]]:
    """Each version of a registered model, oldest first: version, run_id, aliases, test metrics."""
    model = _registered(c, name)
    by_version: dict[str, list[str]] = {}
    for alias, v in (model.aliases or {}).items():
        by_version.setdefault(str(v), []).append(alias)
    found = []
    for v in sorted(filters.model_versions(c, name), key=lambda v: int(v.version)):
        metrics = _metrics(c, v.run_id)
        found.append({"version": int(v.version), "run_id": v.run_id,
                      "aliases": by_version.get(str(v.version), []),
                      "metrics": {k: x for k, x in metrics.items() if k.startswith("test_")}})
    return found
