"""Tell people when a run ends (and, if asked, when it starts): KERASFLOW_NOTIFY holds Apprise URLs.

Why: nobody watches a 6-hour run on a shared box. Apprise (the maintained library for this) reaches
ntfy, Slack, Discord, e-mail, a JSON webhook and many more from one URL each, e.g.
`KERASFLOW_NOTIFY="ntfy://my-topic json://127.0.0.1:9000/hook"`. One message per run: `make track` sends
it when its run ends, `make run`'s driver when the container is done (with the last lines of the run's
log for a failure), `make tune` once per search with the best trial. A notifier that fails or hangs
never fails a run nor delays it beyond KERASFLOW_NOTIFY_TIMEOUT seconds (default 5): one line says so.
KERASFLOW_NOTIFY_START=1 also sends one when a run starts.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from kerasflow import urlauth

# Lazy imports: apprise, in `send` only (a run without KERASFLOW_NOTIFY never loads it).

log = logging.getLogger(__name__)

URLS_ENV = "KERASFLOW_NOTIFY"
START_ENV = "KERASFLOW_NOTIFY_START"
TIMEOUT_ENV = "KERASFLOW_NOTIFY_TIMEOUT"
TAIL_LINES = 20
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD", "PGPASSWORD",
              "AWS_SECRET_ACCESS_KEY", "KERASFLOW_STUDY_STORAGE")
URL_WITH_LOGIN = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@]+:[^\s/@]*@[^\s]+", re.IGNORECASE)


def urls() -> list[str]:
    return [u for u in re.split(r"[\s,]+", os.environ.get(URLS_ENV, "")) if u]


def wanted(start: bool = False) -> bool:
    """Whether to send: URLs set (and, for a start, KERASFLOW_NOTIFY_START=1)."""
    return bool(urls()) and (not start or os.environ.get(START_ENV, "") in ("1", "true", "yes"))


def redact(text: str) -> str:
    """A log tail as it may leave the box: passwords of URLs and the values of secret variables hidden."""
    text = URL_WITH_LOGIN.sub(lambda m: urlauth.redact(m[0]), text)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        for secret in {value, *urlauth.split_credentials(value)[2:]} - {"", None}:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
    return text


@dataclass
class Message:
    """What a run's message says; `title` one line, `body` a few."""

    name: str
    status: str
    duration_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    link: str = ""
    tail: str = ""
    what: str = "run"

    @property
    def title(self) -> str:
        return f"kerasflow {self.what} {self.name}: {self.status}"

    @property
    def body(self) -> str:
        hours, rest = divmod(int(self.duration_s), 3600)
        took = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
        lines = [f"{self.what} {self.name} started" if self.status == "STARTED"
                 else f"{self.what} {self.name}: a test message" if self.status == "TEST"
                 else f"{self.what} {self.name} ended {self.status} after {took}"]
        if self.metrics:
            lines.append("final: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.metrics.items())))
        if self.best:
            lines.append("best: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.best.items())))
        if self.link:
            lines.append(self.link)
        if self.tail:
            lines += ["", "last lines of the log:", redact(self.tail)]
        return "\n".join(lines)


def send(message: Message, targets: Iterable[str] | None = None) -> bool:
    """Send to every URL in KERASFLOW_NOTIFY, waiting at most KERASFLOW_NOTIFY_TIMEOUT seconds; False (and
    one warning line) when it failed or did not finish in time. Never raises."""
    targets = list(targets) if targets is not None else urls()
    if not targets:
        return True
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV, "5"))
    except ValueError:
        timeout = 5.0
    result: dict[str, object] = {}

    def deliver() -> None:
        try:
            import apprise

            sender = apprise.Apprise()
            for url in targets:
                if not sender.add(url):
                    result["error"] = f"not an Apprise URL: {urlauth.redact(url)}"
                    return
            result["ok"] = sender.notify(title=message.title, body=redact(message.body))
        except Exception as exc:  # noqa: BLE001 - a notifier must never fail the run
            result["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=deliver, name="kerasflow-notify", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning(f"notify: the notifier did not answer within {timeout:g} s; the run goes on without it "
                    f"({URLS_ENV})")
        return False
    if "error" in result or not result.get("ok"):
        why = result.get("error") or "a notifier refused or failed"
        log.warning(f"notify: the message about {message.name} was not sent ({why}); check {URLS_ENV}")
        return False
    return True


def of_run(run: object, name: str, status: str, *, link: str = "", tail: str = "",  # noqa: PLR0913
           what: str = "run") -> Message:
    """The message of an MLflow run: its duration and final metrics (test_* and val_*)."""
    info, data = run.info, run.data  # type: ignore[attr-defined]
    end = info.end_time or info.start_time
    metrics = {k: v for k, v in data.metrics.items() if k.startswith(("test_", "val_", "best_"))}
    return Message(name=name, status=status, duration_s=max(0, (end - info.start_time) / 1000),
                   metrics=metrics, link=link, tail=tail, what=what)


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The UI link of a run on a server (none for a store folder: `make ui` shows it)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    base = urlauth.split_credentials(tracking_uri)[0].rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def tail_of(path: str, lines: int = TAIL_LINES, limit: int = 1 << 16) -> str:
    """The last lines of a log, reading at most `limit` bytes from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
