"""The fast meta.yaml reader and writer used by relocation agree with PyYAML on every input.

Relocation reads simple `key: scalar` lines without the YAML machinery (that is what makes it as fast
as sed); anything it is not sure of must fall through to the real parser, never be misread.
"""

from __future__ import annotations

import random
import string

import pytest
import yaml

from kerasflow.storeops import metayaml

KEYS = ("artifact_uri",)
VALUES = [
    "/srv/mlruns/1/abc/artifacts", "file:///srv/mlruns/1/abc/artifacts", "file:/srv/x",
    "mlflow-artifacts:/1/abc/artifacts", "s3://bucket/key", "/path with spaces/a", "/a: b", "/a #b",
    "/a#b", "'/quoted'", '"/double"', "'it''s'", '"esc\\"aped"', "null", "~", "true", "123", "1.5",
    "[]", "{}", "[/a, /b]", "{a: 1}", "/trailing ", "- /dash", "? /q", "/tab\there", "&anchor /a",
    "*alias", "!tag /a", "|", ">", "%", "@", "`", "/ünïcode/ç", "",
]


def parsed_by_yaml(text: str) -> dict[str, str] | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: data[k] for k in KEYS if isinstance(data.get(k), str)}


@pytest.mark.parametrize("value", VALUES)
def test_fast_reader_never_disagrees_with_yaml(value: str) -> None:
    text = f"artifact_uri: {value}\nexperiment_id: '1'\ntags: []\nname: run one\n"
    fast = metayaml.fast_meta(text, KEYS)
    if fast is not None:  # None means: let the real parser decide
        assert fast == parsed_by_yaml(text), text


def test_fast_reader_on_random_lines() -> None:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + " /:#'\"-_.[]{}!&*|>%@`,?\t\\"
    fast_hits = 0
    for _ in range(5000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        lead = rng.choice(["/", "file://", "", "'", '"'])
        text = f"run_id: abc\nartifact_uri: {lead}{value}\nstatus: 3\n"
        fast = metayaml.fast_meta(text, KEYS)
        if fast is not None:
            fast_hits += 1
            assert fast == parsed_by_yaml(text), repr(text)
    assert fast_hits > 500  # the fast path is really taken, not always deferred


@pytest.mark.parametrize("text", [
    "artifact_uri: /a\nartifact_uri: /b\n",  # duplicate key: PyYAML keeps the last, so defer
    "artifact_uri: /a\n  continued\n",       # folded continuation line
    "artifact_uri:\n  /a\n",                 # value on the next line
    "---\nartifact_uri: /a\n",               # document marker
    "artifact_uri: [unclosed\n",             # invalid: the real parser names the file
])
def test_fast_reader_defers_anything_unusual(text: str) -> None:
    assert metayaml.fast_meta(text, KEYS) is None


@pytest.mark.parametrize("value", [v for v in VALUES if v] + ["/new/" + "x" * 200 + " y"])
def test_rewritten_line_reads_back_as_the_same_string(value: str) -> None:
    text = "run_id: abc\nartifact_uri: /old/place\n  folded tail\nstatus: 3\n"
    out = metayaml.replace_line(text, "artifact_uri", value)
    assert yaml.safe_load(out) == {"run_id": "abc", "artifact_uri": value, "status": 3}


def test_a_rerun_removes_the_temp_files_a_killed_relocation_left(tmp_path) -> None:
    """A kill between atomic_write's temp file and its rename leaves `.meta.yaml.*.tmp` beside the file;
    the next relocation deletes exactly those and rewrites the file itself."""
    from kerasflow import files
    from kerasflow.storeops import relocate

    old, root = "/old/place/mlruns", tmp_path / "mlruns"
    run = root / "1" / "0123456789abcdef"
    run.mkdir(parents=True)
    (root / "1" / "meta.yaml").write_text(f"artifact_location: file://{old}/1\nexperiment_id: '1'\nname: x\n")
    (run / "meta.yaml").write_text(f"artifact_uri: file://{old}/1/0123456789abcdef/artifacts\nrun_id: r\n")
    stale = run / ".meta.yaml.k1ll3d.tmp"
    stale.write_text("artifact_uri: file:///half")
    unrelated = run / ".other.yaml.x.tmp"
    unrelated.write_text("not ours")
    assert files.leftover_temps(run / "meta.yaml") == [stale]
    relocate.relocate_files(root, None, root, dry_run=False)
    assert not stale.exists() and unrelated.exists()
    assert f"file://{root}/1/0123456789abcdef/artifacts" in (run / "meta.yaml").read_text()
    assert files.leftover_temps(run / "meta.yaml") == []
