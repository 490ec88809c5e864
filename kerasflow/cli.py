"""What every entry script shares: config flags, quiet TensorFlow, and errors as one line with exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from kerasflow.errors import Terminated, UserError


def parser(description: str | None, *, config_flags: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if config_flags:
        p.add_argument("--config", default=None, metavar="PATH",
                       help="YAML config file (default: config.yaml next to train.py)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key (YAML value), repeatable: --set epochs=3 "
                            "--set model=cnn")
    return p


def quiet_tensorflow() -> None:
    """Hide TF's C++ start-up chatter (CUDA probing on CPU hosts) unless the user asked for it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run(main: Callable[[], object]) -> int:
    """Run `main`; a UserError becomes `error: <message>` on stderr and exit code 2, no traceback."""
    quiet_tensorflow()
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("terminated", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
