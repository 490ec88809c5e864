"""Run folder -> MLflow run: the epochs a run folder holds, sent to its MLflow run, whatever the server does.

The run folder is the record (history.jsonl gets each epoch's metrics and time as it ends); the MLflow
run is filled from it, idempotently: a step the run has is never sent again. During training a
background thread sends each new epoch, so a tracking server that goes away costs no training: before,
every epoch's `log_batch` was synchronous and MLflow's HTTP retries (7 retries, backoff factor 2, 120 s
timeout: about 4 minutes a call) stalled the epoch loop, then ended it in tracebacks. MLflow's own
`synchronous=False` queue drops a batch that exhausts its retries; here nothing is dropped, since what
was not sent is still in history.jsonl and the next sync sends it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kerasflow import ports, urlauth
from kerasflow.errors import UserError, disk_full
from kerasflow.track import orphans
from kerasflow.train import rundir

if TYPE_CHECKING:
    import keras
    import mlflow

log = logging.getLogger(__name__)

# Lazy imports: keras, mlflow, inside the functions that use them (seconds to load).

T = TypeVar("T")

# MLflow's HTTP settings for our own process, unless the user set them: a call to a server that is
# away fails in seconds (connection refused) or ~1 min (a server that accepts and never answers).
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
WAIT_VARIABLE = "KERASFLOW_TRACKING_WAIT"  # seconds the end of a run waits for a server that went away
DEFAULT_WAIT_S = 600
WARN_AFTER_S = 30  # a send in flight this long is reported, even before its retries give up
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch
PROBE_S = 5.0  # seconds /health may take at the end of a run before the server counts as away
AWAY: set[str] = set()  # tracking URIs `while_away` gave up on in this process: not asked again


def bound_calls() -> None:
    """Bound every MLflow HTTP call this process makes (see HTTP_BOUNDS; the user's own values win).
    And MLflow's database store logs each SQL error with its traceback before raising it: the raised
    error is what we handle (a full store: one line) or show whole, so that log is only noise."""
    for name, value in HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the tracking server could not be reached (as opposed to refusing a request)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and type(exc).__module__.startswith(("requests", "urllib3")):
        return type(exc).__name__ != "HTTPError"  # requests' errors are OSErrors; a status is an answer
    text = str(exc)  # MLflow wraps them: "API request to URL failed with exception ..."
    return "failed with exception" in text or "Max retries exceeded" in text


def logged_steps(client: mlflow.MlflowClient, run_id: str) -> dict[str, set[int]]:
    """Every metric of the run -> the steps it has."""
    metrics = client.get_run(run_id).data.metrics
    return {key: {m.step for m in client.get_metric_history(run_id, key)} for key in metrics}


def missing_metrics(run_dir: Path, logged: dict[str, set[int]]) -> list[Any]:
    """The epochs in `run_dir` the run lacks, as MLflow Metrics (step = epoch, the epoch's own time)."""
    from mlflow.entities import Metric

    out = []
    for row in rundir.read_history_rows(run_dir):
        step = int(row["epoch"])
        stamp = int(row.get(rundir.HISTORY_TIME, time.time() * 1000))
        for key, value in row.items():
            if key not in ("epoch", rundir.HISTORY_TIME) and step not in logged.get(key, ()):
                out.append(Metric(key, float(value), stamp, step))
    return out


def send_history(client: mlflow.MlflowClient, run_id: str, run_dir: Path,
                 logged: dict[str, set[int]] | None = None) -> dict[str, set[int]]:
    """Send what the run lacks of the folder's history; returns the steps logged after it."""
    logged = logged_steps(client, run_id) if logged is None else logged
    metrics = missing_metrics(run_dir, logged)
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        batch = metrics[i:i + MAX_METRICS_PER_BATCH]
        client.log_batch(run_id, metrics=batch, synchronous=True)
        for metric in batch:
            logged.setdefault(metric.key, set()).add(metric.step)
    return logged


class EpochSender:
    """A thread that sends each ended epoch to the run in the background (`wake()` after each epoch);
    while the server is away it retries every few seconds and says so once."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str, run_dir: Path, uri: str) -> None:
        self.client, self.run_id, self.run_dir, self.uri = client, run_id, run_dir, uri
        self.logged: dict[str, set[int]] | None = None
        self.in_flight_since: float | None = None
        self.warned = False
        self.away_since: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=loop, name=f"kerasflow-{name}", daemon=True)
                         for name, loop in (("epochs", self._send_loop), ("epochs-watch", self._watch_loop))]

    def start(self) -> EpochSender:
        for thread in self._threads:
            thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5) -> None:
        """Stop sending (the end of the run sends what is left, synchronously). A send stuck in its
        timeout is left to its daemon thread; the final sync skips nothing it did not finish."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=5)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.in_flight_since = time.monotonic()
            try:
                self.logged = send_history(self.client, self.run_id, self.run_dir, self.logged)
            except Exception as exc:  # noqa: BLE001 - any failure: the epochs stay in history.jsonl
                self.away_since = self.away_since or time.monotonic()
                self._warn(exc)
                self._wake.set()  # try again after the 5 s wait below
                self._stop.wait(5)
            else:
                if self.away_since is not None:
                    log.info(f"{self._what()} answers again: the epochs it missed were sent")
                self.away_since = None
                self.warned = False
            finally:
                self.in_flight_since = None

    def _watch_loop(self) -> None:
        while not self._stop.wait(2):
            since = self.in_flight_since
            if since is not None and time.monotonic() - since > WARN_AFTER_S:
                self._warn(TimeoutError(f"no answer for {WARN_AFTER_S} s"))

    def _warn(self, exc: BaseException) -> None:
        if self.warned:
            return
        self.warned = True
        full = disk_full(exc)
        what = ("unreachable" if unreachable(exc) else f"full ({full})" if full
                else f"failing ({str(exc).strip().splitlines()[-1][:200]})")
        log.warning(f"{self._what()} is {what}: training goes on; its epochs are kept in "
                    f"{self.run_dir / rundir.HISTORY_LOG} and sent when it is back")

    def _what(self) -> str:
        kind = "tracking server" if self.uri.startswith(("http://", "https://")) else "MLflow store"
        return f"the {kind} at {self._shown()}"

    def _shown(self) -> str:
        return urlauth.redact(self.uri)


class Heartbeat:
    """Renews the run's heartbeat tag every `orphans.HEARTBEAT_EVERY` s while training and its end run
    (a context manager): what proves a run alive to a process that cannot see its folder (a container's
    mount namespace). A failed renewal is skipped: the grace is ten heartbeats long."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kerasflow-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(1)  # a renewal stuck on a server that is away is left to its daemon thread

    def _loop(self) -> None:
        while not self._stop.wait(orphans.HEARTBEAT_EVERY):
            [(key, value)] = orphans.heartbeat().items()
            try:
                self.client.set_tag(self.run_id, key, value)
            except Exception:  # noqa: BLE001, S112 - the store is away or full: the next beat tries again
                continue


def epoch_callback(sender: EpochSender) -> keras.callbacks.Callback:
    """The Keras side of EpochSender: wakes it when an epoch's row is in history.jsonl."""
    import keras

    class SendEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            sender.wake()

    return SendEpochs()


def wait_s() -> float:
    raw = os.environ.get(WAIT_VARIABLE, str(DEFAULT_WAIT_S))
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{WAIT_VARIABLE}={raw!r} is not a number of seconds: set it to e.g. 600") from None


def give_up(uri: str) -> None:
    """The wait the user set is spent: what is left to say to the server (the run's end, here and in
    MLflow's own exit handler; a notification's details) fails in a second instead of a minute each.
    MLflow reads its HTTP settings at each request."""
    AWAY.add(uri)
    os.environ.update({"MLFLOW_HTTP_REQUEST_TIMEOUT": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})


def gave_up(uri: str) -> bool:
    """`while_away` gave up on this server in this process (the run's end and its message then skip
    it: each call would cost MLflow's own bound, a minute, past the wait the user set)."""
    return urlauth.split_credentials(uri)[0] in AWAY


def while_away(step: Callable[[], T], uri: str, *, on_give_up: Callable[[], str]) -> T:
    """Run `step` (idempotent); when the server at `uri` is unreachable, wait for it (up to
    KERASFLOW_TRACKING_WAIT seconds) and run it again. A server that stays away is one line, with
    `on_give_up()` saying what is kept and how to log it later."""
    deadline = time.monotonic() + wait_s()
    warned = False
    remote = uri.startswith(("http://", "https://"))
    clean = urlauth.split_credentials(uri)[0] if remote else ""
    while True:
        try:
            # a server that accepts and never answers would hold each of step's calls for MLflow's own
            # bound (about a minute each: 130 s with a wait of 15); /health says so in seconds
            if remote and not ports.answers(clean, timeout=PROBE_S):
                raise TimeoutError(f"no answer to /health within {PROBE_S:.0f} s")
            return step()
        except Exception as exc:
            if not unreachable(exc) or not remote:
                raise
            if not warned:
                log.warning(f"the tracking server at {urlauth.redact(uri)} is unreachable at the end of the "
                            f"run: waiting up to {wait_s():.0f} s for it ({WAIT_VARIABLE})")
                warned = True
            left = deadline - time.monotonic()
            if left <= 0 or not ports.wait_answers(clean, left):
                give_up(clean)
                raise UserError(f"the tracking server at {urlauth.redact(uri)} did not come back within "
                                f"{wait_s():.0f} s: {on_give_up()}") from None
