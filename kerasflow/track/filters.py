"""Values inside MLflow search filters, whatever quotes they hold.

MLflow's filter grammar has no escape: a string literal is the text between two single quotes or two
double quotes (checked on MLflow 3.17: `name = 'ana\\'s model'` and `'ana''s model'` match nothing). A
name with one kind of quote is written between the other kind; a name with both cannot be written at
all, so the callers here then search wider and compare in Python. One home, so no caller builds
`f"name = '{name}'"` again (a registered model named `ana's model` was skipped by push, silently).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlflow


def literal(value: str) -> str | None:
    """`value` as a filter string literal, or None when it holds both quote characters."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def equals(field: str, value: str) -> str | None:
    """`field = value` as a filter clause, or None when `value` cannot be written (see `literal`)."""
    text = literal(value)
    return None if text is None else f"{field} = {text}"


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield from page
        token = page.token
        if not token:
            return


def model_versions(client: mlflow.MlflowClient, name: str) -> list[Any]:
    """Every version of registered model `name`, all pages, whatever quotes the name holds."""
    clause = equals("name", name)
    found = _pages(client.search_model_versions, filter_string=clause or "", max_results=1000)
    return [v for v in found if v.name == name]


def runs_tagged(client: mlflow.MlflowClient, experiment_id: str, tags: dict[str, str]) -> list[Any]:
    """The experiment's active runs carrying every tag of `tags` with exactly that value."""
    clauses = [equals(f"tags.`{key}`", value) for key, value in tags.items()]
    written = " AND ".join(c for c in clauses if c is not None)
    found = _pages(client.search_runs, experiment_ids=[experiment_id], filter_string=written,
                   max_results=1000)
    return [r for r in found if all(r.data.tags.get(k) == v for k, v in tags.items())]
