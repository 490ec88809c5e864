"""Tell people when a run ends (and, if asked, when it starts): KERASFLOW_NOTIFY holds Apprise URLs.

Why: nobody watches a 6-hour run on a shared box. Apprise (the maintained library for this) reaches
ntfy, Slack, Discord, e-mail, a JSON webhook and many more from one URL each, e.g.
`KERASFLOW_NOTIFY="ntfy://my-topic json://127.0.0.1:9000/hook"`. One message per run: `make track` sends
it when its run ends, `make run`'s launcher when the container is done (with the last lines of the run's
log for a failure), `make tune` once per search with the best trial. A notifier that fails or hangs
never fails a run nor delays it beyond KERASFLOW_NOTIFY_TIMEOUT seconds (default 5): one line says so.
KERASFLOW_NOTIFY_START=1 also sends one when a run starts.

The send runs in a child process of its own session, killed when the timeout passes: Apprise sends through
a thread pool that Python joins at exit, so a webhook that answers one byte every few seconds kept a
finished run's process (and, under `make run`, its GPU slot) alive long after `send` had given up on it.
What leaves the box is redacted first: the password of every URL with a login (several in one word, or a
line cut mid-URL), Basic/Bearer credentials, and the value of every variable whose name says token, key,
secret or password.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from kerasflow import urlauth
from kerasflow.errors import UserError

# Lazy imports: apprise, in `send` only (a run without KERASFLOW_NOTIFY never loads it); mlflow, in
# `run_ended` only (the run's metrics for the message).

log = logging.getLogger(__name__)

URLS_ENV = "KERASFLOW_NOTIFY"
START_ENV = "KERASFLOW_NOTIFY_START"
TIMEOUT_ENV = "KERASFLOW_NOTIFY_TIMEOUT"
TAIL_LINES = 20
DEFAULT_TIMEOUT, MAX_TIMEOUT = 5.0, 600.0
# variables whose value is a secret by their name (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY,
# PGPASSWORD, GITHUB_TOKEN, ...), and ours that carry a URL with a password or a notifier's tokens
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASS(WD)?($|_)|(^|_)(API_?)?KEY($|_)|APIKEY|CREDENTIAL|AUTH",
                         re.IGNORECASE)
SECRET_ENV = ("KERASFLOW_STUDY_STORAGE", URLS_ENV, "DATABASE_URL", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
NOT_SECRET = ("PWD", "OLDPWD", "XAUTHORITY", "SSH_AUTH_SOCK")
# the password of a URL's login, with or without its scheme (a tail may start mid-URL): user:PASSWORD@
URL_LOGIN = re.compile(r"(?P<who>(?:[a-z][a-z0-9+.-]*://)?[^\s/@:,;'\"<>=]*):(?P<pw>[^\s/@]*)@(?=[^\s@]*)",
                       re.IGNORECASE)
# Authorization headers, and `token=...` / `password: ...` as tools print them
HEADER_AUTH = re.compile(r"\b(?P<kind>basic|bearer)(?P<sep>\s+)(?P<cred>[A-Za-z0-9+/._~-]{8,}=*)"
                         r"|\b(?P<kind2>token|api[_-]?key|secret|password|passwd)(?P<sep2>\s*[=:]\s*)(?P<cred2>[^\s,;]+)",
                         re.IGNORECASE)


def urls() -> list[str]:
    return [u for u in re.split(r"[\s,]+", os.environ.get(URLS_ENV, "")) if u]


def wanted(start: bool = False) -> bool:
    """Whether to send: URLs set (and, for a start, KERASFLOW_NOTIFY_START=1)."""
    return bool(urls()) and (not start or os.environ.get(START_ENV, "") in ("1", "true", "yes"))


def _secrets() -> set[str]:
    """Every value of this environment that must not leave the box, and the forms it takes in a log
    (a URL's password alone, %-encoded or not; a login as Basic auth's base64)."""
    found: set[str] = set()
    for name, value in os.environ.items():
        if not value or name in NOT_SECRET or not (SECRET_NAME.search(name) or name in SECRET_ENV):
            continue
        found.add(value)
        for word in re.split(r"[\s,]+", value):
            found.update(p for p in urlauth.split_credentials(word)[2:] if p)
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        found.add(base64.b64encode(f"{user}:{password}".encode()).decode().rstrip("="))
    return {s for s in found if s.strip()}


def redact(text: str) -> str:
    """A log tail as it may leave the box: every URL's password, Basic/Bearer credentials, and the
    values of secret variables hidden. A long secret is hidden wherever it stands; a short one (under 6
    characters) where it stands as a word of its own, so that "pw" does not eat every "pwd"."""
    text = URL_LOGIN.sub(lambda m: f"{m['who']}:***@", text)
    text = HEADER_AUTH.sub(_hide_credential, text)
    for secret in sorted(_secrets(), key=len, reverse=True):
        if len(secret) >= 6:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def _hide_credential(m: re.Match[str]) -> str:
    """`Basic <base64 of user:password>` (not the word "basic" before any long word), `Bearer <token>`,
    `token=<value>`: the credential becomes ***."""
    if m["kind"] and m["kind"].lower() == "basic":
        try:
            login = base64.b64decode(m["cred"] + "=" * (-len(m["cred"]) % 4), validate=True)
        except ValueError:
            return m[0]
        if b":" not in login:
            return m[0]
    return f"{m['kind'] or m['kind2']}{m['sep'] or m['sep2']}***"


def timeout() -> float:
    """KERASFLOW_NOTIFY_TIMEOUT in seconds (default 5); a value that is not a number from 0 to 600 (inf,
    nan, -1, "5s") is one line with the fix. Runs check it before they start (`check`)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT:
        raise UserError(f"{TIMEOUT_ENV}={raw} is not a number of seconds above 0 and at most "
                        f"{MAX_TIMEOUT:g}: set e.g. {TIMEOUT_ENV}=5, or unset it")
    return value


def check() -> None:
    """Before a run starts: a notifier setting that would fail at its end fails now, in one line."""
    if urls():
        timeout()


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
    """Send to every URL in KERASFLOW_NOTIFY from a child process that is killed (with anything it
    started) when KERASFLOW_NOTIFY_TIMEOUT passes; False (and one warning line) when it failed or did not
    finish in time. Never raises, and never outlives the timeout by more than the kill."""
    targets = list(targets) if targets is not None else urls()
    if not targets:
        return True
    try:
        wait = timeout()
    except UserError as exc:
        log.warning(f"notify: {exc} (this message waits {DEFAULT_TIMEOUT:g} s)")
        wait = DEFAULT_TIMEOUT
    job = json.dumps({"targets": targets, "title": message.title, "body": redact(message.body)})
    try:
        child = subprocess.Popen([sys.executable, "-c", "from kerasflow.notify import deliver; deliver()"],
                                 stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                                 text=True)
    except OSError as exc:
        log.warning(f"notify: the message about {message.name} was not sent ({exc}); check {URLS_ENV}")
        return False
    try:
        out, _ = child.communicate(job, timeout=wait)
    except subprocess.TimeoutExpired:
        _kill(child)
        log.warning(f"notify: the notifier did not answer within {wait:g} s; the run goes on without it "
                    f"({URLS_ENV})")
        return False
    result = _last_json(out)
    if not result.get("ok"):
        why = result.get("error") or "a notifier refused or failed"
        log.warning(f"notify: the message about {message.name} was not sent ({why}); check {URLS_ENV}")
        return False
    return True


def _kill(child: subprocess.Popen[str]) -> None:
    """The child and everything in its session, at once (SIGKILL: a thread pool ignores nothing else)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()
    child.communicate()


def _last_json(out: str) -> dict[str, object]:
    for line in reversed(out.splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict):
            return found
    return {}


def deliver() -> None:
    """The child's side of `send`: the job on stdin, the outcome as one JSON line on stdout."""
    result: dict[str, object] = {}
    try:
        job = json.loads(sys.stdin.read())
        import apprise

        logging.getLogger("apprise").setLevel(logging.CRITICAL)
        sender = apprise.Apprise()
        for url in job["targets"]:
            if not sender.add(url):
                result["error"] = f"not an Apprise URL: {urlauth.redact(url)}"
                break
        else:
            result["ok"] = bool(sender.notify(title=job["title"], body=job["body"]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which warns in one line
        result["error"] = f"{type(exc).__name__}: {exc}"
    os.write(1, (json.dumps(result) + "\n").encode())  # to the parent's pipe, not a user's terminal
    os._exit(0)  # no wait for Apprise's threads: the parent has the answer


def of_run(run: object, name: str, status: str, *, link: str = "", tail: str = "",  # noqa: PLR0913
           what: str = "run") -> Message:
    """The message of an MLflow run: its duration and final metrics (test_* and val_*)."""
    info, data = run.info, run.data  # type: ignore[attr-defined]
    end = info.end_time or info.start_time
    metrics = {k: v for k, v in data.metrics.items() if k.startswith(("test_", "val_", "best_"))}
    return Message(name=name, status=status, duration_s=max(0, (end - info.start_time) / 1000),
                   metrics=metrics, link=link, tail=tail, what=what)


def run_ended(name: str, exit_code: int, log_file: str, uri: str, run_id: str) -> bool:
    """The one message at a launched run's end: the MLflow run's status, duration, metrics and link when
    its server answers (seconds, no retries), what the launcher knows when it does not; a run that did
    not end FINISHED gets the log's last lines, redacted. Sent on the host: the container may never have
    started (an image that failed to build). Never raises."""
    status = "FINISHED" if exit_code == 0 else f"FAILED (exit {exit_code})"
    message = Message(name=name, status=status)
    if run_id and uri:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            import mlflow

            run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
            status = run.info.status if run.info.status not in ("RUNNING", "SCHEDULED") else status
            message = of_run(run, name, status, link=run_link(uri, run.info.experiment_id, run_id))
        except Exception:  # noqa: BLE001 - the server may be what failed: send what we know
            log.warning("notify: the MLflow run could not be read; the message says what the launcher knows")
    if message.status != "FINISHED":
        message.tail = tail_of(log_file)
    return send(message)


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The UI link of a run on a server (none for a store folder: `make ui` shows it)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    base = urlauth.split_credentials(tracking_uri)[0].rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def tail_of(path: str, lines: int = TAIL_LINES, limit: int = 1 << 16) -> str:
    """The last whole lines of a log, reading at most `limit` bytes from its end (a line cut by that
    limit is dropped: it could start inside a URL's password, where redaction cannot see the URL)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    kept = text.splitlines()
    if size > limit:
        kept = kept[1:]
    return "\n".join(kept[-lines:])

