"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in ``conf/<group>/`` starts its defaults list with ``/schema/<group>/<name>@_here_``
so Hydra merges it into one of these dataclasses: a misspelled key, a wrong type or a choice that does not
exist fails at compose time. String choices are enums (``str`` enums: a constructor gets the plain string,
``to_container(..., enum_to_str=True)`` wherever the config is resolved); those whose values are not Python
names (``kmeans++``, Lightning's ``bf16-mixed``) stay strings checked by ``__post_init__``, which also
checks ranges when :func:`validate` turns the composed config into objects, still before anything is
built or any run is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from labbook.errors import ConfigValueError, check_choice, check_range


class CovarianceType(str, Enum):
    full = "full"
    diag = "diag"
    spherical = "spherical"
    tied = "tied"


class ComputeDtype(str, Enum):
    float64 = "float64"
    float32 = "float32"


class DatesSplit(str, Enum):
    random = "random"
    book = "book"  # the book's seed-1984 split


class Mode(str, Enum):
    min = "min"
    max = "max"


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


# --------------------------------------------------------------------------------------------- models
# `optimizer` fields take a `_partial_: true` torch optimizer config, or null for the model's default.


@dataclass
class GMMConfig:
    _target_: str = "labbook.lightning_modules.gmm.GaussianMixtureEM"
    n_components: int = 4
    covariance_type: CovarianceType = CovarianceType.full
    tol: float = 1e-4  # stop once the mean train log-likelihood improves by less than this
    reg_covar: float = 1e-6
    init: str = "kmeans"  # kmeans (3 Lloyd passes from k-means++ seeds) | kmeans++ | random; a string: "kmeans++" is no Python name for an enum
    n_init: int = 12  # starts; the one with the best log-likelihood of the seeding sample is fitted
    seed: int = 0
    means_init: Optional[list[list[float]]] = None  # [K, D] initial means; overrides init
    compute_dtype: ComputeDtype = ComputeDtype.float64  # float32: a faster E-step; statistics stay float64
    init_samples: int = 100_000  # the seeding runs over at most this many training points

    def __post_init__(self) -> None:
        check_range("model.n_components", self.n_components, low=1, integer=True)
        check_range("model.tol", self.tol, low=0)
        check_range("model.reg_covar", self.reg_covar, low=0)
        check_choice("model.init", self.init, ("kmeans", "kmeans++", "random"))
        check_range("model.n_init", self.n_init, low=1, integer=True)
        check_range("model.init_samples", self.init_samples, low=1, integer=True)


@dataclass
class PolynomialConfig:
    _target_: str = "labbook.lightning_modules.polynomial.CubicPolynomial"
    optimizer: Any = None


@dataclass
class Seq2SeqConfig:
    _target_: str = "labbook.lightning_modules.seq2seq.AttentionSeq2Seq"
    wordvec_size: int = 16
    hidden_size: int = 256
    optimizer: Any = None
    one_cycle: bool = True  # the optimizer's lr is the peak of a one-cycle schedule over the whole run
    n_report: int = 3

    def __post_init__(self) -> None:
        check_range("model.wordvec_size", self.wordvec_size, low=1, integer=True)
        check_range("model.hidden_size", self.hidden_size, low=1, integer=True)
        check_range("model.n_report", self.n_report, low=0, integer=True)


@dataclass
class TransformerConfig:
    _target_: str = "labbook.lightning_modules.transformer.Transformer"
    d_model: int = 64
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.0  # each question is seen once: nothing to regularise against
    optimizer: Any = None
    one_cycle: bool = True
    n_report: int = 3

    def __post_init__(self) -> None:
        for key in ("d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff"):
            check_range(f"model.{key}", getattr(self, key), low=1, integer=True)
        if self.d_model % self.n_heads:
            raise ConfigValueError("model.n_heads", self.n_heads, f"must divide model.d_model={self.d_model}")
        check_range("model.dropout", self.dropout, low=0, high=1, high_inclusive=False)
        check_range("model.n_report", self.n_report, low=0, integer=True)


@dataclass
class LSTMConfig:
    _target_: str = "labbook.lightning_modules.lstm.LSTMForecaster"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    optimizer: Any = None

    def __post_init__(self) -> None:
        check_range("model.hidden_size", self.hidden_size, low=1, integer=True)
        check_range("model.num_layers", self.num_layers, low=1, integer=True)
        check_range("model.dropout", self.dropout, low=0, high=1, high_inclusive=False)


# ---------------------------------------------------------------------------------------- datamodules
@dataclass
class _TabularConfig:
    batch_size: int = 8192
    num_workers: int = 0
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    standardize: bool = False
    shuffle: bool = False

    def __post_init__(self) -> None:
        check_range("datamodule.batch_size", self.batch_size, low=1, integer=True)
        check_range("datamodule.num_workers", self.num_workers, low=0, integer=True)
        check_range("datamodule.val_fraction", self.val_fraction, low=0, high=1, high_inclusive=False)
        check_range("datamodule.test_fraction", self.test_fraction, low=0, high=1, high_inclusive=False)
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigValueError("datamodule.val_fraction+test_fraction", self.val_fraction + self.test_fraction,
                                   "expected a sum below 1 so that a training split remains")


@dataclass
class BlobsConfig(_TabularConfig):
    _target_: str = "labbook.datamodules.tabular.BlobsDataModule"
    n_samples: int = 30000
    n_features: int = 2
    n_centers: int = 4
    cluster_std: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("datamodule.n_samples", self.n_samples, low=10, integer=True)
        check_range("datamodule.n_features", self.n_features, low=1, integer=True)
        check_range("datamodule.n_centers", self.n_centers, low=1, integer=True)
        check_range("datamodule.cluster_std", self.cluster_std, low=0, low_inclusive=False)


@dataclass
class SineCurveConfig:
    _target_: str = "labbook.datamodules.polynomial.SineCurveDataModule"
    n_points: int = 2000
    batch_size: int = 2000
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("datamodule.n_points", self.n_points, low=4, integer=True)
        check_range("datamodule.batch_size", self.batch_size, low=1, integer=True)


@dataclass
class DatesConfig:
    _target_: str = "labbook.datamodules.dates.DatesDataModule"
    n_samples: int = 50000
    n_test: int = 5000
    val_fraction: float = 0.1
    seed: int = 0
    batch_size: int = 128
    num_workers: int = 0
    reverse_input: bool = True
    path: Optional[str] = None  # a file in the book's date.txt layout instead of generated data
    split: DatesSplit = DatesSplit.random

    def __post_init__(self) -> None:
        check_range("datamodule.n_samples", self.n_samples, low=2, integer=True)
        check_range("datamodule.n_test", self.n_test, low=1, high=self.n_samples - 1, integer=True)
        check_range("datamodule.val_fraction", self.val_fraction, low=0, high=1, high_inclusive=False)
        check_range("datamodule.batch_size", self.batch_size, low=1, integer=True)


@dataclass
class _SeriesConfig:
    window: int = 20
    horizon: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    batch_size: int = 32
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("datamodule.window", self.window, low=1, integer=True)
        check_range("datamodule.horizon", self.horizon, low=1, integer=True)
        check_range("datamodule.val_fraction", self.val_fraction, low=0, high=1, low_inclusive=False, high_inclusive=False)
        check_range("datamodule.test_fraction", self.test_fraction, low=0, high=1, low_inclusive=False, high_inclusive=False)
        check_range("datamodule.batch_size", self.batch_size, low=1, integer=True)


@dataclass
class SineConfig(_SeriesConfig):
    _target_: str = "labbook.datamodules.series.SineDataModule"
    length: int = 1000
    period: float = 50.0
    amplitude: float = 1.0
    noise_std: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("datamodule.length", self.length, low=10, integer=True)
        check_range("datamodule.period", self.period, low=0, low_inclusive=False)
        check_range("datamodule.noise_std", self.noise_std, low=0)


@dataclass
class SunspotsConfig(_SeriesConfig):
    _target_: str = "labbook.datamodules.series.SunspotsDataModule"


@dataclass
class IrisConfig(_TabularConfig):
    _target_: str = "labbook.datamodules.tabular.IrisDataModule"
    batch_size: int = 64  # 150 rows: a few batches an epoch
    val_fraction: float = 0.2


@dataclass
class CSVConfig(_TabularConfig):
    _target_: str = "labbook.datamodules.tabular.CSVDataModule"
    path: str = "???"
    label_column: Optional[str] = None
    columns: Optional[list[str]] = None
    standardize: bool = True  # a user's columns come in any units; EM's covariances are better conditioned


# --------------------------------------------------------------------------------------------- logger
@dataclass
class MLflowConfig:
    tracking_uri: Optional[str] = None  # null: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment_name: Optional[str] = None  # null: the experiment preset's name, else <model>-<datamodule>
    run_name: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)
    log_checkpoints: bool = True
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
    "model": {"gmm": GMMConfig, "polynomial": PolynomialConfig, "seq2seq": Seq2SeqConfig,
              "transformer": TransformerConfig, "lstm": LSTMConfig},
    "datamodule": {"blobs": BlobsConfig, "iris": IrisConfig, "tabular": CSVConfig, "sine_curve": SineCurveConfig,
                   "dates": DatesConfig, "sine": SineConfig, "sunspots": SunspotsConfig},
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
    """Run every group's range and choice checks (``__post_init__``) on the composed config."""
    from omegaconf import OmegaConf

    from labbook.config.objective import one_or_list

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
    for group in ("trainer", "model", "datamodule", "logger", "callbacks"):
        node = cfg.get(group)
        if node is not None and OmegaConf.get_type(node) not in (dict, None):
            OmegaConf.to_object(node)
