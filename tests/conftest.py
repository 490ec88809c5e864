"""Shared fixtures: a private Keras home, no inherited tracking URI, the tiny config, a throwaway PostgreSQL,
the stand-in docker sandbox. What they use lives in tests/helpers/."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from helpers import PG_PASSWORD, TINY, pgcluster, require_tool
from helpers.engine import (  # noqa: F401  (the engine tests' session fixtures)
    build_env,
    checkout,
    cleanup_containers,
    engine,
    foreground_run,
    image,
    package_cache,
    run_env,
    user,
    weights,
    workdir,
)
from helpers.stand_ins import sandbox  # noqa: F401  (a fixture: the scripts against a stand-in docker)

# TensorFlow's C++ start-up lines stay out of the tests' output (KERASFLOW_VERBOSE tests set their own).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `make test ARGS=...` exports its command-line variables to every command below it, as variables
# (ARGS=...) and in MAKEFLAGS for sub-makes: the make commands the tests run must see only what the test
# gives them (a stray ARGS reached `make data` in a sandbox).
_cmdline = os.environ.get("MAKEFLAGS", "").partition("-- ")[2]  # NAME=VALUE words, spaces escaped by \\
for _word in [*re.split(r"(?<!\\) ", _cmdline), "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"]:
    os.environ.pop(_word.split("=", 1)[0], None)


@pytest.fixture(autouse=True)
def _private_keras_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.getbasetemp() / "keras_home"))


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's MLFLOW_TRACKING_URI must not send test runs to their server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return [*TINY, f"output_dir={tmp_path / 'outputs'}", f"cache_dir={tmp_path / 'cache'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides: list[str]):
    from kerasflow import config

    return config.load(None, tiny_overrides)


@pytest.fixture(scope="session")
def postgres():
    require_tool("initdb (postgresql)", pgcluster.bindir() is not None)
    with pgcluster.throwaway_cluster(PG_PASSWORD) as cluster:
        yield {"url": cluster.createdb("mlflow"), "port": cluster.port, "createdb": cluster.createdb}



@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`make test TEST_JOBS=N` (--dist loadfile): a file to a worker, and all tests/test_engine_*.py to ONE
    worker, since they share the session's user, checkout and image. (xdist_group would say this, but
    does not group under pytest 9: pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class EngineFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "engine" if Path(scope).name.startswith("test_engine_") else scope

    return EngineFilesTogether(config, log)
