"""A run's MLflow model: its best checkpoint and resolved config, logged as an MLflow 3 *logged model* with the
pyfunc flavour, so that ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and the model registry take it.

What the pyfunc answers is what ``labbook predict`` answers: the same rebuild (the model class from the
checkpoint, the datamodule from the config and its preprocessing state from the checkpoint) and the same
``parse_inputs → predict → format_outputs`` (:func:`labbook.config.rebuild.answer`). Its inputs are one string
per example, as ``labbook predict`` takes them — a list, or a column ``input`` of a DataFrame (``{"input":
[...]}``) — and, for tabular data, also a DataFrame with the data's feature columns.

The logged model is linked to its run with its ``step`` (the checkpoint's epoch), and the run's validation
metrics at the checkpoint's step are linked to it, each with the run's dataset (MLflow keeps one row in the
run's history: the link is written with the metric's own timestamp and value). The checkpoint's bytes are
stored once: the model holds the best checkpoint, and the run's own copy (``checkpoints/best.ckpt``, uploaded
while it trained so that a stopped run kept it) is removed once the model holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Mapping, Sequence

import mlflow.pyfunc

from labbook import names
from labbook.errors import UserError

TEXT_COLUMN = "input"  # a DataFrame's column of inputs in labbook predict's text form


def input_lines(model_input: Any, columns: Sequence[str] | None) -> list[str]:
    """What the pyfunc was given, as ``labbook predict``'s text lines: a string, a list of strings, a DataFrame
    (or dict) with a column ``input`` of strings, or — with ``columns``, a tabular model's feature columns —
    a DataFrame holding those columns (in any order; each row written as the comma-separated numbers
    ``parse_inputs`` reads, exactly: ``repr`` of a float reads back as the same float)."""
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if isinstance(model_input, pd.Series):
        model_input = model_input.to_frame(TEXT_COLUMN)
    if not isinstance(model_input, pd.DataFrame):
        return [str(x) for x in model_input]
    frame = model_input.dropna(axis=1, how="all")  # the optional columns MLflow's schema check filled with NaN
    if TEXT_COLUMN in frame.columns:
        return [str(x) for x in frame[TEXT_COLUMN]]
    if columns and set(columns) <= {str(c) for c in frame.columns}:
        from labbook.config.contract import table_as_lines

        try:
            return table_as_lines(frame, columns)
        except ValueError as exc:
            raise UserError(f"input: {exc}") from None
    if frame.shape[1] == 1 and not columns:  # a list MLflow turned into a DataFrame of one unnamed column
        return [str(x) for x in frame.iloc[:, 0]]
    want = f"a column {TEXT_COLUMN!r} of strings" + (f", or the columns {', '.join(columns)}" if columns else "")
    if frame.shape[1] == 0:  # MLflow's schema check dropped what the signature does not name (a bare list)
        raise UserError(f"no input reached the model: it takes {want} (as {{{TEXT_COLUMN!r}: [...]}}, one string an "
                        "example); a bare list is dropped by MLflow's schema check for a tabular model")
    raise UserError(f"the model's input has the columns {', '.join(map(str, frame.columns))}: it takes {want}")


class LabbookModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: a run's model rebuilt from the logged checkpoint and config; ``predict`` answers as
    ``labbook predict`` does, one string per input."""

    # Inputs come in several forms (input_lines), so no type hint can say them: MLflow's type-hint validation
    # (and its warning that predict has none) is skipped; the logged signature still describes them.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import yaml

        from labbook.config.contract import data_traits
        from labbook.config.rebuild import rebuild

        config = yaml.safe_load(Path(context.artifacts[names.MODEL_CONFIG]).read_text())
        rebuilt = rebuild(config, Path(context.artifacts[names.MODEL_CHECKPOINT]))
        self.model, self.datamodule = rebuilt.model, rebuilt.datamodule
        self.columns = data_traits(self.datamodule).input_columns

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads type hints as a schema
        from labbook.config.rebuild import answer

        return answer(self.model, self.datamodule, input_lines(model_input, self.columns))


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint file to log, and where in the run it was taken."""

    path: Path
    kind: str  # "best" or "last"
    epoch: int
    global_step: int


def read_position(path: Path) -> Checkpoint:
    """The epoch and global step a checkpoint file was written at (its kind from its name)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    kind = "best" if path.name.startswith("best") else "last"
    return Checkpoint(path, kind, int(state.get("epoch", 0)), int(state.get("global_step", 0)))


def signature_and_example(datamodule: Any) -> tuple[Any, Any]:
    """The pyfunc's signature and input example: one string per example (labbook predict's form); a tabular
    datamodule's feature columns besides, each optional, so that either form passes MLflow's schema check."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from labbook.config.contract import data_examples, data_traits

    examples = data_examples(datamodule)
    columns = data_traits(datamodule).input_columns  # known once the data are set up (examples set them up)
    outputs = Schema([ColSpec("string")])
    if not columns:
        return ModelSignature(Schema([ColSpec("string")]), outputs), (list(examples) if examples else None)
    import pandas as pd

    inputs = Schema([ColSpec("string", TEXT_COLUMN, required=False),
                     *(ColSpec("double", c, required=False) for c in columns)])
    example = None
    if examples:  # the DataFrame form: the text form is in the docs, and shown by its column in the schema
        rows = [[float(v) for v in line.split(",")] for line in examples]
        example = pd.DataFrame(rows, columns=list(columns))
    return ModelSignature(inputs, outputs), example


def requirements() -> list[str]:
    """What the model needs installed, pinned to this environment (no inference: it would cost seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("labbook", "torch", "pytorch-lightning", "hydra-core", "mlflow"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return pins


def project_code(*objects: Any) -> list[str]:
    """The folders (or files) of the project code ``objects``' classes come from, for the model to carry
    (MLflow's ``code_paths``: put on ``sys.path`` wherever the model is loaded). labbook's own classes and
    installed packages are requirements, not code to copy."""
    import sys

    found = []
    for obj in objects:
        top = type(obj).__module__.split(".")[0]
        file = getattr(sys.modules.get(top), "__file__", None)
        if top in ("labbook", "__main__") or file is None:
            continue
        path = Path(file).parent if Path(file).name == "__init__.py" else Path(file)
        if {"site-packages", "dist-packages"} & set(path.parts) or str(path) in found:
            continue
        found.append(str(path))
    return found


def log_model(client: Any, run_id: str, checkpoint: Checkpoint, config_yaml: str, model: Any,
              datamodule: Any) -> str:
    """Log ``checkpoint`` as a logged model of the run ``run_id`` (``client``: the run's patient client);
    returns its model id. The run's validation metrics at the checkpoint's step are linked to it. A project's
    own model and datamodule code travel with it (:func:`project_code`)."""
    from mlflow.entities import LoggedModelOutput, Metric

    run = client.get_run(run_id)
    dataset = next((d.dataset for d in (run.inputs.dataset_inputs if run.inputs else [])), None)
    signature, example = signature_and_example(datamodule)
    logged = client.create_logged_model(
        run.info.experiment_id, name=names.LOGGED_MODEL, source_run_id=run_id, model_type="labbook",
        params={k: v for k, v in run.data.params.items()},
        tags={names.MODEL_CHECKPOINT_KIND: checkpoint.kind, names.MODEL_EPOCH: str(checkpoint.epoch),
              names.MODEL_GLOBAL_STEP: str(checkpoint.global_step)})
    with tempfile.TemporaryDirectory() as tmp, _quiet_mlflow(), _no_requirements_check():
        config = Path(tmp) / "config.yaml"
        config.write_text(config_yaml)
        mlflow.pyfunc.log_model(
            name=names.LOGGED_MODEL, python_model=LabbookModel(), model_id=logged.model_id,
            artifacts={names.MODEL_CHECKPOINT: str(checkpoint.path), names.MODEL_CONFIG: str(config)},
            signature=signature, input_example=example, pip_requirements=requirements(), step=checkpoint.epoch,
            code_paths=project_code(model, datamodule) or None)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=checkpoint.epoch)])
    linked = []
    for key in run.data.metrics:
        if not key.startswith(("val/", "val_")):
            continue
        at = [m for m in client.get_metric_history(run_id, key) if m.step <= checkpoint.global_step]
        if at and not math.isnan(at[-1].value):
            m = at[-1]
            linked.append(Metric(key, m.value, m.timestamp, m.step, model_id=logged.model_id, run_id=run_id,
                                 dataset_name=dataset.name if dataset else None,
                                 dataset_digest=dataset.digest if dataset else None))
    if linked:
        client.log_batch(run_id, metrics=linked, synchronous=True)
    from mlflow.entities import LoggedModelStatus

    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id


# MLflow's check of a model's pip requirements against the installed packages (``mlflow.utils.requirements_utils``),
# by the names it is called under while a model is saved (``mlflow.utils.environment``) and loaded (``mlflow.pyfunc``:
# MLflow's validation of an input example loads the model).
_REQUIREMENTS_CHECK = "warn_dependency_requirement_mismatches"
_CHECKED_IN = ("mlflow.utils.environment", "mlflow.pyfunc")


@contextlib.contextmanager
def _no_requirements_check() -> Iterator[None]:
    """MLflow's check of the model's pip requirements against the installed packages, skipped while the model
    is logged. The check maps every installed module to its distribution, listing the files of every installed
    package that declares no top-level modules (``importlib_metadata.packages_distributions``: ~17,500 files
    here, 0.2 s of CPU, up to 0.55 s of wall time on a loaded machine: ~70 % of logging a model;
    ``benchmarks/model_logging.py --breakdown``). It can find nothing: :func:`requirements` pins the versions
    installed in this very environment; and all it could do is a warning, which :class:`_quiet_mlflow`
    silences. Where MLflow no longer has the check under these names, nothing is skipped (the benchmark's goal
    then fails, not the run)."""
    import importlib

    skipped = []
    for name in _CHECKED_IN:
        module = importlib.import_module(name)
        if callable(getattr(module, _REQUIREMENTS_CHECK, None)):
            skipped.append((module, getattr(module, _REQUIREMENTS_CHECK)))
            setattr(module, _REQUIREMENTS_CHECK, _no_check)
    try:
        yield
    finally:
        for module, check in skipped:
            setattr(module, _REQUIREMENTS_CHECK, check)


def _no_check(requirements: Any) -> None:
    return None


class _quiet_mlflow:
    """MLflow's advice while a model is logged (the cloudpickle warning, "Creating initial tables"...) is not
    the user's business; its errors still raise."""

    def __enter__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._logger = logging.getLogger("mlflow")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)
        self._warnings.__exit__(*exc)


def model_files(state: Mapping[str, Any], which: str) -> list[Path]:
    """The checkpoint files to log: ``which`` is ``best`` (the best, else the last when nothing was monitored)
    or ``kept`` (the best and the last)."""
    best, last = (Path(state[k]) if state.get(k) else None for k in ("best", "last"))
    best = best if best is not None and best.exists() else None
    last = last if last is not None and last.exists() else None
    if which == "best":
        return [p for p in (best or last,) if p is not None]
    return [p for p in (best, last) if p is not None]


def kept_checkpoints(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """``checkpoints`` less a last one of the same epoch as the best (the same model, twice)."""
    best = {c.epoch for c in checkpoints if c.kind == "best"}
    return [c for c in checkpoints if c.kind == "best" or c.epoch not in best]
