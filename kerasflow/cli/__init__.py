"""What every entry script shares: config flags, quiet TensorFlow, and errors as one line with exit 2."""

from __future__ import annotations

import argparse
import errno
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from kerasflow.errors import Terminated, UserError, disk_full

if TYPE_CHECKING:
    from kerasflow.config import Config


def parser(description: str | None, *, config_flags: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if config_flags:
        p.add_argument("--config", default=None, metavar="PATH",
                       help="YAML config file (default: config.yaml next to train.py)")
        p.add_argument("--preset", dest="presets", action="append", default=[], metavar="NAME",
                       help="apply presets/NAME.yaml (or a YAML file) over the config, before --set: "
                            "demo, tiny")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key (YAML value), repeatable: --set epochs=3 "
                            "--set model=cnn")
    return p


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """fd 2 to /dev/null: C++ code writes there directly, below Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` with fd 2 silenced: its absl/oneDNN/CUDA-stub lines are
    written before TF reads TF_CPP_MIN_LOG_LEVEL. A failing import still raises (and is shown)."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            loader, real = spec.loader, spec.loader.exec_module

            def exec_module(module: ModuleType) -> None:
                with _stderr_silenced():
                    real(module)

            loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def quiet_tensorflow() -> None:
    """Hide TF's start-up noise on every run ("failed call to cuInit" on CPU hosts, oneDNN notices,
    "NodeDef mentions attribute ...") unless the user asked for it: TF_CPP_MIN_LOG_LEVEL set by them, or
    KERASFLOW_VERBOSE=1. What matters is said by us in one line (training's `device:` line)."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or os.environ.get("KERASFLOW_VERBOSE") == "1":
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    hooked = any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path)
    if "tensorflow" not in sys.modules and not hooked:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def nonempty(value: str) -> str:
    """argparse type of a path or name option: an empty value (`make push TO=`, a variable unset in a
    script) is refused, not taken for the current folder (push wrote a store into the checkout)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty: give a value")
    return value


def path(value: str) -> Path:
    """argparse type of a path: `nonempty`, then a Path (Path("") is the current folder)."""
    return Path(nonempty(value))


def store_folder(value: str) -> str:
    """argparse type of a store FOLDER: `nonempty`, and never a URL (`--store htp://host:5000`, a typo'd
    server, made folders named `htp:` in the checkout): a server goes in MLFLOW_TRACKING_URI."""
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", nonempty(value)):
        raise argparse.ArgumentTypeError(f"{value[:80]!r} is a URL, not a store folder: give the store's "
                                         "folder, or put a server in MLFLOW_TRACKING_URI")
    return value


def store_path(value: str) -> Path:
    return Path(store_folder(value))


def store_flags(p: argparse.ArgumentParser, *, experiment: bool = True) -> None:
    """--store (and --experiment): the same flags, defaults and help for every command on a store."""
    from kerasflow.track.store import DEFAULT_EXPERIMENT, DEFAULT_STORE

    p.add_argument("--store", default=DEFAULT_STORE, metavar="DIR", type=store_folder,
                   help=f"store folder: sqlite database + artifacts (default: {DEFAULT_STORE}); "
                        "MLFLOW_TRACKING_URI, when set, is used instead")
    if experiment:
        p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, type=nonempty,
                       help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT})")


def load_config(args: argparse.Namespace) -> Config:
    """The config the flags of `parser` ask for: --config, then each --preset, then each --set."""
    from kerasflow import config

    return config.load(args.config, args.overrides, args.presets)


class _ToStderr(logging.Handler):
    """The library's progress lines to whatever sys.stderr is now (a test's capture, a redirected
    stream): a StreamHandler would keep the stream it was made with."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own rule: a handler never raises
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return f"warning: {text}" if record.levelno == logging.WARNING else text


def report_to_stderr() -> None:
    """Show the library's progress (logger `kerasflow`, INFO) on stderr, once per process. Domain
    modules log instead of printing, so a notebook that imports them decides what it sees."""
    logger = logging.getLogger("kerasflow")
    if not any(isinstance(h, _ToStderr) for h in logger.handlers):
        handler = _ToStderr()
        handler.setFormatter(_Format())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (a notebook's, MLflow's) would show each line twice


def guard(main: Callable[[], object]) -> int:
    """Run `main` under the error contract: a UserError becomes `error: <message>` on stderr and exit code
    2, no traceback. (Not named `run`: the `run` command's module, kerasflow.cli.run, would replace it as
    the package's attribute once imported.)"""
    quiet_tensorflow()
    report_to_stderr()
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated as exc:
        print("terminated", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if disk_full(exc) or not (exc.filename and exc.errno in PATH_ERRORS):
            return _other(exc)
        # a path the user gave that the system refuses (too long, not a folder, a loop, no access)
        print(f"error: {exc.filename} cannot be used ({exc.strerror}): check the path you gave",
              file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - re-raised by _other unless the disk is full
        return _other(exc)
    return 0


PATH_ERRORS = {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EACCES, errno.EPERM,
               errno.EROFS, errno.ENOENT}


def _other(exc: Exception) -> int:
    """A full disk is one line; anything else is a bug of ours: its traceback."""
    reason = disk_full(exc)
    if not reason:
        raise exc
    filename = getattr(exc, "filename", None)
    where = f" writing {filename}" if filename else ""
    print(f"error: no space left{where} ({reason}): free disk space (or raise the file-size/quota "
          "limit) and run the command again; files are written whole or not at all", file=sys.stderr)
    return 2


def ssh_hint(port: int) -> str:
    """Where a server on 127.0.0.1:PORT is, and the tunnel that reaches it from a laptop."""
    return f"http://127.0.0.1:{port} (over SSH: ssh -L {port}:127.0.0.1:{port} HOST)"


def exec_server(cmd: list[str], env: dict[str, str]) -> None:
    """Become the server process (its pid is the one `make run` records and stops)."""
    sys.stdout.flush()
    sys.stderr.flush()
    # A server outlives whoever started it: it must not keep the starter's pipes open (a bash process
    # substitution's fd 63 kept `make run | tee` waiting for the server to exit).
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.execve(cmd[0], cmd, env)  # noqa: S606 - an argv list, no shell
