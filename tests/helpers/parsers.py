"""Each command's real argparse parser, read without running the command: the generated-input walk
(tests/test_generated_input.py) feeds it, the docs checker (tests/test_docs.py) parses the docs' lines
with it."""

from __future__ import annotations

import argparse
import contextlib
import importlib
from unittest import mock


class _Parser(BaseException):
    """Raised in place of parsing: the parser was found."""


def parser_of(name: str) -> argparse.ArgumentParser:
    """The real parser of `kerasflow NAME` (argparse's parse_args intercepted: nothing runs)."""
    module = importlib.import_module(f"kerasflow.cli.{name.replace('-', '_')}")
    found: list[argparse.ArgumentParser] = []

    def grab(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        found.append(self)
        raise _Parser

    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab), contextlib.suppress(_Parser):
        module.main([])
    assert found, f"kerasflow {name}: no argparse parser found"
    return found[0]
