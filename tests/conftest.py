"""Shared fixtures: a private Keras home, no inherited tracking URI, the tiny config, a throwaway PostgreSQL,
the stand-in docker sandbox. What they use lives in tests/helpers/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import PG_PASSWORD, TINY, pgcluster, require_tool
from helpers.stand_ins import sandbox  # noqa: F401  (a fixture: the scripts against a stand-in docker)

# TensorFlow's C++ start-up lines stay out of the tests' output (KERASFLOW_VERBOSE tests set their own).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `make test ARGS=...` exports its command-line variables to every make below it (MAKEFLAGS): the make
# commands the tests run must see only what the test gives them.
for _name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
    os.environ.pop(_name, None)


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

