"""The README's quickstart blocks as steps a test runs: one source for what a newcomer types and CI runs.

A block is a ```bash fence right after `<!-- journey: NAME [PART] -->`. Each of its lines is one command
(a trailing `# comment` is the reader's). `<!-- ci: COMMAND => REPLACEMENT -->` lines between the
marker and the fence say what CI runs instead of a command that needs what CI lacks (the internet, a
GPU, a second machine): `skip`, or another command; a replacement ending in `&` runs in the background
(a server, a tunnel), as the README's own command would run until Ctrl-C. A replacement whose command
is not in its block fails the parse, so an edited README cannot silently drop a step from CI.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_MARK = re.compile(r"^<!-- journey: (\S+)(?: (\S+))? -->$")
_CI = re.compile(r"^<!-- ci: (.+?) => (.+?) -->$")


@dataclass(frozen=True)
class Step:
    line: int  # 1-based line in README.md
    shown: str  # the command as the README shows it
    command: str  # what runs ("" when CI skips it)
    background: bool

    def where(self) -> str:
        return f"README.md:{self.line}: `{self.shown}`"


def journeys(text: str | None = None) -> dict[tuple[str, str], list[Step]]:
    """{(journey, part): steps} of every marked block, in README order."""
    lines = (README.read_text() if text is None else text).splitlines()
    found: dict[tuple[str, str], list[Step]] = {}
    i = 0
    while i < len(lines):
        mark = _MARK.match(lines[i].strip())
        i += 1
        if not mark:
            continue
        key = (mark.group(1), mark.group(2) or "")
        replace: dict[str, str] = {}
        while i < len(lines) and (ci := _CI.match(lines[i].strip())):
            replace[ci.group(1).strip()] = ci.group(2).strip()
            i += 1
        if i >= len(lines) or lines[i].strip() != "```bash":
            raise ValueError(f"README.md:{i + 1}: a journey marker must be followed by a ```bash block")
        i += 1
        steps = []
        while i < len(lines) and lines[i].strip() != "```":
            shown = re.sub(r"\s+#\s.*$", "", lines[i]).strip()
            i += 1
            if not shown or shown.startswith("#"):
                continue
            command = replace.pop(shown, shown)
            command = "" if command == "skip" else command
            background = command.endswith("&")
            steps.append(Step(i, shown, command.rstrip("&").strip(), background))
        if replace:
            raise ValueError(f"README.md: the ci replacement for `{next(iter(replace))}` matches no command "
                             f"of the {key[0]} {key[1]} block")
        found.setdefault(key, []).extend(steps)
    return found


def run(steps: list[Step], runner: Callable[[str], subprocess.CompletedProcess[str]],
        background: Callable[[str], subprocess.Popen[str]]) -> list[subprocess.Popen[str]]:
    """Run each step; a failing one raises naming its README line. Returns the background processes
    (the caller stops them)."""
    started = []
    for step in steps:
        if not step.command:
            continue
        if step.background:
            started.append(background(step.command))
            continue
        done = runner(step.command)
        if done.returncode != 0:
            raise AssertionError(f"{step.where()} failed (ran `{step.command}`, exit {done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return started
