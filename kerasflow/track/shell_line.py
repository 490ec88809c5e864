"""What a tracking server puts into `mlflow run`'s shell line, checked before `make run` starts it.

MLflow builds a project's `docker run ...` as ONE string and runs it with `bash -c`
(mlflow/projects/backend/local.py); only params are quoted. From the server come the experiment's id
and, for an experiment whose artifact location is a local path, that path, mounted as `-v PATH:PATH`.
Any member of a team server can create an experiment whose location holds `$(...)`: the next `make run`
into it would execute that on the GPU box. So the experiment is resolved here, its id and the path MLflow
would mount are checked, and the run is started by `--experiment-id`: an experiment's location never
changes in MLflow, and an id cannot be renamed under us between the check and the run.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from kerasflow.errors import UserError

# Lazy imports: mlflow, inside the function that uses it (seconds to load).

if TYPE_CHECKING:
    import mlflow

# What may stand unquoted in a shell line; make run's checks of the checkout and DATA use it too.
SHELL_SAFE = r"^[A-Za-z0-9_./@+-]+$"


def mounted_path(location: str) -> str | None:
    """The host path `mlflow run` mounts for an artifact location, or None (a remote or proxied one).
    As MLflow decides it: a location without a scheme or with file: is a LocalArtifactRepository, whose
    folder is the URI's path with its %-escapes decoded."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    if urlparse(location).scheme not in ("", "file"):
        return None
    return local_file_uri_to_path(location)


def experiment_for_docker(client: mlflow.MlflowClient, name: str) -> str:
    """The id of experiment `name` (created when missing, as `mlflow run --experiment-name` would) once
    every value of it that reaches the shell line is safe there; else one line naming the value."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment = client.get_experiment(client.create_experiment(name))
    if experiment.lifecycle_stage != "active":
        raise UserError(f"experiment '{name}' is deleted on the tracking server: restore it (mlflow "
                        "experiments restore) or pass another --experiment")
    if not re.match(SHELL_SAFE, experiment.experiment_id):
        raise UserError(f"the tracking server gave experiment '{name}' the id {experiment.experiment_id!r}, "
                        "which `mlflow run` would put unquoted in a shell line: refused (is it an MLflow "
                        "server?)")
    path = mounted_path(experiment.artifact_location)
    if path is not None and not re.match(SHELL_SAFE, path):
        raise UserError(f"experiment '{name}' stores artifacts at {experiment.artifact_location!r}, which "
                        "`mlflow run` would put unquoted in its shell line (-v PATH:PATH): refused, "
                        "nothing was run. Use another --experiment (its artifact location cannot change)")
    return experiment.experiment_id
