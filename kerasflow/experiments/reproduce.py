"""Re-create a tracked run from what MLflow recorded, and say whether the result is the same.

    make reproduce RUN=<run id> [ARGS='--strict' | '--check' | '--tolerance 1e-4']

1. Read the run's records: config.yaml, data digest, code commit and diff, installed packages, GPUs,
   weights digest. A run without them (made before this feature, or by another tool) is refused.
2. Check before training, one row each: code (the commit exists; the logged diff is complete), packages
   (installed here vs then), data (the digest recomputed from the source now), hardware (CPU/GPU names).
   `--strict` refuses to train on any mismatch; `--check` stops after the table.
   A logged diff is code that came with the store (a pulled store, a team server anyone writes to):
   it is applied and run only with `--apply-diff`; without it the table names the files it touches and
   its size, and nothing is trained.
3. Train exactly that config in a temporary git worktree at the logged commit with the logged diff
   applied (so the code is the run's, whatever this checkout holds), into a new run of the same
   experiment tagged kerasflow.reproduces=<id>, with a fresh run_name and run folder.
4. Compare: weights digest (bitwise on the same CPU with determinism on), every metric's per-epoch
   curve and the test metrics (max absolute difference); the verdict (identical / within tolerance /
   different) is printed and logged on the new run with a figure of both runs' curves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kerasflow import config as config_mod
from kerasflow.errors import UserError
from kerasflow.track import store, tracking
from kerasflow.train import data, envinfo, plots

log = logging.getLogger(__name__)

# Lazy imports: mlflow, inside the functions that use them (seconds to load;
# `--help`, the light host env and the other commands never pay for them).

if TYPE_CHECKING:
    import mlflow

REPRODUCES_TAG = "kerasflow.reproduces"
VERDICT_TAG = "kerasflow.reproduce_verdict"
ROOT = envinfo.ROOT


@dataclass(frozen=True)
class Record:
    """What a run recorded that a reproduction needs."""

    run_id: str
    experiment: str
    config_path: Path
    commit: str
    diff: str
    diff_incomplete: str  # '' when the logged diff holds every change
    installed: dict[str, str]
    data_digest: str
    gpus: str
    weights_digest: str


@dataclass(frozen=True)
class Check:
    what: str
    same: bool
    detail: str
    meaning: str = ""


def _artifact(run_id: str, path: str, into: Path) -> Path | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(into)))
    except (MlflowException, OSError):
        return None


def read_record(client: mlflow.MlflowClient, run_id: str, into: Path) -> Record:
    """The run's records, or one line naming what is missing."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no run {run_id!r} in this store: check the id (`make runs` lists runs) and "
                        "STORE / MLFLOW_TRACKING_URI") from None
    tags = run.data.tags
    config_path = _artifact(run_id, "config.yaml", into)  # parsed bounded: config.read_yaml
    installed = _artifact(run_id, f"{envinfo.ENV_DIR}/{envinfo.INSTALLED_FILE}", into)
    diff = _artifact(run_id, f"{envinfo.ENV_DIR}/{envinfo.DIFF_FILE}", into)
    wanted = {"config.yaml": config_path, "environment/installed.txt": installed,
              "tag git_commit": tags.get("git_commit"), "tag data_digest": tags.get("data_digest"),
              f"tag {tracking.WEIGHTS_TAG}": tags.get(tracking.WEIGHTS_TAG)}
    missing = [name for name, value in wanted.items() if not value]
    if missing or config_path is None or installed is None:
        raise UserError(f"run {run_id} lacks kerasflow's records ({', '.join(missing)}): it was made before "
                        "`make reproduce` existed or by another tool, so it cannot be re-created from MLflow")
    if tags.get("git_dirty") == "true" and diff is None:
        raise UserError(f"run {run_id} ran on uncommitted changes but logged no diff: its code cannot be "
                        "re-created")
    incomplete = [f"{k} {tags[k]}" for k in ("kerasflow.diff_skipped", "kerasflow.diff_capped")
                  if tags.get(k) not in (None, "none", "no")]
    if diff is not None and diff.stat().st_size > envinfo.MAX_DIFF_BYTES:  # read bounded: from a store
        raise UserError(f"run {run_id}'s logged diff is {diff.stat().st_size} bytes, over the "
                        f"{envinfo.MAX_DIFF_BYTES} a run logs: kerasflow did not log it, so it is not used")
    return Record(
        run_id=run_id, experiment=client.get_experiment(run.info.experiment_id).name,
        config_path=config_path, commit=tags["git_commit"], diff=diff.read_text() if diff else "",
        diff_incomplete="; ".join(incomplete), installed=_pins(installed.read_text()),
        data_digest=tags["data_digest"], gpus=tags.get("gpus", "none"),
        weights_digest=tags[tracking.WEIGHTS_TAG],
    )


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower().replace("_", "-")] = version
    return pins


def _git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def diff_summary(diff: str) -> str:
    """What a logged diff would change, to read before consenting: its size and the files it touches."""
    files = list(dict.fromkeys(line.split(" b/", 1)[-1] for line in diff.splitlines()
                               if line.startswith("diff --git ")))
    shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
    return f"{len(diff.encode())} bytes touching {len(files)} file(s): {shown or 'none named'}"


def _code_check(record: Record, apply_diff: bool) -> Check:
    if _git("cat-file", "-e", f"{record.commit}^{{commit}}").returncode != 0:
        return Check("code", False, f"commit {record.commit[:12]} is not in this checkout",
                     "the run's code cannot be rebuilt: `git fetch` the branch it was made on")
    if record.diff and not apply_diff:
        return Check("code", False, f"commit {record.commit[:12]} + a logged diff, NOT applied "
                     f"({diff_summary(record.diff)})", "it came with the store: read it, then --apply-diff")
    if record.diff_incomplete:
        return Check("code", False, f"commit {record.commit[:12]}, but the logged diff is incomplete "
                     f"({record.diff_incomplete})", "changes left out of the diff are not in the copy")
    extra = f" + logged diff ({len(record.diff.encode())} bytes)" if record.diff else " (clean tree)"
    return Check("code", True, f"commit {record.commit[:12]}{extra}, trained in a temporary worktree")


def _packages_check(record: Record) -> Check:
    now = _pins(envinfo.installed())
    changed = sorted(k for k in record.installed.keys() | now.keys() if record.installed.get(k) != now.get(k))
    if not changed:
        return Check("packages", True, f"{len(now)} packages, same versions")
    shown = ", ".join(f"{k} {record.installed.get(k, '-')} -> {now.get(k, '-')}" for k in changed[:5])
    more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
    return Check("packages", False, shown + more,
                 "other versions may change numerics: bitwise equality is not expected")


def _data_check(record: Record, cfg: config_mod.Config) -> Check:

    digest = data.load_examples(cfg).digest
    if digest == record.data_digest:
        return Check("data", True, f"digest {digest}")
    return Check("data", False, f"digest {digest}, the run had {record.data_digest}",
                 "the data changed since the run: results will differ")


def _hardware_check(record: Record) -> Check:
    gpus = "; ".join(g["name"] for g in envinfo.gpus()) or "none"
    same = gpus == record.gpus
    return Check("hardware", same, f"GPUs now: {gpus}; the run: {record.gpus}",
                 "" if same else "other hardware: kernels differ, expect small differences")


def checks(record: Record, cfg: config_mod.Config, apply_diff: bool = False) -> list[Check]:
    """The four comparisons, run before any training."""
    return [_code_check(record, apply_diff), _packages_check(record), _data_check(record, cfg),
            _hardware_check(record)]


def table(rows: list[Check]) -> str:
    width = max(len(r.what) for r in rows)
    return "\n".join(f"  {r.what:<{width}}  {'same' if r.same else 'DIFFERS':<7}  {r.detail}"
                     + (f" -- {r.meaning}" if r.meaning else "") for r in rows)


def train_copy(record: Record, *, store_dir: str, run_name: str, output_dir: Path) -> None:
    """train_mlflow.py of the run's commit (+ diff), in a temporary worktree, on the run's config."""
    with tempfile.TemporaryDirectory(prefix="kerasflow-reproduce-") as tmp:
        tree = Path(tmp) / "code"
        added = _git("worktree", "add", "--detach", str(tree), record.commit)
        if added.returncode != 0:
            raise UserError(f"cannot check out commit {record.commit[:12]}: {added.stderr.strip()[:200]}")
        try:
            if record.diff:
                patch = Path(tmp) / "run.patch"
                patch.write_text(record.diff)
                applied = _git("apply", "--whitespace=nowarn", str(patch), cwd=tree)
                if applied.returncode != 0:
                    raise UserError(f"the run's logged diff does not apply to {record.commit[:12]}: "
                                    f"{applied.stderr.strip()[:200]}")
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
            # the worktree's kerasflow comes first on sys.path (the script's folder); data paths in the
            # config are relative to this checkout, so it runs here
            cmd = [sys.executable, str(tree / "train_mlflow.py"), "--config", str(record.config_path),
                   "--store", store_dir, "--experiment", record.experiment,
                   "--set", f"run_name={run_name}", "--set", f"output_dir={output_dir}"]
            log.info(f"reproduce: training {run_name} from commit {record.commit[:12]}")
            if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
                raise UserError("the reproduction's training failed: see its output above")
        finally:
            _git("worktree", "remove", "--force", str(tree))


@dataclass(frozen=True)
class Comparison:
    weights_same: bool
    max_diff: float
    worst: str
    verdict: str
    tolerance: float = 0.0
    new_run_id: str = ""

    def line(self, run_id: str) -> str:
        """The verdict as the command prints it."""
        weights = "same weights digest" if self.weights_same else "other weights"
        worst = f" (largest: {self.worst})" if self.worst else ""
        return (f"verdict: {self.verdict}: {weights}; max |metric difference| {self.max_diff:.3g}{worst}, "
                f"tolerance {self.tolerance:g}; new run {self.new_run_id} tagged {REPRODUCES_TAG}={run_id}")


def compare(client: mlflow.MlflowClient, old: str, new: str, tolerance: float) -> Comparison:
    """Weights digest, then every metric's history (per-epoch curves and test metrics) step by step."""
    a, b = client.get_run(old), client.get_run(new)
    weights_same = a.data.tags.get(tracking.WEIGHTS_TAG) == b.data.tags.get(tracking.WEIGHTS_TAG)
    worst, max_diff = "", 0.0
    for key in sorted(a.data.metrics):
        if key.startswith("system/"):
            continue
        old_h = {m.step: m.value for m in client.get_metric_history(old, key)}
        new_h = {m.step: m.value for m in client.get_metric_history(new, key)}
        diff = (max((abs(old_h[s] - new_h[s]) for s in old_h), default=0.0)
                if old_h.keys() == new_h.keys() else math.inf)
        if diff > max_diff or (math.isnan(diff) and not worst):
            worst, max_diff = key, diff
    if weights_same and max_diff == 0:
        verdict = "identical"
    elif max_diff <= tolerance:
        verdict = "within tolerance"
    else:
        verdict = "different"
    return Comparison(weights_same, max_diff, worst, verdict)


def _figure(client: mlflow.MlflowClient, old: str, new: str, path: Path) -> Path:

    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("val_loss", "val_accuracy"), strict=True):
        runs = [(old, f"original {old[:8]}"), (new, f"reproduction {new[:8]}")]
        plots.metric_histories(ax, client, runs, metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reproduce(run_id: str, *, store_dir: str, strict: bool = False, check_only: bool = False,  # noqa: PLR0913
              tolerance: float = 1e-6, output_dir: str = "outputs/reproduce",
              apply_diff: bool = False) -> Comparison | None:
    """The whole loop; returns None when it stopped after the checks (`check_only`)."""
    import mlflow


    launched = os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run -e reproduce`: it gets the verdict too
    with store.open_store(store_dir, create=False), tempfile.TemporaryDirectory() as tmp:
        client = mlflow.MlflowClient()
        record = read_record(client, run_id, Path(tmp))
        cfg = config_mod.load(record.config_path)
        rows = checks(record, cfg, apply_diff)
        log.info(f"reproduce {run_id} (experiment '{record.experiment}'):\n{table(rows)}")
        if not rows[0].same and "not in this checkout" in rows[0].detail:
            raise UserError(f"run {run_id}: {rows[0].detail}: {rows[0].meaning}")
        differs = [r for r in rows if not r.same]
        if strict and differs:
            raise UserError(f"--strict: {differs[0].what} differs ({differs[0].detail}); nothing was trained")
        if check_only:
            return None
        if record.diff and not apply_diff:
            raise UserError(
                f"run {run_id} ran commit {record.commit[:12]} plus uncommitted changes, logged as a diff "
                f"({diff_summary(record.diff)}); it came with the store, so it is code from another "
                f"machine: read it (mlflow artifacts download -r {run_id} -a environment/git_diff.patch), "
                "then rerun with --apply-diff. Nothing was run: without the diff the run's code cannot "
                "be reproduced")
        name = f"reproduce-{run_id[:8]}-{time.strftime('%Y%m%d-%H%M%S')}"
        train_copy(record, store_dir=str(Path(store_dir).absolute()), run_name=name,
                   output_dir=Path(output_dir).absolute())
        exp = client.get_experiment_by_name(record.experiment)
        [new] = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")
        new_id = new.info.run_id
        result = compare(client, run_id, new_id, tolerance)
        client.set_tag(new_id, REPRODUCES_TAG, run_id)
        client.set_tag(new_id, VERDICT_TAG, result.verdict)
        client.set_tag(new_id, "kerasflow.reproduce_checks",
                       "; ".join(f"{r.what}: {'same' if r.same else 'differs'}" for r in rows))
        for target in filter(None, (new_id, launched)):
            client.log_metric(target, "reproduce_max_abs_diff", min(result.max_diff, 1e300))
        if launched:
            client.set_tags(launched, {REPRODUCES_TAG: run_id, VERDICT_TAG: result.verdict,
                                       "kerasflow.reproduction": new_id})
        client.log_artifact(new_id, str(_figure(client, run_id, new_id, Path(tmp) / "reproduce_curves.png")))
    return dataclasses.replace(result, tolerance=tolerance, new_run_id=new_id)

