"""A run's MLflow models, found, fetched and registered (logging them is :mod:`labbook.run.model`'s).

What names a model, everywhere labbook takes one (``predict``, ``serve``, ``register``):

* a run id (or an unambiguous prefix of one): the run's best logged model, the newest when a resume logged
  another (:func:`logged_models`);
* a sweep's or a search's parent run: its best child's, by the one rule for "best" (the child the sweep's
  summary names, :data:`labbook.names.SWEEP_BEST_RUN`);
* ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``: a registered model's version;
* ``models:/m-…``: a logged model by its id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import Any, Iterator

from labbook import names
from labbook.errors import UserError

MODELS = "models:/"


@dataclasses.dataclass
class ModelRef:
    """A model to load: its URI for MLflow (``models:/<model_id>``), its logged model id, the run it came from,
    and a few words saying which it is."""

    uri: str
    model_id: str
    run_id: str | None
    described: str


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def logged_models(mlflow_client: Any, experiment_id: str, run_id: str) -> list[Any]:
    """The run's logged models, the best checkpoint's first, the newest (highest epoch) first among them."""
    found = mlflow_client.search_logged_models(experiment_ids=[experiment_id],
                                               filter_string=f"source_run_id = '{run_id}'")
    return sorted(found, key=lambda m: (m.tags.get(names.MODEL_CHECKPOINT_KIND) == "best",
                                        int(m.tags.get(names.MODEL_EPOCH, -1)), m.creation_timestamp),
                  reverse=True)


def run_model(uri: str, run: Any) -> Any | None:
    """The run's (a :class:`labbook.store.read.RunRecord`) model to use: the best, newest; None when it has none."""
    models = logged_models(client(uri), run.experiment_id, run.run_id)
    return models[0] if models else None


def model_checkpoint(uri: str, model: Any, into: Path) -> Path:
    """A local copy of the checkpoint a logged model holds."""
    import yaml
    from mlflow.artifacts import download_artifacts

    base = model.artifact_location.rstrip("/")
    spec = yaml.safe_load(Path(download_artifacts(f"{base}/MLmodel", dst_path=str(into), tracking_uri=uri)).read_text())
    stored = spec["flavors"]["python_function"]["artifacts"][names.MODEL_CHECKPOINT]["path"]
    return Path(download_artifacts(f"{base}/{stored}", dst_path=str(into), tracking_uri=uri))


def checkpoint_of(reader: Any, run: Any, into: Path, why: str = "") -> Path:
    """A local copy of the checkpoint that answers for ``run``: its best (:func:`stored_checkpoint`: in the run,
    or in its model once it finished), else its last; a :class:`UserError` when it has neither."""
    for kind in ("best", "last"):
        found = stored_checkpoint(reader, run, kind, into)
        if found is not None:
            return found
    raise UserError(f"run {run.run_id} has no {names.BEST_CHECKPOINT} or {names.LAST_CHECKPOINT}{why}")


def has_checkpoint(reader: Any, run: Any, kind: str) -> bool:
    """Whether the run has a ``kind`` (``best``, ``last``) checkpoint: stored in it, or held by one of its models."""
    return (names.STORED_CHECKPOINT[kind] in reader.artifacts(run, names.CHECKPOINTS)
            or _newest(reader.uri, run, kind) is not None)


def stored_checkpoint(reader: Any, run: Any, kind: str, into: Path) -> Path | None:
    """A local copy of the run's ``kind`` checkpoint: the one stored in the run (while it trains, or once it
    stopped), else the one its newest model of that kind holds (it finished: the model has the bytes); None
    when it has neither."""
    if names.STORED_CHECKPOINT[kind] in reader.artifacts(run, names.CHECKPOINTS):
        return reader.checkpoint(run, [names.STORED_CHECKPOINT[kind]], into)
    model = _newest(reader.uri, run, kind)
    return None if model is None else model_checkpoint(reader.uri, model, into)


def _newest(uri: str, run: Any, kind: str) -> Any | None:
    return next((m for m in logged_models(client(uri), run.experiment_id, run.run_id)
                 if m.tags.get(names.MODEL_CHECKPOINT_KIND) == kind), None)


def resolve(uri: str, reader: Any, what: str) -> ModelRef:
    """The model ``what`` names (see the module's doc), or a :class:`UserError` naming what is missing."""
    mlflow_client = client(uri)
    if what.startswith(MODELS):
        return _registered(mlflow_client, what)
    run = reader.find_run(what)
    described = f"run {run.run_id}"
    best = run.tags.get(names.SWEEP_BEST_RUN) or run.tags.get(names.SEARCH_BEST + "run_id")
    if best:  # a sweep's or search's parent: the model of its best child
        run, described = reader.find_run(best), f"run {best} (the best of sweep {run.run_id})"
    elif run.tags.get(names.SWEEP_ROLE) == "parent":
        raise UserError(f"sweep {run.run_id} has no best run (yet): its summary names it when its jobs are done")
    model = run_model(uri, run)
    if model is None:
        raise UserError(f"{described} has no MLflow model: a run logs one when it finishes (logger.log_model; "
                        f"status {run.status}); `labbook predict {run.run_id[:8]}` still answers from its checkpoints")
    return ModelRef(f"{MODELS}{model.model_id}", model.model_id, run.run_id, described)


def answer_with(uri: str, what: str, read_inputs: Any) -> list[str]:
    """The answers of the model ``what`` (a ``models:/`` URI) to ``read_inputs()``, through MLflow's pyfunc: the
    model is found before the inputs are read (a mistyped name is said before stdin is waited for)."""
    import pandas as pd

    ref = _registered(client(uri), what)
    inputs = read_inputs()
    return [str(answer) for answer in load(uri, ref.uri).predict(pd.DataFrame({"input": inputs}))]


def load(uri: str, model_uri: str) -> Any:
    """``mlflow.pyfunc.load_model(model_uri)`` from the store ``uri``."""
    import mlflow.pyfunc

    with using_store(uri):
        return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)  # no requirements check: ~0.2 s


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[None]:
    """MLflow's process-wide store is ``uri`` inside (what its model logging, loading and artifact repositories
    read); as it was outside."""
    from mlflow.tracking._tracking_service import utils

    before = utils._tracking_uri  # None unless something set one: MLflow then reads the environment
    utils._tracking_uri = uri
    try:
        yield
    finally:
        utils._tracking_uri = before


def _registered(mlflow_client: Any, uri: str) -> ModelRef:
    from mlflow.exceptions import MlflowException

    rest = uri[len(MODELS):]
    try:
        if rest.startswith("m-") and "/" not in rest and "@" not in rest:
            model = mlflow_client.get_logged_model(rest)
            return ModelRef(uri, model.model_id, model.source_run_id, f"model {rest}")
        if "@" in rest:
            name, alias = rest.split("@", 1)
            version = mlflow_client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = rest.partition("/")
            version = mlflow_client.get_model_version(name, number or _latest(mlflow_client, name))
    except MlflowException as exc:
        raise UserError(f"{uri}: {str(exc).splitlines()[0]}") from None
    model_id = version.model_id or (version.source[len(MODELS):] if version.source.startswith(MODELS + "m-") else None)
    if not model_id:
        raise UserError(f"{uri} is version {version.version} of {version.name}, which no logged model backs")
    return ModelRef(f"{MODELS}{model_id}", model_id, version.run_id, f"{version.name} version {version.version}")


def _latest(mlflow_client: Any, name: str) -> str:
    versions = mlflow_client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise UserError(f"registered model {name!r} has no versions")
    return str(max(int(v.version) for v in versions))


def register(uri: str, reader: Any, what: str, name: str, alias: str | None) -> tuple[ModelRef, str]:
    """Register the model ``what`` names as a new version of ``name`` (created when new), with ``alias``; the
    version points at the logged model. Nothing is created when ``what`` has no model."""
    ref = resolve(uri, reader, what)  # first: a run without a model leaves no empty registered model behind
    mlflow_client = client(uri)
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow_logger = logging.getLogger("mlflow")
    level = mlflow_logger.level
    mlflow_logger.setLevel(logging.WARNING)  # not its "Successfully registered model" lines: ours say it
    try:
        # MLflow's own registration links the version and the logged model both ways; its lines are not printed
        # (ours say what happened).
        with using_store(uri), contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            version = mlflow.register_model(ref.uri, name)
        if alias:
            mlflow_client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise UserError(f"register {name!r}: {str(exc).splitlines()[0]}") from None
    finally:
        mlflow_logger.setLevel(level)
    return ref, str(version.version)
