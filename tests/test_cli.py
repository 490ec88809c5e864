"""Every failure a user can cause: exit 2, one line naming problem and fix, no traceback, nothing written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, assert_user_error, run_script, set_args, write_png_tree


def test_help_is_instant_and_does_not_import_tensorflow():
    code = (
        "import runpy, sys; sys.argv = ['train.py', '--help']\n"
        "try:\n    runpy.run_path('train.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'mlflow', 'tensorflow_datasets') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "--set KEY=VALUE" in out.stdout
    assert "HEAVY []" in out.stdout


BAD_SETS = [
    (["colour=red"], "unknown config key 'colour'"),
    (["epochs=many"], "config key 'epochs' must be int"),
    (["epochs=0"], "config key 'epochs' is 0"),
    (["model=vgg16", "image_size=24"], "too small for vgg16 (needs >= 32)"),
    (["data_source=ftp"], "choose one of: image_dir, synthetic, tfds"),
    (["model=resnet"], "choose one of: vgg16, cnn"),
]


@pytest.mark.parametrize(("sets", "message"), BAD_SETS)
def test_bad_config_values(tiny_overrides, tmp_path, sets, message):
    result = run_script("train.py", *set_args([*tiny_overrides, *sets]))
    assert_user_error(result, message)
    assert not (tmp_path / "outputs").exists()


def test_malformed_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\n  model: : cnn\n")
    assert_user_error(run_script("train.py", "--config", str(bad)), "is not valid YAML at line", "fix")


def test_missing_config_file(tmp_path):
    assert_user_error(run_script("train.py", "--config", str(tmp_path / "nope.yaml")), "does not exist")


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (None, "does not exist: point image_dir at a folder with one sub-folder per class"),
        ({"Parasitized": 4, "Uninfected": 0}, "holds no images"),
        ({"Parasitized": 4}, "has only one class folder"),
    ],
)
def test_bad_image_dirs(tiny_overrides, tmp_path, layout, message):
    root = tmp_path / "cells"
    if layout is not None:
        for name, n in layout.items():
            (root / name).mkdir(parents=True)
            if n:
                write_png_tree(root, {name: n})
    sets = [*tiny_overrides, "data_source=image_dir", f"image_dir={root}"]
    result = run_script("train.py", *set_args(sets))
    assert_user_error(result, message)
    assert not (tmp_path / "outputs").exists()


def test_unwritable_output_dir(tiny_overrides, tmp_path):
    # /proc refuses new files even to root, where a chmod'ed folder would not
    result = run_script("train.py", *set_args([*tiny_overrides, "output_dir=/proc/kerasflow-outputs"]))
    assert_user_error(result, "is not writable", "--set output_dir=PATH")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_script("train.py", *set_args([*tiny_overrides, f"output_dir={blocker}/runs"]))
    assert_user_error(result, "is inside a file")


def test_offline_malaria_fails_fast(tiny_overrides, tmp_path):
    start = time.perf_counter()
    result = run_script(
        "train.py", *set_args([*tiny_overrides, "data_source=tfds", f"tfds_data_dir={tmp_path / 'tfds'}"])
    )
    assert_user_error(result, "is not downloaded", "make data", "data_source=synthetic")
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "outputs").exists()


def test_offline_vgg16_weights(tiny_overrides, tmp_path):
    result = run_script(
        "train.py",
        *set_args([*tiny_overrides, "model=vgg16", "weights=imagenet"]),
        env={"KERAS_HOME": str(tmp_path / "empty_keras_home")},
    )
    assert_user_error(result, "cannot download the VGG16 ImageNet weights", "make weights", "weights: none")
    assert not (tmp_path / "outputs").exists()


def test_missing_weights_file(tiny_overrides, tmp_path):
    result = run_script(
        "train.py", *set_args([*tiny_overrides, "model=vgg16", f"weights={tmp_path / 'nope.h5'}"])
    )
    assert_user_error(result, "weights file", "does not exist")


NOISE = ("absl::InitializeLog", "oneDNN", "cudart_stub", "cuInit", "NodeDef mentions")  # TF's start-up lines


def test_a_cpu_run_starts_quietly_unless_asked(tiny_overrides):
    """TF's start-up lines (absl, oneDNN, cudart_stub, cuInit) are hidden; one `device:` line says it."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *set_args(tiny_overrides)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    first = quiet.stderr.splitlines()[0]
    assert first.startswith("device: CPU") and "sees no GPU" in first, quiet.stderr[:2000]
    for noise in NOISE:
        assert noise not in quiet.stderr, noise
    asked = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *set_args(tiny_overrides), "--set", "run_name=asked"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "KERASFLOW_VERBOSE": "1"},
        timeout=600,
    )
    # shown when asked for (TF prints its oneDNN notice only on CPUs with AVX-512 VNNI/BF16 or AMX)
    assert asked.returncode == 0 and any(noise in asked.stderr for noise in NOISE), asked.stderr[:2000]


def test_curves_have_whole_epoch_ticks():
    from matplotlib.figure import Figure

    from kerasflow.train.plots import metric_histories

    class Metric:
        def __init__(self, step: int, value: float) -> None:
            self.step, self.value = step, value

    class Client:
        def get_metric_history(self, run_id: str, metric: str) -> list[Metric]:
            return [Metric(s, 0.5 + s / 10) for s in range(3)]

    ax = Figure().subplots()
    metric_histories(ax, Client(), [("r1", "run one")], "val_accuracy")
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_one_kerasflow_command_reaches_every_capability_without_heavy_imports():
    from kerasflow.cli.main import COMMANDS, INTERNAL

    listed = subprocess.run(
        [sys.executable, "-m", "kerasflow", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert listed.returncode == 0
    code = (
        "import sys; from kerasflow.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print('HEAVY', [m for m in ('tensorflow', 'keras', 'mlflow') if m in sys.modules])\n"
    )
    for name in [*COMMANDS, *INTERNAL]:
        assert (f"kerasflow {name} " in listed.stdout) == (name in COMMANDS), name
        out = subprocess.run(
            [sys.executable, "-c", code, *name.split(), "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 0 and f"usage: kerasflow {name}" in out.stdout, (name, out.stderr[-500:])
        assert "HEAVY []" in out.stdout, name
    assert_user_error(
        subprocess.run(
            [sys.executable, "-m", "kerasflow", "bogus"], capture_output=True, text=True, cwd=ROOT
        ),
        "unknown command 'kerasflow bogus'",
        "kerasflow --help",
    )


def test_each_command_is_the_make_target_and_mlproject_entry_of_its_name():
    """kerasflow CMD = python -m kerasflow CMD = make CMD (= MLproject entry CMD; `main` is track)."""
    import ast
    import re

    import yaml

    from kerasflow.cli.main import COMMANDS, INTERNAL

    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    ui_script = (ROOT / "run_mlflow_ui.bash").read_text()  # make ui runs it; it runs kerasflow ui
    for name in COMMANDS:
        assert name in targets, f"no make target {name}"
        runs_it = f"-m kerasflow {name} " in makefile
        assert runs_it or (name == "ui" and '-m kerasflow ui "$@"' in ui_script), name
    recipes = "\n".join(line for line in makefile.splitlines() if line.startswith("\t"))
    assert not re.search(r"-m kerasflow\.|\b(train|train_mlflow)\.py\b", recipes), "make calls a shim"
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    for entry, spec in entries.items():
        assert spec["command"].startswith(f"python -m kerasflow {'track' if entry == 'main' else entry} ")
    package = ROOT / "kerasflow"
    # the architecture doc's table lists exactly these, with the same MLproject entries and real modules
    doc = (ROOT / "docs" / "architecture.md").read_text().split("## One name per capability", 1)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in doc.split("\n## ", 1)[0].splitlines()
            if line.startswith("| ") and not line.startswith("| name ")]
    assert {r[0].removesuffix(" (internal)") for r in rows} == {*COMMANDS, *INTERNAL}
    assert {("track" if r[3] == "main" else r[3]) for r in rows if r[3]} == {
        "track" if e == "main" else e for e in entries}
    for r in rows:
        assert (package / r[4]).is_file(), r
        assert all((ROOT / "docs" / d).is_file() or d == "README.md" for d in r[5].split(", ")), r
    modules = {p.stem for p in (package / "cli").glob("*.py")} - {"__init__", "main"}
    assert modules == {n.replace("-", "_") for n in [*COMMANDS, *INTERNAL]}
    for path in package.rglob("*.py"):  # only cli/ parses argv, and nothing below it has an entry
        if path.parent.name != "cli" and path.name != "__main__.py":
            text = path.read_text()
            assert "argparse" not in text and '__name__ == "__main__"' not in text, path
            prints = [n.lineno for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)
                      and isinstance(n.func, ast.Name) and n.func.id == "print"]
            assert not prints, f"{path}:{prints}: a library logs (logging.getLogger), only cli/ prints"


@pytest.mark.parametrize(("module", "line"), [
    ("kerasflow/train/models.py", "from kerasflow.track import store"),  # a floor up
    ("kerasflow/storeops/relocate.py", "from kerasflow.cli import parser"),  # a domain module into cli
    ("kerasflow/track/store.py", "def f():\n    from kerasflow.experiments import cv"),  # in a function
])
def test_lint_fails_on_an_import_against_the_layers(tmp_path, module, line):
    """make lint's contracts (pyproject.toml) catch what the architecture doc forbids, lazy imports too."""
    shutil.copytree(ROOT / "kerasflow", tmp_path / "kerasflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tmp_path)
    lint = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    clean = subprocess.run(lint, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stdout[-2000:]
    with (tmp_path / module).open("a") as f:
        f.write(f"\n{line}\n")
    broken = subprocess.run(lint, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "BROKEN" in broken.stdout, broken.stdout[-2000:]


def test_tests_import_helpers_never_conftest():
    """conftest.py holds fixtures (and pytest hooks) only; what tests call lives in tests/helpers/."""
    import re

    for path in (ROOT / "tests").rglob("*.py"):
        assert not re.search(r"^\s*(from conftest import|import conftest)", path.read_text(), re.M), path
    import ast

    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            hook = node.name.startswith("pytest_")
            assert hook or any("fixture" in ast.unparse(d) for d in node.decorator_list), node.name


HEAVY = {"tensorflow", "keras", "tensorflow_datasets", "mlflow", "optuna", "optuna_integration", "sklearn",
         "matplotlib", "pandas", "sqlalchemy", "apprise"}


def test_lazy_imports_are_heavy_libraries_named_once_per_module():
    """Below cli/, an import inside a function is a heavy library (or train.callbacks, which imports
    tensorflow at its top), and the module names them in one `# Lazy imports:` comment."""
    import ast

    for path in sorted((ROOT / "kerasflow").rglob("*.py")):
        if path.parent.name == "cli":
            continue  # commands import the library inside main() so that --help stays instant
        text = path.read_text()
        lazy = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import):
                        lazy |= {a.name for a in sub.names}
                    elif isinstance(sub, ast.ImportFrom):
                        lazy |= {f"{sub.module}.{a.name}" for a in sub.names}
        allowed = {"kerasflow.train.callbacks", "tomllib"}  # tomllib: 3.11+, kerasflow.env also runs on 3.10
        light = {m for m in lazy if m.split(".")[0] not in HEAVY and m not in allowed
                 and not m.startswith("kerasflow.train.callbacks.")}
        assert not light, (path, light)
        heavy_roots = {m.split(".")[0] for m in lazy} & HEAVY
        assert not heavy_roots or "# Lazy imports:" in text, path


@pytest.mark.parametrize("argv", [["runs", "--store", "htp://127.0.0.1:5000"],
                                  ["log-run", "outputs/x", "--store", "http://h:5000"],
                                  ["doctor", "--store", "file:///tmp/s"], ["ui", "s3://bucket/store"],
                                  ["relocate", "htp://h/store"], ["server", "htp://h:5000"]])
def test_a_url_where_a_store_folder_goes_is_one_line_and_makes_no_folder(tmp_path, argv):
    """Found by tests/test_generated_input.py: `--store htp://127.0.0.1:5000` (a typo'd server) made a
    folder `htp:` in the checkout and a store under it."""
    out = subprocess.run([sys.executable, "-m", "kerasflow", *argv], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "is a URL, not a store folder" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not list(tmp_path.iterdir())


def test_every_target_that_runs_a_command_passes_args_on():
    """`make pull ARGS=--force` is what a refused pull tells the user to run: every recipe that runs a
    kerasflow command appends $(ARGS) (a dozen dropped them: pull, runs, promote, versions, cancel, ui,
    server, serve, predict, relocate, migrate, shell). Not: mlproject (its output is the file)."""
    import re

    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    missing = []
    for target, recipe in re.findall(r"^([a-z][a-z-]*):[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M):
        for line in recipe.splitlines():
            runs = re.search(r"-m kerasflow [a-z-]+|run_mlflow_ui\.bash", line)
            if runs and target != "mlproject" and "$(ARGS)" not in line:
                missing.append(f"{target}: {line.strip()[:80]}")
    assert not missing, missing


def test_no_command_module_hides_a_function_of_the_cli_package():
    """`kerasflow.cli.run` (the `run` command) replaced the package's error-contract function `cli.run`
    once imported, so every later command in that process failed ('module' object is not callable)."""
    import inspect

    import kerasflow.cli as package

    commands = {p.stem for p in Path(package.__file__).parent.glob("*.py")} - {"__init__"}
    functions = {name for name, value in vars(package).items() if inspect.isfunction(value)}
    assert not commands & functions, commands & functions


# --- make help ------------------------------------------------------------------------------------


def test_make_help_is_grouped_everyday_first_and_fits_100_columns():
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), [line for line in lines if len(line) > 100]
    groups = [line for line in lines if line and not line.startswith(" ")]
    assert groups == ["Everyday", "Tracking and models", "Stores", "Experiments", "Containers", "Maintenance"]
    listed = re.findall(r"^  make (\S+)", out, re.M)
    documented = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    assert sorted(listed) == sorted(documented) and len(listed) == len(set(listed))
    everyday = lines[lines.index("Everyday") + 1:lines.index("Tracking and models")]
    named = set(re.findall(r"make (\S+)", "\n".join(everyday)))
    assert {"demo", "train", "track", "run", "ui", "data"} <= named
