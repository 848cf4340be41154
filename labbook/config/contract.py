"""The contract between labbook and the models and datamodules it trains, read in one place.

A model is a plain ``LightningModule`` and a datamodule a plain ``LightningDataModule`` (``docs/contract.md``);
what labbook may read of them beyond Lightning's own API is declared here, as :class:`Model` and
:class:`DataModule` protocols, and read only through :func:`model_traits` and :func:`data_traits`. Every
member is optional: a model that names no ``monitor`` is checkpointed on its last epoch, one without
``predict`` cannot answer ``labbook predict``. The glue never reads a model's own options by name: what it
must know of them, a model declares (``schedule_fixed_by``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Iterable, Mapping, Protocol, Sequence

MONITOR_MODES = ("min", "max")


class Model(Protocol):
    """What labbook reads of a model (class attributes, or attributes of an instance)."""

    monitor: str  # the validation metric the best checkpoint is chosen by, e.g. "val/loss"
    monitor_mode: str  # "min" or "max" (default "min")
    headline_metric: str  # printed at the end of a run, e.g. "test/exact_match"
    validation_metrics: Sequence[str]  # every metric it logs on validation (a sweep's objective must be one)
    # A constructor argument (a bool) which, when true, fits the learning-rate schedule to the run's length:
    # such a run cannot be resumed to train longer.
    schedule_fixed_by: str

    def predict(self, x: Any) -> Any:
        """A batch of inputs (``DataModule.parse_inputs``) -> predictions (``DataModule.format_outputs``)."""

    def report(self) -> Mapping[str, Any]:
        """Figures (stored as ``plots/<name>.png``), dicts of arrays (``<name>.npz``) or text, after testing."""


class DataModule(Protocol):
    """What labbook reads of a datamodule."""

    dims: Mapping[str, Any]  # what the model must know of the data, passed to its constructor by name
    # The names of a row's values, in order, when an input is a row of a table (after setup() or
    # load_state_dict()): parse_inputs then takes one row a line, its values joined by "," (rows_as_lines).
    input_columns: Sequence[str] | None

    def parse_inputs(self, lines: list[str]) -> Any:
        """``labbook predict``'s text inputs -> a model input batch (``ValueError`` naming a bad one); after
        ``load_state_dict`` of a checkpoint's datamodule state, without reading the data."""

    def format_outputs(self, y: Any) -> list[str]:
        """A model's predictions -> one string per input."""

    def example_inputs(self, n: int) -> list[str]:
        """``n`` inputs of the validation (or test) split as ``parse_inputs`` takes them: a logged model's input
        example. May set the data up."""


@dataclasses.dataclass(frozen=True)
class ModelTraits:
    name: str
    monitor: str | None = None
    monitor_mode: str = "min"
    headline_metric: str | None = None
    validation_metrics: tuple[str, ...] | None = None  # None: not declared
    schedule_fixed_by: str | None = None
    predicts: bool = False
    reports: bool = False


@dataclasses.dataclass(frozen=True)
class DataTraits:
    name: str
    parses_inputs: bool = False
    formats_outputs: bool = False
    gives_examples: bool = False  # example_inputs(n)
    input_columns: tuple[str, ...] | None = None  # None: not declared, or not known yet (before setup)


def model_traits(model: Any) -> ModelTraits:
    """What ``model`` (a model or its class) declares of :class:`Model`."""
    name = model.__name__ if isinstance(model, type) else type(model).__name__
    declared = getattr(model, "validation_metrics", None)
    mode = getattr(model, "monitor_mode", None) or "min"
    if mode not in MONITOR_MODES:
        raise ValueError(f"{name}.monitor_mode={mode!r}: expected one of {', '.join(MONITOR_MODES)}")
    return ModelTraits(name, getattr(model, "monitor", None) or None, mode, getattr(model, "headline_metric", None) or None,
                       None if declared is None else tuple(declared), getattr(model, "schedule_fixed_by", None) or None,
                       callable(getattr(model, "predict", None)), callable(getattr(model, "report", None)))


def data_traits(datamodule: Any) -> DataTraits:
    """What ``datamodule`` declares of :class:`DataModule`, its ``dims`` apart. ``input_columns`` are known after
    ``setup()`` or ``load_state_dict()``: read the traits then."""
    columns = getattr(datamodule, "input_columns", None)
    return DataTraits(type(datamodule).__name__, callable(getattr(datamodule, "parse_inputs", None)),
                      callable(getattr(datamodule, "format_outputs", None)),
                      callable(getattr(datamodule, "example_inputs", None)),
                      None if columns is None else tuple(str(c) for c in columns))


def data_examples(datamodule: Any, n: int | None = None) -> list[str] | None:
    """The datamodule's ``example_inputs(n)`` (its own default count when ``n`` is None), None when it offers
    none. May set the data up: call it where the data are, at training time."""
    if not data_traits(datamodule).gives_examples:
        return None
    examples = datamodule.example_inputs() if n is None else datamodule.example_inputs(n)
    return [str(e) for e in examples]


def rows_as_lines(rows: Iterable[Iterable[Any]]) -> list[str]:
    """Rows of a table (each the values of a datamodule's ``input_columns``, in order) -> the lines its
    ``parse_inputs`` takes: each value as Python's ``repr(float(v))`` (it reads back as the same float64),
    joined by ``,``. A value that is no number is a ``ValueError`` naming its row and place."""
    lines = []
    for i, row in enumerate(rows, start=1):
        cells = []
        for j, value in enumerate(row, start=1):
            try:
                cells.append(repr(float(value)))
            except (TypeError, ValueError):
                raise ValueError(f"row {i}, value {j}: {value!r} is not a number") from None
        lines.append(",".join(cells))
    return lines


def table_as_lines(table: Any, columns: Sequence[str]) -> list[str]:
    """A pandas ``DataFrame`` (anything with ``columns``, ``[list]`` and ``itertuples``; pandas is not imported
    here) -> :func:`rows_as_lines` of its ``columns`` (``data_traits(dm).input_columns``), in that order; other
    columns are left out. A column it lacks is a ``ValueError`` naming every one missing."""
    have = {str(c) for c in table.columns}
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"the input table lacks column(s) {', '.join(map(repr, missing))}; the model reads "
                         f"{', '.join(map(repr, columns))}")
    return rows_as_lines(table[list(columns)].itertuples(index=False, name=None))


def data_dims(datamodule: Any) -> dict[str, Any]:
    """The datamodule's ``dims`` (valid after ``setup("fit")``: reading them may set it up)."""
    return dict(getattr(datamodule, "dims", None) or {})


def constructor_arguments(target: Any, offered: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The entries of ``offered`` (a datamodule's ``dims``) that ``target``'s constructor takes by name, and
    the lines that report those it takes by no name (each naming the key, and a close argument if any)."""
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(offered), []
    taken = {k: v for k, v in offered.items() if k in params}
    names = [n for n, p in params.items() if p.kind is not p.VAR_POSITIONAL]
    unused = []
    for key in sorted(set(offered) - set(taken)):
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        unused.append(f"datamodule dims key {key!r} is taken by no argument of {getattr(target, '__name__', target)}"
                      f"{hint}; it takes {', '.join(names)}")
    return taken, unused


_MOVED = ("lightning_modules.", "datamodules.")  # top-level packages until labbook 0.1's wheel placed them inside


def current_targets(config: Any) -> Any:
    """A stored config (a run's ``config/config.yaml``) with every ``_target_`` naming where the class lives
    now: runs recorded before the built-in models and datamodules moved into ``labbook`` name them
    ``lightning_modules.gmm.…``, ``datamodules.tabular.…``. A project's own ``datamodules.wave.…`` that
    imports stays as it is."""
    if isinstance(config, dict):
        return {k: (_moved(v) if k == "_target_" and isinstance(v, str) else current_targets(v))
                for k, v in config.items()}
    if isinstance(config, list):
        return [current_targets(v) for v in config]
    return config


def _moved(target: str) -> str:
    """``target`` at labbook's place for it, unless it names another module that imports (a project's own)."""
    if not target.startswith(_MOVED):
        return target
    module = target.rpartition(".")[0]
    theirs, ours = _origin(module), _origin(f"labbook.{module}")
    return f"labbook.{target}" if ours is not None and theirs in (None, ours) else target


def _origin(module: str) -> str | None:
    """The file ``module`` would be imported from (None: it does not import)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None
