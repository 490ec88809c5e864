"""Bad input found by a generator, not by hand: hypothesis walks the command table and, for every flag and
argument of each command, feeds values from each class of bad input; every example must keep the
contract of a user's failure.

The contract, checked on each example (the command's own code, in process, through `cli.main.main`, the
entry `kerasflow` and `make` run):
- exit 0 or 2; never a traceback, never another exception;
- exit 2 is exactly one `error:` line on stderr (argparse's own `PROG: error:` counts);
- nothing written outside the places a command may write: the sandbox's store, outputs/, logs/, the
  queue folder and the caches (`ALLOWED`), or a path given on its command line;
- no MLflow run left RUNNING in the store;
- done within `LIMIT_S` seconds.

Commands left out start servers or containers, train, or download (each is covered by hand where named
in `BY_HAND`). The number of examples: `KERASFLOW_GENERATED_EXAMPLES` (make test: 300, a fixed seed;
make test-all: 2000).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from helpers.parsers import parser_of  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kerasflow.cli import main as entry  # noqa: E402

EXAMPLES = int(os.environ.get("KERASFLOW_GENERATED_EXAMPLES", "300"))
SEED = int(os.environ.get("KERASFLOW_GENERATED_SEED", "2026"))  # fixed: CI sees the same examples
LIMIT_S = 60

# started by other commands or a server/container/trainer/downloader: where their bad input is tested
BY_HAND = {
    "train": "tests/test_cli.py (bad config values, data folders, output dirs)",
    "track": "tests/test_tracking.py (unreachable server, unwritable store, newer store)",
    "data": "tests/test_data.py (internet: TFDS download)", "weights": "tests/test_data.py (internet)",
    "server": "tests/test_server.py", "serve": "tests/test_tracking.py::test_serve_refuses_unknown_alias...",
    "ui": "tests/test_server.py", "run": "tests/test_launch.py, tests/test_engine_make_run.py",
    "image": "tests/test_engine_image.py", "cluster-image": "tests/test_engine_slurm.py",
    "run-script": "tests/test_engine_image.py",
    "env": "tests/test_env.py", "cv": "tests/test_experiments.py", "tune": "tests/test_experiments.py",
    "tune-worker": "tests/test_experiments.py", "reproduce": "tests/test_reproduce.py",
    "queue-wait": "tests/test_queue.py", "analyze": "tests/test_experiments.py",
    "splits": "tests/test_experiments.py (loads the dataset)",
}
# flags that wait by design (a refresh loop until Ctrl-C): not fed
WAITS = {("queue", "--watch")}
COMMANDS = sorted(n for n in [*entry.COMMANDS, *entry.INTERNAL] if n not in BY_HAND)
ALLOWED = ("store", "outputs", "logs", "queue", "cache", "home", "tmp")  # under the sandbox's cwd
TABLES = {"doctor"}  # exit 0/1/2 is its table's verdict (all pass / warnings / a failure), on stdout
VERDICTS = {("relocate", "--check")}  # exit 1 is the documented answer "something points nowhere"
READ_ONLY = "readonly-store"  # made immutable (chattr +i) for each example: even root may only read it

OTHER_USERS_STORE = "/proc/kerasflow-store"  # one nobody may write (a read-only store stands in below)
VALUES = {
    "empty": st.just(""),
    "huge": st.sampled_from(["x" * 300, "9" * 400, "1e400", str(2**70), "a/" * 600]),
    "negative": st.sampled_from(["-1", "-999999", "-0", "-1e9"]),
    "nan": st.sampled_from(["nan", "inf", "-inf", "NaN"]),
    "path": st.sampled_from(["../x", "a/../../b", "/", "//", "..", ".", "store/../..", "../../../etc",
                             "/proc/kerasflow-x", "outputs/../../y"]),
    "quote": st.sampled_from(["a'b", 'a"b', "'; touch pwned; '", "$(touch pwned)", "`id`", "a b"]),
    "control": st.sampled_from(["a\x01b", "a\nb", "\t", "\x1b[2J", "a\rb"]),
    "unicode": st.sampled_from(["Ünïcødé", "名前", "🧪", "\u202etxt.exe", "e\u0301"]),
    "uri": st.sampled_from(["htp://127.0.0.1:5000", "http://127.0.0.1:1", "http://u:p@ss:w@rd@127.0.0.1:1",
                            "http://user:p%zz@127.0.0.1:1", "postgresql://u:p@127.0.0.1:1/db",
                            "sqlite:////nonexistent/x.db", "file:///nonexistent", "http://[::1", "://",
                            "models:/", "models:/nope@x", "runs:/../x"]),
    "readonly": st.sampled_from([OTHER_USERS_STORE, READ_ONLY, f"{READ_ONLY}/mlflow.db"]),
    "plain": st.sampled_from(["cells", "champion", "test_accuracy", "1", "0", "demo"]),
}
BAD = st.one_of(*VALUES.values())
# a value a command accepts lets the others reach its code: a good one for about half of the flags
VALUE = st.one_of(BAD, VALUES["plain"], VALUES["plain"])


def _arguments(name: str) -> list[tuple[str, argparse.Action]]:
    """(flag, action) for each option (its first long spelling) and ("", action) for a positional."""
    out = []
    for action in parser_of(name)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = next((s for s in action.option_strings if s.startswith("--")), "")
        if (name, flag) in WAITS:
            continue
        out.append((flag, action))
    return out


ARGUMENTS = {name: _arguments(name) for name in COMMANDS}


@st.composite
def invocations(draw: st.DrawFn) -> tuple[str, list[str], str | None]:
    """(command, argv after it, MLFLOW_TRACKING_URI or None)."""
    name = draw(st.sampled_from(COMMANDS))
    argv: list[str] = []
    for flag, action in ARGUMENTS[name]:
        if not flag:  # a positional: always given (a missing one is argparse's own line)
            count = 1 if action.nargs in (None, "?") else draw(st.integers(1, 2))
            argv += [draw(VALUE) for _ in range(count)] if draw(st.integers(0, 4)) else []
            continue
        if not draw(st.booleans()):
            continue
        if action.nargs == 0:
            argv.append(flag)
        else:
            argv += [flag, draw(VALUE)]
    uri = draw(st.one_of(st.none(), st.none(), VALUES["uri"]))
    return name, argv, uri


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_template(tmp_path_factory.mktemp("generated") / "checkout")


def make_template(base: Path) -> Path:
    """A checkout as a user has it: config, a store with a finished run and a registered model with an
    alias, a run folder, a queue folder; copied for each example."""
    from helpers import ROOT
    from test_push import _client, _experiment, _log_model, _run

    base.mkdir()
    shutil.copy(ROOT / "config.yaml", base / "config.yaml")
    shutil.copytree(ROOT / "presets", base / "presets")
    client, uri = _client(base / "store")
    exp = _experiment(client, uri, "kerasflow")
    _run(client, exp, "finished", base)
    _log_model(uri, exp, "trained", 2.0, "cells", "champion")
    (base / "outputs" / "half").mkdir(parents=True)
    (base / "outputs" / "half" / "config.yaml").write_text("epochs: 1\n")
    (base / "readonly-store").mkdir()
    shutil.copy(base / "store" / "mlflow.db", base / "readonly-store" / "mlflow.db")
    for name in ALLOWED:
        (base / name).mkdir(exist_ok=True)
    return base


def _resolved(cwd: Path, value: str) -> Path:
    try:
        return Path(cwd, value).resolve()
    except (OSError, ValueError):
        return Path(cwd, value)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _tree(folder: Path) -> dict[str, float]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for found in [*dirs, *files]:
            path = Path(root) / found
            with contextlib.suppress(OSError):
                out[str(path)] = path.lstat().st_mtime_ns
    return out


def _running(db: Path) -> int:
    if not db.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        try:
            return int(con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0])
        except sqlite3.Error:
            return 0


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    before = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def check_contract(template: Path, name: str, argv: list[str], uri: str | None) -> None:
    """One example: a fresh copy of the checkout, the command in process, the contract checked."""
    work = Path(tempfile.mkdtemp(prefix="kf-gen-"))
    try:
        zone = work / "a" / "b"  # paths with up to two `..` stay inside `work`
        zone.mkdir(parents=True)
        cwd = zone / "checkout"
        shutil.copytree(template, cwd, symlinks=True)
        _immutable(cwd / READ_ONLY, on=True)
        before = _tree(work)
        saved_env, saved_cwd, saved_tmp = dict(os.environ), os.getcwd(), tempfile.tempdir
        out, err = io.StringIO(), io.StringIO()
        os.environ.update({"HOME": str(cwd / "home"), "KERASFLOW_QUEUE_DIR": str(cwd / "queue"),
                           "XDG_CACHE_HOME": str(cwd / "cache"), "TMPDIR": str(cwd / "tmp")})
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "DATA",
                    "KERASFLOW_NOTIFY", "PORT", "STORE"):
            os.environ.pop(key, None)
        if uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = uri
        tempfile.tempdir = str(cwd / "tmp")
        os.chdir(cwd)
        code: object = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _alarm(LIMIT_S):
                try:
                    code = entry.main([name, *argv])
                except SystemExit as exc:  # argparse's own error, or --help
                    code = exc.code
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            tempfile.tempdir = saved_tmp
        shown = f"kerasflow {name} {argv!r} (MLFLOW_TRACKING_URI={uri!r})"
        with contextlib.suppress(Exception):  # (outside a hypothesis test: nothing to record)
            hypothesis.event(f"exit {code}")
        stderr = err.getvalue()
        verdict = name in TABLES or any(n == name and flag in argv for n, flag in VERDICTS)
        codes = (0, 1, 2) if verdict else (0, 2, None)
        assert code in codes, f"{shown}: exit {code!r}\n{stderr[-2000:]}"
        assert "Traceback" not in stderr, f"{shown}: a traceback\n{stderr[-3000:]}"
        if code == 2 and not (name in TABLES and "FAIL" in out.getvalue()):
            errors = [line for line in stderr.splitlines() if "error:" in line]
            assert len(errors) == 1, f"{shown}: {len(errors)} error lines\n{stderr[-2000:]}"
        given = [_resolved(cwd, v) for v in argv if v]
        allowed = [*(cwd / a for a in ALLOWED), *given]
        # a path given, one it names with a suffix (--plot P writes P.png), or a whole-store operation's
        # lock beside a store (.NAME.kerasflow-lock)
        stores = [*given, *(g.parent for g in given if g.suffix == ".db"), cwd / "store"]
        named = [str(g) for g in given] + [str(g.parent / f".{g.name}.kerasflow-lock") for g in stores]
        named += [str(cwd / "store.backup-")]  # pull --force keeps the old store beside the new one
        for path in set(_tree(work)) - set(before):
            real = Path(path)
            assert any(real == a or a in real.parents for a in allowed) or path.startswith(tuple(named)), \
                f"{shown}: wrote {path}"
        for db in (cwd / "store" / "mlflow.db", *(g / "mlflow.db" for g in given if _is_dir(g))):
            assert _running(db) == 0, f"{shown}: a run left RUNNING in {db}"
    finally:
        _immutable(work / "a" / "b" / "checkout" / READ_ONLY, on=False)
        shutil.rmtree(work, ignore_errors=True)


def _immutable(folder: Path, *, on: bool) -> None:
    """chattr +i on a folder and its files (root on ext4: a store even root may only read), or off."""
    if folder.exists() and shutil.which("chattr") and os.geteuid() == 0:
        subprocess.run(["chattr", "-R", "+i" if on else "-i", str(folder)], capture_output=True, check=False)


@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=invocations())
def test_every_command_keeps_the_contract_on_generated_bad_input(template, case):
    name, argv, uri = case
    check_contract(template, name, argv, uri)


def test_the_walk_covers_the_command_table():
    """Each command is walked or named with the test that covers it by hand; each walked one has its
    flags found (a parser the walk cannot read would be a command it silently skips)."""
    assert set(COMMANDS) | set(BY_HAND) == {*entry.COMMANDS, *entry.INTERNAL}
    for name in COMMANDS:
        assert ARGUMENTS[name] or name in ("queue", "mlproject"), name


def test_a_store_one_may_only_read_can_be_listed_and_looked_at(template, tmp_path):
    """Before: every command refused a store it could not write ("MLflow store ... is read-only"), also
    those that only look: a pulled store on a read-only mount could not be listed. Now listing,
    versions and pushing from it work; writing to it (promote) is the one line."""
    import subprocess as sp

    from helpers import assert_user_error

    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("chattr +i needs root (CI runs as root)")
    ro = tmp_path / "ro"
    shutil.copytree(template / "store", ro)
    _immutable(ro, on=True)
    try:
        for argv in (["runs", "--store", str(ro)], ["versions", "cells", "--store", str(ro)],
                     ["push", "--store", str(ro), "--to", str(tmp_path / "copy")]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = entry.main(argv)
            assert code == 0, (argv, err.getvalue()[-2000:])
        assert "cells" in out.getvalue() or "1 runs copied" in out.getvalue() or "copied" in out.getvalue()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = entry.main(["promote", "cells", "--metric", "test_accuracy", "--store", str(ro)])
        assert_user_error(sp.CompletedProcess([], code, "", err.getvalue()), "is not writable")
    finally:
        _immutable(ro, on=False)
