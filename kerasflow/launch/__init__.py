"""`make run` on the host: the launcher that takes a run from the command line to a finished MLflow run.

One run is a list of plain steps (kerasflow/launch/run.py): claim the name, check the box, detach into
tmux when asked, start or reuse the store's server, create the MLflow run (so `make queue` shows its id
while it waits), wait in the machine's line, build or reuse the image, `mlflow run --run-id` it in the
container, stop it KILLED on a user's stop, notify. The image (tag, build, the shared `kerasflow:latest`
name MLproject gives) is kerasflow/launch/image.py. A second backend (Slurm) plugs in where the run
starts; everything before and after stays the same.

Why Python and not the bash driver it replaces: the driver ran itself up to three times per run, called
nine `kerasflow` subcommands from twelve places and scraped the run id from `mlflow run`'s log. Here the
run id exists before anything waits, and each step is a function a test can call.
"""
