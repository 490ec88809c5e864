"""MLflow's meta.yaml files, line by line: MLflow writes flat `key: scalar` lines, and recognising those
without the YAML machinery makes relocation as fast as sed; anything unusual goes to the real parser.
The one place that knows how a location is spelled in those files (a plain path, file:// or file:)."""

from __future__ import annotations

import re
from typing import Any

import yaml


def as_path(value: str) -> tuple[str, str] | None:
    """(form, path) for a local location: form '' for a plain path, 'file://' or 'file:' for URIs."""
    if value.startswith("file://"):
        return "file://", value[len("file://"):]
    if value.startswith("file:"):
        return "file:", value[len("file:"):]
    if value.startswith("/"):
        return "", value
    return None


def yaml_loader() -> Any:

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]*):(?: (.*))?")
_SINGLE_QUOTED = re.compile(r"'(?:[^']|'')*'")
_DOUBLE_QUOTED = re.compile(r'"[^"\\]*"')
_PLAIN_START = set("'\"[]{}&*!|>%@`#,?:- \t")


def simple_scalar(value: str) -> str | None:
    """The string a one-line YAML value denotes, when it is trivially valid (else None: parse fully).

    MLflow writes meta.yaml as flat `key: scalar` lines; recognising those without the YAML machinery
    makes relocation as fast as sed. Anything unusual goes through the real parser.
    """
    if value in ("[]", "{}"):
        return value
    if value[:1] == "'":
        return value[1:-1].replace("''", "'") if _SINGLE_QUOTED.fullmatch(value) else None
    if value[:1] == '"':
        return value[1:-1] if _DOUBLE_QUOTED.fullmatch(value) else None
    if (not value or value[0] in _PLAIN_START or value != value.rstrip() or ": " in value
            or " #" in value or value.endswith(":") or "\t" in value):
        return None
    return value


def fast_meta(text: str, keys: tuple[str, ...]) -> dict[str, str] | None:
    """`keys`' string values when every line is a simple `key: scalar` (proven valid YAML), else None."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    for line in text.split("\n"):
        if not line:
            continue
        match = _KEY_LINE.fullmatch(line)
        if match is None or match[1] in seen:
            return None
        seen.add(match[1])
        if match[2] is None:
            if match[1] in keys:
                return None
            continue
        value = simple_scalar(match[2])
        if value is None:
            return None
        if match[1] in keys:
            if match[2][0] not in "'\"" and as_path(value) is None and not is_uri(value):
                return None  # a plain scalar YAML may resolve to a number, bool or null: ask YAML
            found[match[1]] = value
    return found


def is_uri(value: str) -> bool:
    scheme, sep, _ = value.partition(":")
    return bool(sep) and scheme.replace("-", "").replace("+", "").replace(".", "").isalnum()


def render(key: str, value: str) -> str:
    """`key: value` as YAML writes it; plain when that reads back as the same string."""
    if simple_scalar(value) == value and value not in ("[]", "{}") and (as_path(value) or is_uri(value)):
        return f"{key}: {value}"

    return yaml.safe_dump({key: value}, default_flow_style=False, width=1 << 30).rstrip("\n")


def replace_line(text: str, key: str, value: str) -> str:
    """Swap one top-level `key: value` line, keeping every other byte of the file."""
    start = 0 if text.startswith(f"{key}:") else text.find(f"\n{key}:") + 1
    if start == 0 and not text.startswith(f"{key}:"):
        raise ValueError(key)
    end = text.find("\n", start)
    while end >= 0 and text[end + 1:end + 2] in (" ", "\t"):  # a folded value's continuation lines
        end = text.find("\n", end + 1)
    end = len(text) if end < 0 else end
    return text[:start] + render(key, value) + text[end:]
