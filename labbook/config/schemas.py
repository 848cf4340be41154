"""Typed schemas for labbook's own config groups (trainer, logger, callbacks, paths, the root), registered in
Hydra's ConfigStore; a model's and a datamodule's are their constructors' (:mod:`labbook.config.signature`).

Each YAML option in ``conf/<group>/`` starts its defaults list with ``/schema/<group>/<name>@_here_``
so Hydra merges it into one of these dataclasses: a misspelled key, a wrong type or a choice that does not
exist fails at compose time. String choices are enums (``str`` enums: ``to_container(..., enum_to_str=True)``
wherever the config is resolved); those whose values are not Python names (Lightning's ``bf16-mixed``) stay
strings checked by ``__post_init__``, which also checks ranges when :func:`validate` turns the composed
config into objects, still before anything is built or any run is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from labbook.errors import ConfigValueError, check_choice, check_range


class Mode(str, Enum):
    min = "min"
    max = "max"


class LogModel(str, Enum):
    """Which checkpoints a finished run logs as MLflow models (labbook/run/model.py)."""

    best = "best"  # the best by the checkpoint's monitor (the last one when nothing is monitored)
    kept = "kept"  # every checkpoint kept: the best and, when it is another epoch, the last
    none = "none"


PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "32", "16", "bf16")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


# --------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: str = "32-true"
    max_epochs: int = 10
    min_epochs: Optional[int] = None
    max_steps: int = -1
    max_time: Optional[str] = None
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    check_val_every_n_epoch: int = 1
    val_check_interval: Optional[float] = None
    log_every_n_steps: int = 50
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    limit_test_batches: Optional[float] = None
    num_sanity_val_steps: int = 0
    deterministic: Any = False
    benchmark: Optional[bool] = None
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    use_distributed_sampler: bool = True
    sync_batchnorm: bool = False

    def __post_init__(self) -> None:
        check_choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        check_choice("trainer.precision", str(self.precision), PRECISIONS)
        check_range("trainer.max_epochs", self.max_epochs, low=1, integer=True)
        check_range("trainer.num_nodes", self.num_nodes, low=1, integer=True)
        check_range("trainer.accumulate_grad_batches", self.accumulate_grad_batches, low=1, integer=True)
        check_range("trainer.log_every_n_steps", self.log_every_n_steps, low=1, integer=True)
        check_range("trainer.check_val_every_n_epoch", self.check_val_every_n_epoch, low=1, integer=True)
        if self.max_steps != -1:
            check_range("trainer.max_steps", self.max_steps, low=1, integer=True)
        if self.gradient_clip_val is not None:
            check_range("trainer.gradient_clip_val", self.gradient_clip_val, low=0)
        if not (self.devices == "auto" or isinstance(self.devices, (list, tuple))
                or (isinstance(self.devices, int) and not isinstance(self.devices, bool) and self.devices >= 1)):
            raise ConfigValueError("trainer.devices", self.devices, "expected an integer ≥ 1, a list of device ids, or 'auto'")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, key)
            if value is not None:
                check_range(f"trainer.{key}", value, low=0)


# ------------------------------------------------------------------------------ models and datamodules
# Their schemas are their constructors' signatures (labbook/config/signature.py): each default is written
# once, in the constructor, and a project's classes are checked as labbook's own are.


# --------------------------------------------------------------------------------------------- logger
@dataclass
class MLflowConfig:
    tracking_uri: Optional[str] = None  # null: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment_name: Optional[str] = None  # null: the experiment preset's name, else <model>-<datamodule>
    run_name: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)
    log_checkpoints: bool = True
    # A finished run logs its best checkpoint as an MLflow model (a pyfunc: load, serve, register it).
    log_model: LogModel = LogModel.best
    flush_every_s: float = 5.0  # metrics are batched into one SQLite commit per interval, not one per step
    heartbeat_s: float = 30.0  # how often a running run says it is alive (`labbook reap` on other hosts); 0: never
    checkpoint_upload_every_s: float = 0.0  # checkpoints reach the store as written, each at most this often
    # A tracking server that does not answer while a run records is waited for this long (every call retried,
    # nothing dropped); then the run stops with one line (labbook/patience.py).
    server_patience_s: float = 300.0
    # MLflow's system metrics (system/cpu_utilization_percentage, memory, GPU where there is one), sampled on
    # rank 0 every system_metrics_every_s seconds while the run is open; false: none.
    system_metrics: bool = True
    system_metrics_every_s: float = 10.0

    def __post_init__(self) -> None:
        check_range("logger.flush_every_s", self.flush_every_s, low=0)
        check_range("logger.heartbeat_s", self.heartbeat_s, low=0)
        check_range("logger.checkpoint_upload_every_s", self.checkpoint_upload_every_s, low=0)
        check_range("logger.server_patience_s", self.server_patience_s, low=0)
        check_range("logger.system_metrics_every_s", self.system_metrics_every_s, low=0, low_inclusive=False)


# ------------------------------------------------------------------------------------------ callbacks
@dataclass
class CheckpointConfig:
    enabled: bool = True
    monitor: Optional[str] = None  # null: the model's own `monitor` attribute
    mode: Optional[Mode] = None  # null: the model's own `monitor_mode`
    save_last: bool = True
    # last.ckpt is rewritten at an epoch's end at most this often, and always at the last epoch (and when a
    # signal stops the run): a SIGKILL loses at most this much training. 0: at every epoch's end, which costs
    # a checkpoint per epoch (~0.3 ms a step for a model with 13-step epochs, benchmarks/overhead.py).
    last_every_s: float = 10.0

    def __post_init__(self) -> None:
        check_range("callbacks.checkpoint.last_every_s", self.last_every_s, low=0)


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    monitor: Optional[str] = None
    mode: Optional[Mode] = None  # null: the model's own `monitor_mode`
    patience: int = 5
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        check_range("callbacks.early_stopping.patience", self.patience, low=1, integer=True)


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    learning_rate_monitor: bool = False


# ---------------------------------------------------------------------------------------------- paths
@dataclass
class PathsConfig:
    root_dir: str = "${hydra:runtime.cwd}"
    output_dir: str = "${hydra:runtime.output_dir}"
    log_dir: str = "${paths.root_dir}/logs"
    checkpoint_dir: str = "${paths.output_dir}/checkpoints"


# ----------------------------------------------------------------------------------------------- root
@dataclass
class SweepConfig:
    # Re-running a sweep's command with sweep.resume=true continues its parent run: jobs whose resolved config
    # already has a FINISHED child are skipped, the others (failed, killed, missing) run again.
    resume: bool = False
    # The Optuna trial this job is (set by labbook's sweeper, hydra/sweeper=optuna, never by hand): its rank 0
    # reports the objective to the trial after each validation epoch, and stops when the pruner says so.
    trial: Optional[int] = None


DIRECTIONS = ("minimize", "maximize")


@dataclass
class TrainConfig:
    datamodule: Any = None
    model: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: MLflowConfig = field(default_factory=MLflowConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    threads: Optional[int] = None  # torch intra-op threads; null keeps torch's default
    test: bool = True  # evaluate the best checkpoint on the test split after fitting
    ckpt_path: Optional[str] = None  # a checkpoint to start fitting from
    resume: Optional[str] = None  # a stored run's id: continue that run from its last checkpoint
    # What a sweep or search optimises: a logged validation metric (never test/...); null: the model's
    # own validation monitor. direction null: the monitor's mode (min -> minimize). A list of metrics (and
    # of directions) is a multi-objective search (hydra/sweeper=optuna); a grid sweep ranks by the first.
    optimized_metric: Any = None
    direction: Any = None
    sweep: SweepConfig = field(default_factory=SweepConfig)


GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "trainer": {"default": TrainerConfig},
    "logger": {"mlflow": MLflowConfig},
    "callbacks": {"default": CallbacksConfig},
    "paths": {"default": PathsConfig},
}


def register(extra: dict[str, dict[str, type]] | None = None) -> None:
    """Put every schema into Hydra's ConfigStore under ``schema/<group>/<name>``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, options in {**GROUP_SCHEMAS, **(extra or {})}.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def validate(cfg: Any) -> None:
    """Run every group's range and choice checks on the composed config: labbook's own groups'
    (``__post_init__``), and the model's and datamodule's against their constructors' signatures
    (:mod:`labbook.config.signature`, which also fills in their defaults)."""
    from omegaconf import OmegaConf

    from labbook.config.objective import one_or_list
    from labbook.config.signature import complete
    from labbook.errors import UserError, required

    complete(cfg)
    node = cfg.get("datamodule")
    if node is not None and OmegaConf.get_type(node) not in (dict, None):  # the datamodule's must be set now
        gaps = [k for k in node if OmegaConf.is_missing(node, k)]
        if gaps:
            raise UserError(required(f"datamodule.{gaps[0]}"))

    if cfg.get("threads") is not None:
        check_range("threads", cfg.threads, low=1, integer=True)
    for metric in one_or_list(cfg.get("optimized_metric")):
        if not isinstance(metric, str) or not metric:
            raise ConfigValueError("optimized_metric", metric, "a logged validation metric's name (val/...), or a "
                                   "list of them")
        if metric.startswith("test/"):
            raise ConfigValueError("optimized_metric", metric, "a sweep tunes on a validation metric (val/...), "
                                   "never on the test split, which must stay unseen until the chosen run is evaluated")
    for direction in one_or_list(cfg.get("direction")):
        if direction not in DIRECTIONS:
            raise ConfigValueError("direction", direction, f"one of {', '.join(DIRECTIONS)} (null: the monitor's "
                                   "mode), or a list of them, one per objective")
    for group in ("trainer", "logger", "callbacks"):
        node = cfg.get(group)
        if node is not None and OmegaConf.get_type(node) not in (dict, None):
            OmegaConf.to_object(node)
