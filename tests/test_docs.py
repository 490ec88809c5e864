"""Docs that cannot drift: every command line the README and docs/ show is checked against the code.

- `make TARGET VAR=...`: the target exists, and each variable shown is one make or kerasflow reads;
- `kerasflow CMD ...` (and the shims `./project_driver.bash`, `./run_script.bash`, `./run_mlflow_ui.bash`,
  `python train.py`, `python train_mlflow.py`): it parses with the command's real parser (the command
  and every flag exist; a synopsis's `[--flag X]` and `A|B` count as given);
- every picture and every test file named exists.
A line that only names a command in prose is a code span like any other: it must parse too.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from helpers import ROOT
from helpers.parsers import parser_of

from kerasflow.cli.main import COMMANDS, INTERNAL

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHIMS = {"project_driver.bash": "run", "run_script.bash": "run-script", "run_mlflow_ui.bash": "ui",
         "train.py": "train", "train_mlflow.py": "track"}
# variables kerasflow, the scripts and docker read from the environment (a make variable on the command
# line reaches them too), found in the code; plus make's own
NO_PARSER = {"run-script"}  # passes its argv to the container whole
MAKE_OWN = {"VENV", "PYTHON_BASE", "HOST_PYTHON", "TEST_JOBS", "IN_IMAGE"}


def snippets(doc: Path) -> list[tuple[int, str]]:
    """(line number, text) of every code span and every line of a fenced block."""
    out, fenced = [], False
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            out.append((number, line.strip()))
        else:
            out += [(number, span) for span in re.findall(r"`([^`]+)`", line)]
    return out


def commands_in(text: str) -> list[list[str]]:
    """Each simple command of a shell line, as words (env assignments and a `$ ` prompt dropped)."""
    text = re.sub(r"<[^<>]*>", "X", text.split(" #")[0].removeprefix("$ "))  # a <placeholder>: a value
    found = []
    for part in re.split(r"\s*(?:&&|\|\||;|\|(?=\s))\s*", text):
        try:
            words = shlex.split(part)
        except ValueError:
            continue
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            found.append(words)
    return found


def kerasflow_argv(words: list[str]) -> tuple[str, list[str]] | None:
    """(command, its argv) when the words run a kerasflow command, else None."""
    runner = words[0] in ("python", "python3", "bash") or words[0].endswith("/python")
    if runner:
        words = words[1:]
        if words[:2] == ["-m", "kerasflow"]:
            words = ["kerasflow", *words[2:]]
    if words and words[0].endswith("kerasflow") and len(words) > 1:
        return words[1], words[2:]
    shim = words[0].removeprefix("./") if words else ""
    if shim in SHIMS and (runner or words[0].startswith("./")):  # run as a script, not named in a tree
        return SHIMS[shim], words[1:]
    return None


def synopsis_args(argv: list[str]) -> list[str]:
    """A usage line as arguments: brackets dropped, the first of `A|B`, `...` and `<...>` placeholders out."""
    out: list[str] = []
    for word in argv:
        if re.fullmatch(r"\[?[A-Z][A-Z_]*\]?", word) and out and out[-1].startswith("--"):
            out.append("1")  # an option's placeholder value (--port N): any value of its type
            continue
        word = word.strip("[]")
        if "|" in word and word.startswith("-"):
            word = word.split("|")[0]
        if not word or word in ("...", "…") or (word.startswith("<") and word.endswith(">")):
            if word.startswith("<"):
                out.append("x")  # a placeholder value
            continue
        out.append(word)
    return out


def test_every_kerasflow_line_the_docs_show_parses():
    wrong = []
    for doc in DOCS:
        for number, text in snippets(doc):
            for words in commands_in(text):
                found = kerasflow_argv(words)
                if found is None:
                    continue
                name, argv = found
                where = f"{doc.name}:{number}: {text[:100]}"
                if name in ("--help", "-h"):
                    continue
                if name not in COMMANDS and name not in INTERNAL:
                    wrong.append(f"{where}: no command '{name}'")
                    continue
                if name in NO_PARSER or not argv:  # a command named in prose: that it exists is the claim
                    continue
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    try:
                        parser_of(name).parse_args(synopsis_args(argv))
                    except SystemExit as exc:
                        if exc.code:
                            lines = err.getvalue().strip().splitlines() or ["?"]
                            wrong.append(f"{where}: {lines[-1]}")
    assert not wrong, "\n".join(wrong)


def _variables_read() -> set[str]:
    """Names make reads ($(VAR)) and the code reads from the environment."""
    names = set(re.findall(r"\$\(([A-Z_][A-Z0-9_]*)\)", (ROOT / "Makefile").read_text()))
    names |= set(re.findall(r"^([A-Z_][A-Z0-9_]*) \??=", (ROOT / "Makefile").read_text(), re.M))
    for path in [*(ROOT / "kerasflow").rglob("*.py"), *ROOT.glob("*.bash"), *(ROOT / "docker").glob("*")]:
        if path.is_file():
            text = path.read_text(errors="replace")
            names |= set(re.findall(r"environ(?:\.get)?\(?\[?\"([A-Z_][A-Z0-9_]*)\"", text))
            names |= set(re.findall(r"getenv\(\"([A-Z_][A-Z0-9_]*)\"", text))
            names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
            names |= set(re.findall(r"_(?:ENV|VARIABLE)\w* = \"([A-Z_][A-Z0-9_]*)\"", text))
    return names | MAKE_OWN


def _listed(line: str) -> list[tuple[str, str]]:
    """(command, item) for each item of a list that starts with `kerasflow CMD`: 1-2 bare words each."""
    out = []
    for head, rest in re.findall(r"`(?:\S*/)?kerasflow ([a-z-]+)[^`]*`((?:, `[^`]+`)+)", line):
        for item in re.findall(r"`([^`]+)`", rest):
            item = item.removeprefix("kerasflow ")
            if re.fullmatch(r"[a-z][a-z-]*( [a-z][a-z-]*)?", item):
                out.append((head, item))
    return out


def _continued(last: str, span: str) -> str:
    """The parser's complaint about `... ARGS` read as more of the last kerasflow command, else ""."""
    args = span.split()[1:]
    if not last or not all(re.fullmatch(r"[a-z][a-z-]*|[A-Z][A-Z_]*|--?[a-z-]+", a) for a in args):
        return ""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser_of(last).parse_args(synopsis_args(args))
    except SystemExit as exc:
        if exc.code:
            return err.getvalue().strip().splitlines()[-1]
    return ""


def test_every_kerasflow_command_a_list_names_exists():
    """`(`kerasflow train`, `track`, `store ui`, ...)`: each item of a list that starts with a command is
    a command too; `... show NAME` after `kerasflow promote` continues that command."""
    wrong = []
    for doc in DOCS:
        last = ""
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            wrong += [f"{doc.name}:{number}: `{item}` (listed with kerasflow {head}) is no command"
                      for head, item in _listed(line) if item.split()[0] not in COMMANDS]
            for span in re.findall(r"`([^`]+)`", line):
                found = kerasflow_argv(span.split()) if span.split() else None
                if found:
                    last = found[0]
                elif span.startswith("... ") and (why := _continued(last, span)):
                    wrong.append(f"{doc.name}:{number}: `{span}` (kerasflow {last} ...): {why}")
    assert not wrong, "\n".join(wrong)


def test_the_doctor_example_shows_the_real_rows():
    """An output example comes from the code or says it is abridged: the `$ make doctor` table shows
    every row doctor prints (gpus-in-image only with a GPU runtime), in its order."""
    import inspect

    from kerasflow import doctor

    rows = re.findall(r'row\("([a-z-]+)"', inspect.getsource(doctor.for_box))
    rows.remove("gpus-in-image")
    for doc in DOCS:
        for block in re.findall(r"```console\n\$ make doctor\n(.*?)```", doc.read_text(), re.S):
            if "abridged" in block:
                continue
            shown = [line.split()[0] for line in block.splitlines() if line.strip()]
            assert shown == rows, (doc.name, shown, rows)


def test_every_make_target_and_variable_the_docs_show_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z_-]+):", makefile, re.M))
    read = _variables_read()
    wrong = []
    for doc in DOCS:
        for number, text in snippets(doc):
            for words in commands_in(text):
                if words[0] != "make" or len(words) < 2:
                    continue
                where = f"{doc.name}:{number}: {text[:100]}"
                for word in words[1:]:
                    if "=" in word:
                        var = word.split("=", 1)[0]
                        if re.fullmatch(r"[A-Z_][A-Z0-9_]*", var) and var not in read:
                            wrong.append(f"{where}: {var} is read by nothing")
                    elif re.fullmatch(r"[a-z][a-z0-9-]*", word) and word not in targets:
                        wrong.append(f"{where}: no target '{word}'")
    assert not wrong, "\n".join(wrong)


def test_every_picture_and_page_the_docs_reference_exists():
    """Pictures are made by `make pictures` from a real run (docs/make_pictures.py) and committed."""
    pictures, pages = 0, 0
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            path = (doc.parent / target).resolve()
            assert path.is_file(), f"{doc.name} shows {target}, which does not exist: run make pictures"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size < 400_000, target
            pictures += 1
        for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s#]+\.md)(?:#[^)]*)?\)", text):
            assert (doc.parent / target).is_file(), f"{doc.name} links {target}, which does not exist"
            pages += 1
    assert pictures >= 4 and pages >= 10


def test_every_test_the_docs_name_as_proof_exists():
    """docs/troubleshooting.md's "What survives what" names, for each invariant, the test that proves it:
    a renamed or deleted test would leave the table claiming a proof that is gone."""
    named = 0
    for doc in DOCS:
        for file, test in re.findall(r"`(test_\w+\.py)::(test_\w+)`", doc.read_text()):
            assert re.search(rf"^(async )?def {test}\(", (ROOT / "tests" / file).read_text(), re.M), \
                f"{doc.name} names {file}::{test}, which does not exist"
            named += 1
    assert named >= 20


def test_every_other_link_and_test_file_the_docs_name_exists():
    """Links to files that are not pages (LICENSE, BENCHMARKS.md's scripts) and `tests/test_x.py` names."""
    wrong = []
    for doc in [*DOCS, ROOT / "BENCHMARKS.md"]:
        text = doc.read_text()
        for link in re.findall(r"(?<!!)\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not link.startswith(("http://", "https://", "mailto:")) and not (doc.parent / link).exists():
                wrong.append(f"{doc.name}: link {link}")
        for name in re.findall(r"tests/(test_[a-z0-9_]+\.py)", text):
            if not (ROOT / "tests" / name).is_file():
                wrong.append(f"{doc.name}: test file {name}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("line", ["kerasflow ... store ui", "kerasflow promote x show NAME",
                                  "kerasflow runs --nosuch", "make nosuch", "make runs NOSUCHVAR=1"])
def test_the_checker_catches_each_kind_of_drift(line, tmp_path):
    """Each check fails on a line of its kind (the checker cannot pass by reading nothing)."""
    doc = tmp_path / "x.md"
    doc.write_text(f"`{line}`\n")
    globals()["DOCS"], saved = [doc], DOCS
    try:
        with pytest.raises(AssertionError):
            if line.startswith("make"):
                test_every_make_target_and_variable_the_docs_show_exists()
            else:
                test_every_kerasflow_line_the_docs_show_parses()
    finally:
        globals()["DOCS"] = saved


def test_the_contributors_file_tree_names_every_module_and_only_real_files():
    """architecture.md's tree had gone stale (shell_line.py and metayaml.py missing): every module of the
    package (the commands aside: cli/ is one module per command) is named in it, and each name exists."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    tree = doc.split("## What is where", 1)[1].split("```", 2)[1]
    package = ROOT / "kerasflow"
    modules = {p.name for p in package.rglob("*.py")
               if p.name != "__init__.py" and "cli" not in p.relative_to(package).parts[:1]}
    named = set(re.findall(r"\b([a-z_]+\.py)\b", tree))
    assert not modules - named, f"architecture.md's tree does not name {sorted(modules - named)}"
    folders = [ROOT / name for name in ("kerasflow", "tests", "docs", "bench")]
    real = {p.name for folder in folders for p in folder.rglob("*.py")} | {p.name for p in ROOT.glob("*.py")}
    assert not named - real, f"architecture.md's tree names files that do not exist: {sorted(named - real)}"


def test_the_readme_lists_every_target_in_make_help_s_groups_and_commands_md_every_command():
    """The README's target list is `make help`'s (`versions` and `log-run` were missing from it), and
    docs/commands.md shows each command's make target."""
    makefile = (ROOT / "Makefile").read_text()
    groups: dict[str, list[str]] = {}
    group = ""
    for line in makefile.splitlines():
        if line.startswith("##@ "):
            group = line[4:].strip()
        elif (target := re.match(r"^([a-z][a-z-]*):.*## ", line)) and group and target.group(1) != "help":
            groups.setdefault(group, []).append(target.group(1))
    readme = (ROOT / "README.md").read_text()
    for name, targets in groups.items():
        bullet = re.search(rf"^- \*\*{re.escape(name)}\*\*: (.*(?:\n  .*)*)", readme, re.M)
        assert bullet, f"README lists no group {name}"
        listed = set(re.findall(r"`([a-z][a-z*-]*)`", bullet.group(1)))
        shown = {t for t in targets if t in listed or ("bench*" in listed and t.startswith("bench"))}
        assert shown == set(targets), (name, sorted(set(targets) - shown))
        assert {n for n in listed if not n.endswith("*")} <= set(targets), (name, listed - set(targets))
    commands = (ROOT / "docs" / "commands.md").read_text()
    missing = [n for n in COMMANDS if f"make {n}" not in commands and n not in ("env", "mlproject")]
    assert not missing, missing


# --- the README as a newcomer's page --------------------------------------------------------------


def test_the_readme_is_a_newcomers_page():
    """About 150-200 lines: what it is, prerequisites, the two commands, three quickstarts, the targets
    by group, links; the rest lives in docs/ (it was 711 lines)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for heading in ("## Prerequisites", "## The two commands", "## Quickstarts", "## Make targets"):
        assert heading in text, heading
    assert "```mermaid" in text
    assert "make test" in text and "\nmake test\n" in (ROOT / ".ci" / "run").read_text()  # CI's command


def test_the_readme_quickstarts_parse_into_the_journeys_ci_runs():
    from helpers import readme_journeys

    found = readme_journeys.journeys()
    assert set(found) == {("devcontainer", "host"), ("devcontainer", "container"), ("gpu-server", "box"),
                          ("gpu-server", "laptop"), ("laptop", "")}
    assert sum(len(steps) for steps in found.values()) <= 3 * 10  # at most ~10 commands a quickstart
    box = {s.shown: s for s in found[("gpu-server", "box")]}
    assert box["make data"].command == ""  # needs the internet: CI skips it, as the README says
    assert "data_source=synthetic" in box['make run ARGS="--detach -P register_model=demo"'].command
    readme = (ROOT / "README.md").read_text()
    offline = "-P data_source=synthetic -P model=cnn -P image_size=48 -P register_model=demo"
    assert f'make run ARGS="--detach {offline}"' in readme
    # a replacement whose command the README no longer has is an error, not a silently dropped step
    broken = "<!-- journey: x -->\n<!-- ci: make gone => skip -->\n```bash\nmake demo\n```\n"
    with pytest.raises(ValueError, match="make gone"):
        readme_journeys.journeys(broken)


def test_every_kerasflow_import_in_the_notebook_resolves():
    """A rename (`sources.draw_synthetic` -> `sources.synthetic.draw`) broke the notebook, and only the
    devcontainer journey, 20 minutes into CI, ran it: each of its kerasflow imports is checked here."""
    import ast
    import importlib
    import json

    notebook = json.loads((ROOT / "notebooks" / "explore.ipynb").read_text())
    code = "\n".join(line for cell in notebook["cells"] if cell["cell_type"] == "code"
                     for line in "".join(cell["source"]).splitlines() if not line.startswith(("%", "!")))
    checked = 0
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kerasflow"):
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)
                       and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            assert not missing, f"notebooks/explore.ipynb imports {missing} from {node.module}: not there"
            checked += 1
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kerasflow"):
                    importlib.import_module(alias.name)
                    checked += 1
    assert checked >= 2
