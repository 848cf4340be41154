"""Gaussian mixture model fitted by exact, streamed expectation-maximisation.

One Lightning training epoch is one EM iteration over the whole training set, computed in
batches: the E-step of every batch adds to sufficient statistics, and the M-step runs once at
the end of the epoch, after the statistics are summed over all processes. The arithmetic
follows scikit-learn's ``GaussianMixture`` so that, in float64, both produce the same
iterates from the same starting point.

Notation (shapes in brackets): N samples x_n [D], K components with weights π_k, means μ_k [D]
and covariances Σ_k. The precision Cholesky factor U_k is the upper-triangular [D, D] matrix
with U_k U_kᵀ = Σ_k⁻¹ (scikit-learn's ``precisions_cholesky_``).

E-step, for every sample and component::

    y_nk        = (x_n − μ_k)ᵀ U_k                                       [D]
    log N(x|k)  = −½ (D log 2π + ‖y_nk‖²) + Σ_d log (U_k)_dd
    log p(x_n)  = logsumexp_k (log π_k + log N(x_n|k))
    r_nk        = exp(log π_k + log N(x_n|k) − log p(x_n))

Sufficient statistics, summed over batches and processes in float64, around a shift c (the
mixture mean Σ_k π_k μ_k of the current parameters, see below), x̃_n = x_n − c::

    N_k  = Σ_n r_nk,   S1_k = Σ_n r_nk x̃_n,   S2_k = Σ_n r_nk x̃_n x̃_nᵀ (diag: Σ_n r_nk x̃_n²)

All three come from one GEMM per batch, r [K, B] @ F [B, M] with F_n = [x̃_ni x̃_nj (i ≤ j), x̃_n, 1]
(diag/spherical: [x̃_n², x̃_n, 1]).

M-step, with ε = 10·float64 eps added to N_k as scikit-learn does::

    π_k = (N_k + ε) / Σ_j (N_j + ε)
    μ_k = c + m_k,  m_k = S1_k / (N_k + ε)
    Σ_k = (S2_k − S1_k m_kᵀ − m_k S1_kᵀ + N_k m_k m_kᵀ) / (N_k + ε) + reg_covar·I

``diag`` keeps only the diagonal of Σ_k, ``spherical`` its mean over the D dimensions, and
``tied`` pools Σ_j (…)_j / Σ_j (N_j + ε). Without the shift, Σ_k would be the difference of two
large numbers whenever the data sit far from the origin; with it the cancellation is only of
order ‖μ_k − c‖² / σ_k², which float64 absorbs. (Centering on each μ_k instead would remove even
that, but needs a [B, K, D] weighted outer product per batch instead of the single GEMM.)
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Sequence, get_args

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.utilities.distributed import gather_all_tensors

# The allowed values, declared once: the config reads the Literal (labbook/config/signature.py), the constructor
# checks against its values.
CovarianceType = Literal["full", "diag", "spherical", "tied"]
Init = Literal["kmeans", "kmeans++", "random"]  # kmeans: 3 Lloyd passes from k-means++ seeds
ComputeDtype = Literal["float64", "float32"]  # float32: a faster E-step, float64 sums
_COVARIANCE_TYPES = get_args(CovarianceType)
_INITS = get_args(Init)
_DTYPES = dict(zip(get_args(ComputeDtype), (torch.float64, torch.float32)))
# A component whose total responsibility is below this (in units of samples) has no data to
# estimate a mean or a covariance from.
_EMPTY_MASS = 1e-8
# Rows per E-step chunk keep each [rows, columns] temporary at ~8 MB in float64, small enough to stay in cache.
_MAX_CHUNK_ELEMENTS = 1 << 20
_REPORT_SAMPLE = 2000
# init="kmeans": Lloyd passes stop when the centres move by at most this much in total, Σ_k ‖c_k' − c_k‖²,
# relative to the mean variance of the features (scikit-learn's KMeans tol), or after this many passes (the
# fewest passes to scikit-learn's log-likelihood, with n_init=12: benchmarks/gmm_init.py).
_KMEANS_TOL = 1e-4
_KMEANS_MAX_ITER = 3
# The screening of the n_init starts (``_screen``, the class docstring): EM of all starts at once on every j-th row of
# the seeding sample, about _SCREEN_ROWS_PER_PARAMETER rows per free parameter of the mixture (``n_parameters``), at
# least _SCREEN_MIN_ROWS, all of the sample when smaller. The rows must rank the starts as the training set would, and
# the screening costs in proportion to them. 10 a parameter: on the 6 data sets of benchmarks/gmm_vs_sklearn.py
# --mode fit all 24 default fits (4 seeds each) reached the best of 4 scikit-learn fits within 0.01 nats a row (with
# 20, 23 of 24: one missed by 0.0196), and the fits took 20–45 % less time where the screening dominates (many
# parameters, few rows); 5 a parameter missed in 2 of 24. benchmarks/gmm_screening.py: the choice of 48 starts
# ended within 0.01 of the best of a pool of 192 in 98.4 % of draws (worst data set 87 %), with 20 in 97.6 % (85 %)
# (2026-12-03; docs/models.md, docs/benchmarks.md).
# The floor keeps a small mixture (D=2, K=3: 17 parameters) from being ranked on a few hundred rows (not measured).
_SCREEN_ROWS_PER_PARAMETER = 10
_SCREEN_MIN_ROWS = 2_000
# The screening's rounds, (fraction of init_iter, fraction of n_init kept): after ⌈init_iter/4⌉ iterations the best
# third of the starts go on, after ⌈init_iter/2⌉ the best twelfth, after init_iter the best one is chosen. Successive
# halving: where EM ends shows late, so most starts get a few iterations and few get many (48 starts, init_iter=40:
# 720 start-iterations instead of 1,920). Measured with n_init and init_iter in benchmarks/gmm_screening.py.
_SCREEN_ROUNDS = ((1 / 4, 1 / 3), (1 / 2, 1 / 12), (1, 0))
# The screening's floor on a row's log-responsibility ratios, log r_nk − log max_j r_nj (see _screen_e_step).
_SCREEN_FLOOR = -50.0


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _all_reduce_sum(t: Tensor) -> Tensor:
    """Sum a tensor over all processes (identity when not distributed); keeps dtype (float64)."""
    if _world_size() > 1:
        t = t.contiguous().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast(t: Tensor, src: int = 0) -> Tensor:
    if _world_size() > 1:
        t = t.contiguous().clone()
        dist.broadcast(t, src=src)
    return t


def _all_gather_rows(t: Tensor) -> Tensor:
    """Concatenate the [m_r, D] tensors of all ranks in rank order (ranks may differ in m_r)."""
    if _world_size() == 1:
        return t
    return torch.cat(gather_all_tensors(t), dim=0)  # pads to the longest, gathers, trims


def _split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """Accept ``x``, ``(x,)`` or ``(x, y)``; y < 0 marks unlabelled rows."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return batch[0], None
        return batch[0], batch[1]
    if isinstance(batch, dict):
        return batch["x"], batch.get("y")
    raise TypeError(f"unsupported batch type {type(batch).__name__}; expected x or (x, y)")


def adjusted_rand_index(contingency: Tensor | np.ndarray) -> float:
    """Adjusted Rand index from a contingency table [K, C] of counts.

    Uses the pair-confusion form of scikit-learn's ``adjusted_rand_score``: with n the total,
    a_i the row sums, b_j the column sums and s = Σ_ij n_ij²::

        tp = s − n,  fp = Σ_ij n_ij b_j − s,  fn = Σ_ij n_ij a_i − s,  tn = n² − tp − fp − fn − n
        ARI = 2 (tp·tn − fn·fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn))

    and 1.0 when fp = fn = 0 (identical partitions, including the degenerate ones).
    """
    table = np.asarray(contingency.cpu() if isinstance(contingency, Tensor) else contingency)
    table = table.astype(np.float64)
    n = table.sum()
    rows = table.sum(axis=1)
    cols = table.sum(axis=0)
    sum_squares = (table**2).sum()
    tp = sum_squares - n
    fp = (table @ cols).sum() - sum_squares
    fn = (table.T @ rows).sum() - sum_squares
    tn = n**2 - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def matched_accuracy(contingency: Tensor | np.ndarray) -> float:
    """Accuracy after a one-to-one matching of components to classes.

    ``contingency`` [K, C] counts samples of class c assigned to component k. The Hungarian
    algorithm picks the matching k ↔ c maximising Σ matched counts; accuracy is that sum over
    the total. With K > C the unmatched components' samples count as errors.
    """
    from scipy.optimize import linear_sum_assignment

    table = np.asarray(contingency.cpu() if isinstance(contingency, Tensor) else contingency)
    total = table.sum()
    if total == 0:
        return float("nan")
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / total)


class GaussianMixtureEM(pl.LightningModule):
    """Gaussian mixture model trained by exact EM, one EM iteration per Lightning epoch.

    Args:
        n_features: D, the data dimension (datamodule ``dims``).
        n_components: K.
        covariance_type: ``"full"`` (Σ_k [K, D, D]), ``"tied"`` (one Σ [D, D]), ``"diag"``
            ([K, D]) or ``"spherical"`` ([K]); the shapes of ``covariances`` and
            ``precisions_cholesky`` follow scikit-learn.
        tol: training stops once the mean train log-likelihood improves by less than ``tol``
            from one epoch to the next; ``tol <= 0`` never stops early.
        reg_covar: added to the diagonal of every covariance.
        init: how a start is made when ``means_init`` is not given: ``"kmeans++"`` (means seeded
            by greedy k-means++ over training points, as scikit-learn's ``kmeans_plusplus``),
            ``"random"`` (K distinct training points as means), or ``"kmeans"`` (scikit-learn's
            default: Lloyd's k-means from k-means++ seeds, streamed over the training set, then
            weights, means and covariances of its clusters).
        n_init: the number of starts made; they are screened (``init_iter``) and the best is fitted.
        init_iter: the EM iterations of the screening (below): every start makes ⌈init_iter/4⌉ on
            the screening rows, the best third go on to ⌈init_iter/2⌉, the best twelfth to
            init_iter; the best of those then runs EM on the whole seeding sample until it gains
            less than ``tol`` (at most init_iter iterations), and the fit goes on from there. 0: the
            start with the best starting log-likelihood of the screening rows is fitted as it is.
        n_classes: number of label classes (datamodule ``dims``); enables ``accuracy``/``ari``.
        n_train: the number of training rows (datamodule ``dims``), or None when unknown. Fewer than
            ``n_components`` is refused here, before any fit (and before labbook opens a run): K means
            need K distinct rows to start from.
        feature_mean, feature_std: the standardisation z = (x − mean) / std the datamodule applied
            to the rows the model is fed (datamodule ``dims``), or None. Used only in what the model
            reports: every log-likelihood, BIC and AIC is of the rows in their own units,
            log p_x(x) = log p_z(z) − Σ_d log std_d (scikit-learn's ``score`` on the CSV's rows),
            and the report draws the data's units; EM itself works on z.
        seed: seeds the initialisation.
        means_init: optional initial means, array-like [K, D]; overrides ``init``.
        compute_dtype: ``"float64"`` or ``"float32"``, the dtype of the per-batch E-step and
            statistics. Parameters, statistic accumulators and the M-step are always float64.
        init_samples: the seeding sample holds at most this many training points (all of them
            when the training set is no larger).

    Initialisation (first training epoch, before its E-step; ``initialize_from``). The seeding
    sample X is the training points, or at most ``init_samples`` of them (each process then
    contributes a seeded random subset of its shard, so the start also depends on the number of
    processes). A start's means are ``means_init`` or seeds drawn from X (from the screening rows
    R below when there is a screening); its weights are 1/K; every covariance is the (biased)
    covariance of X plus ``reg_covar`` (its diagonal for ``diag``, the mean of that diagonal for
    ``spherical``). This is scikit-learn's ``GaussianMixture(weights_init=1/K, means_init=…,
    precisions_init=inv(cov))``. With ``init="kmeans"`` those means seed Lloyd's k-means over the
    whole training set (one pass per iteration for all starts, statistics summed over processes in
    float64), and the start is the M-step of its hard assignments, as scikit-learn's
    ``init_params="kmeans"``. Start s is seeded s-th from ``seed``; start 0 is the ``n_init=1``
    start, which is fitted as it is, as is ``means_init`` (one start: ``init`` and ``n_init`` moot).

    The screening of ``n_init > 1`` starts (``_screen``) is the "short runs of EM" strategy of
    Biernacki, Celeux & Govaert (2003, Comput. Stat. Data Anal. 41:561), run as successive
    halving (Jamieson & Talwalkar 2016): where EM ends depends on far more than a start's own
    likelihood, so every start is judged by where some EM iterations take it, and only the
    promising ones get more. R, every j-th row of X, holds about 10 rows per free parameter
    (``n_parameters``, at least 2,000; all of X when smaller); all S starts run EM on R at once
    (one GEMM per chunk for all S·K components, float32 arithmetic with float64 sums: it chooses,
    the EM that follows fits); after t_1 = ⌈init_iter/4⌉ iterations the ⌈S/3⌉ with the highest
    mean log-likelihood of R go on, after t_2 = ⌈init_iter/2⌉ the ⌈S/12⌉, after init_iter the best
    is chosen (a round ends early once no start gains ``tol``). The chosen start then runs EM on
    the whole of X, in the screening's arithmetic, until it gains less than ``tol`` (at most
    init_iter iterations; the epochs that follow run in ``compute_dtype``), which moves it from R's optimum to near the training set's without Lightning's
    per-epoch costs (and, past ``init_samples`` rows, on a sample), and the fit goes on from there. Every process holds the same X and
    makes the same choice; no pass over the training set is made for it. scikit-learn instead
    fits every start to convergence on all rows and keeps the best, at ``n_init`` times the
    passes. docs/models.md has the measurements behind the numbers.

    Empty components (total responsibility below 1e-8 samples, e.g. a mean seeded far from all
    data) keep their previous mean and covariance and get the near-zero weight
    (N_k + ε)/Σ(N_j + ε): they stay inert instead of turning into NaN, and EM stays a
    deterministic ascent. A covariance that is not positive definite is likewise kept.

    Batches are ``x`` [B, D] or ``(x, y)`` with y [B] integer labels, y < 0 meaning unlabelled.
    """

    monitor = "val/log_likelihood"
    monitor_mode = "max"
    # What it logs on validation (accuracy and ARI when the data has labels).
    validation_metrics = ("val/log_likelihood", "val/bic", "val/aic", "val/accuracy", "val/ari")
    headline_metric = "test/log_likelihood"

    def __init__(
        self,
        n_features: int,
        n_components: Annotated[int, ">= 1"] = 4,
        covariance_type: CovarianceType = "full",
        tol: Annotated[float, ">= 0"] = 1e-4,  # stop once the mean train log-likelihood improves by less
        reg_covar: Annotated[float, ">= 0"] = 1e-6,
        init: Init = "kmeans++",
        n_init: Annotated[int, ">= 1"] = 48,  # starts, screened by short EM runs on a sample; the best is fitted
        init_iter: Annotated[int, ">= 0"] = 40,  # EM iterations of the screening (0: the best start as it is)
        n_classes: int | None = None,
        n_train: int | None = None,
        feature_mean: Sequence[float] | None = None,
        feature_std: Sequence[float] | None = None,
        seed: int = 0,
        means_init: Sequence[Sequence[float]] | np.ndarray | Tensor | None = None,
        compute_dtype: ComputeDtype = "float64",
        init_samples: Annotated[int, ">= 1"] = 100_000,  # the seeding runs over at most this many rows
    ) -> None:
        super().__init__()
        if covariance_type not in _COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {_COVARIANCE_TYPES}, got {covariance_type!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if compute_dtype not in _DTYPES:
            raise ValueError(f"compute_dtype must be one of {tuple(_DTYPES)}, got {compute_dtype!r}")
        if n_components < 1 or n_features < 1:
            raise ValueError("n_components and n_features must be positive")
        if int(n_init) != n_init or n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {n_init!r}")
        n_init = int(n_init)
        if int(init_iter) != init_iter or init_iter < 0:
            raise ValueError(f"init_iter must be an integer >= 0, got {init_iter!r}")
        init_iter = int(init_iter)
        if n_train is not None and int(n_train) < max(n_components, 2):
            raise ValueError(
                f"n_components={n_components} needs at least {max(n_components, 2)} training rows (each "
                f"component starts from its own row), but the data has {int(n_train)} training rows"
            )
        # Plain lists of floats, as means_init below: checkpoints stay loadable with weights_only=True.
        scaling = {}
        for name, value in (("feature_mean", feature_mean), ("feature_std", feature_std)):
            if value is not None:
                value = [float(v) for v in (value.tolist() if isinstance(value, (Tensor, np.ndarray)) else value)]
                if len(value) != n_features:
                    raise ValueError(f"{name} must have {n_features} values (n_features), got {len(value)}")
            scaling[name] = value
        feature_mean, feature_std = scaling["feature_mean"], scaling["feature_std"]
        if (feature_mean is None) != (feature_std is None):
            raise ValueError("feature_mean and feature_std come together (both or neither)")
        if feature_std is not None and not all(math.isfinite(v) and v > 0 for v in feature_std):
            raise ValueError("feature_std must be positive and finite")
        if means_init is not None:
            if isinstance(means_init, Tensor):
                means_init = means_init.detach().cpu().numpy()
            # Plain nested floats (not arrays or OmegaConf lists) keep checkpoints loadable with
            # torch.load(weights_only=True).
            means_init = [[float(v) for v in row] for row in means_init]
            shape = np.asarray(means_init).shape
            if shape != (n_components, n_features):
                raise ValueError(f"means_init must have shape ({n_components}, {n_features}), got {shape}")
        self.save_hyperparameters()
        self.automatic_optimization = False

        K, D = n_components, n_features
        f64 = torch.float64
        cov_shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]
        self.register_buffer("weights", torch.full((K,), 1.0 / K, dtype=f64))
        self.register_buffer("means", torch.zeros(K, D, dtype=f64))
        self.register_buffer("covariances", torch.zeros(cov_shape, dtype=f64))
        self.register_buffer("precisions_cholesky", torch.zeros(cov_shape, dtype=f64))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("converged", torch.tensor(False))
        self.register_buffer("n_iter", torch.tensor(0, dtype=torch.long))
        self.register_buffer("lower_bound", torch.tensor(-math.inf, dtype=f64))
        # DistributedDataParallel refuses modules without a trainable parameter; EM has none,
        # so this scalar exists only to let the model run under Lightning's DDP strategies.
        self._ddp_anchor = nn.Parameter(torch.zeros(()))

        # Accumulators are plain attributes, not buffers: DDP would otherwise overwrite each
        # rank's partial sums with rank 0's before the reduction.
        self._train_stats: dict[str, Tensor] | None = None
        self._restored_train_stats: dict[str, Tensor] | None = None  # from a mid-epoch checkpoint
        self._eval_stats: dict[str, Tensor] | None = None
        self._plan: dict[str, Tensor] | None = None
        self._test_sample: list[Tensor] = []
        self._test_sample_rows = 0
        self.last_metrics: dict[str, float] = {}
        # Passes over the training data the initialisation made (``initialize_from``); logged with the first epoch.
        self.init_passes: int | None = None
        # EM iterations the chosen start made on the seeding sample before the first epoch (``_screen``).
        self.init_iterations: int | None = None
        self._init_metrics: dict[str, float] = {}
        # log p_x(x) = log p_z(z) − Σ_d log s_d for z = (x − m)/s: what reported likelihoods add back.
        self._log_scale = float(sum(math.log(v) for v in feature_std)) if feature_std is not None else 0.0

    # ------------------------------------------------------------------ parameters
    @property
    def n_components(self) -> int:
        return int(self.hparams.n_components)

    @property
    def n_features(self) -> int:
        return int(self.hparams.n_features)

    @property
    def covariance_type(self) -> str:
        return str(self.hparams.covariance_type)

    @property
    def _compute_dtype(self) -> torch.dtype:
        return _DTYPES[self.hparams.compute_dtype]

    def n_parameters(self) -> int:
        """Free parameters, as scikit-learn's ``_n_parameters``: K·D means + (K − 1) weights + covariances."""
        K, D = self.n_components, self.n_features
        cov = {"full": K * D * (D + 1) / 2.0, "diag": K * D, "tied": D * (D + 1) / 2.0, "spherical": K}
        return int(cov[self.covariance_type] + K * D + K - 1)

    def _full_covariances(self) -> Tensor:
        """Covariances as [K, D, D] whatever the covariance type."""
        K, D = self.n_components, self.n_features
        c = self.covariances
        if self.covariance_type == "full":
            return c
        if self.covariance_type == "tied":
            return c.expand(K, D, D)
        if self.covariance_type == "diag":
            return torch.diag_embed(c)
        return c[:, None, None] * torch.eye(D, dtype=c.dtype, device=c.device)

    @staticmethod
    def _precision_cholesky(cov: Tensor, covariance_type: str) -> tuple[Tensor, Tensor]:
        """U with U Uᵀ = Σ⁻¹ (U = L⁻ᵀ for Σ = L Lᵀ; 1/√σ² for diag/spherical) and an ok-mask."""
        if covariance_type in ("full", "tied"):
            L, info = torch.linalg.cholesky_ex(cov)
            ok = info == 0
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
            # Rows that failed get the identity so the solve stays finite; callers discard them.
            L = torch.where(ok[..., None, None], L, eye)
            U = torch.linalg.solve_triangular(L, eye, upper=False).mT
            return U, ok
        ok = torch.isfinite(cov) & (cov > 0)
        if covariance_type == "diag":
            ok = ok.all(dim=-1)
        return torch.where(cov > 0, cov, torch.ones_like(cov)).rsqrt(), ok

    def _set_covariances(self, cov: Tensor) -> None:
        """Store covariances and their precision Cholesky factors, keeping any that are not PD."""
        U, ok = self._precision_cholesky(cov, self.covariance_type)
        if not bool(ok.all()):
            if not bool(self.initialized):
                raise ValueError("initial covariance is not positive definite; increase reg_covar")
            keep = ~ok
            shape = (-1,) + (1,) * (cov.dim() - keep.dim())
            cov = torch.where(keep.reshape(shape), self.covariances, cov)
            U = torch.where(keep.reshape(shape), self.precisions_cholesky, U)
        self.covariances.copy_(cov)
        self.precisions_cholesky.copy_(U)
        self._plan = None

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._plan = None  # the cached E-step constants belong to the parameters being replaced
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "GaussianMixtureEM":
        self._plan = None  # device/dtype moves would leave the cache behind
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ E-step
    def _e_plan(self) -> dict[str, Tensor]:
        """Per-parameter constants of the E-step, in the compute dtype, cached until the next M-step.

        With x̃ = x − c and m_k = μ_k − c:
        full/tied, evaluation: y_nk = x̃_n U_k − m_k U_k for all k as one GEMM x̃ [B, D] @ W [D, K·D]
        plus b = −[m_1 U_1, …, m_K U_K] [K·D], then ‖y_nk‖² by one contraction over d (sklearn's form).
        full/tied, training: with P_k = U_k U_kᵀ, ‖y_nk‖² = x̃ᵀP_k x̃ − 2 x̃ᵀP_k m_k + m_kᵀP_k m_k is
        linear in the moment features F_n = [x̃_i x̃_j (i ≤ j), x̃, 1] that the statistics need anyway,
        so it is one GEMM F [B, M] @ Q [M, K] with Q = [P_ii or 2 P_ij; −2 P_k m_k; m_kᵀ P_k m_k].
        diag/spherical: ‖y_nk‖² = Σ_d p_kd x̃_d² − 2 p_kd m_kd x̃_d + p_kd m_kd² with p = U², i.e.
        one GEMM [x̃², x̃, 1] [B, 2D+1] @ Q [2D+1, K] (scikit-learn's expansion).
        const_k = −½ D log 2π + Σ log diag U_k + log π_k; Q is stored pre-scaled by −½.

        The expanded forms cancel terms of order ‖x̃‖²·‖P_k‖ down to ‖y‖²; centring on c keeps that
        ratio small, so in float64 they agree with the whitened form to ~1e-13 (see the tests).
        """
        if self._plan is None:
            self._plan = self._plan_for(self.weights, self.means, self.precisions_cholesky)
        return self._plan

    def _plan_for(
        self, weights: Tensor, means: Tensor, precisions_cholesky: Tensor, shift: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, Tensor]:
        """The E-step constants of the given parameters (see ``_e_plan``), centred on ``shift`` (default: the
        mixture mean Σ_k π_k μ_k), in the compute dtype (or ``dtype``)."""
        K, D = means.shape[0], self.n_features
        dt = dtype or self._compute_dtype
        shift = (weights[:, None] * means).sum(0) if shift is None else shift
        m = means - shift
        U = precisions_cholesky
        ct = self.covariance_type
        if ct in ("full", "tied"):
            U = U if U.dim() == 3 else U.expand(K, D, D)
            log_det = torch.log(torch.diagonal(U, dim1=-2, dim2=-1)).sum(-1)
            prec = U @ U.mT
            iu = torch.triu_indices(D, D, device=U.device)
            off_diagonal_twice = 2.0 - torch.eye(D, dtype=U.dtype, device=U.device)
            Q = torch.cat(
                [
                    (prec * off_diagonal_twice)[:, iu[0], iu[1]],
                    -2.0 * torch.einsum("kij,kj->ki", prec, m),
                    torch.einsum("ki,kij,kj->k", m, prec, m)[:, None],
                ],
                dim=1,
            )
            plan = {
                "W": U.permute(1, 0, 2).reshape(D, K * D),
                "b": -torch.einsum("ki,kij->kj", m, U).reshape(K * D),
                "Q": (-0.5 * Q).T,
            }
        else:
            prec = U**2 if ct == "diag" else (U**2)[:, None].expand(K, D)
            log_det = torch.log(U).sum(-1) if ct == "diag" else D * torch.log(U)
            Q = torch.cat([prec, -2.0 * m * prec, (m * m * prec).sum(1, keepdim=True)], dim=1)
            plan = {"Q": (-0.5 * Q).T}
        plan["const"] = -0.5 * D * math.log(2 * math.pi) + log_det + torch.log(weights)
        plan = {k: v.to(dt).contiguous() for k, v in plan.items()}
        plan["shift"] = shift.to(dt)
        plan["shift64"] = shift
        return plan

    def _n_moments(self) -> int:
        """Columns of the feature matrix F: second moments, D first moments and a constant."""
        D = self.n_features
        return (D * (D + 1) // 2 if self.covariance_type in ("full", "tied") else D) + D + 1

    def _chunk_rows(self) -> int:
        """Rows per E-step chunk, bounding the [rows, max(F columns, K·D)] temporaries."""
        return max(1, _MAX_CHUNK_ELEMENTS // max(self._n_moments(), self.n_components * self.n_features))

    def _features(self, x: Tensor, shift: Tensor, second_moments: bool, dtype: torch.dtype | None = None) -> Tensor:
        """F [B, M] = [second moments of x̃, x̃, 1] in the compute dtype (or ``dtype``), x̃ = x − c (c: ``shift``).

        full/tied: the upper triangle x̃_i x̃_j (i ≤ j), D(D+1)/2 columns, only when
        ``second_moments`` (the E-step itself only reads [x̃, 1]); diag/spherical: x̃² always.
        """
        n, D = x.shape[0], self.n_features
        dtype = dtype or self._compute_dtype
        xt = x.to(dtype) - shift.to(dtype)
        if self.covariance_type not in ("full", "tied"):
            return torch.cat([xt * xt, xt, torch.ones(n, 1, dtype=xt.dtype, device=xt.device)], dim=1)
        P = D * (D + 1) // 2 if second_moments else 0
        F = torch.empty(n, P + D + 1, dtype=xt.dtype, device=xt.device)
        col = 0
        for i in range(D if second_moments else 0):
            torch.mul(xt[:, i : i + 1], xt[:, i:], out=F[:, col : col + D - i])
            col += D - i
        F[:, P : P + D] = xt
        F[:, -1] = 1.0
        return F

    def _log_prob(self, F: Tensor, plan: dict[str, Tensor]) -> Tensor:
        """log π_k + log N(x_n | μ_k, Σ_k) [B, K] from the features F (compute dtype)."""
        if F.shape[1] == plan["Q"].shape[0]:
            return torch.addmm(plan["const"], F, plan["Q"])
        n, K, D = F.shape[0], self.n_components, self.n_features
        y = torch.addmm(plan["b"], F[:, -(D + 1) : -1], plan["W"]).view(n, K, D)
        # einsum contracts d without materialising y², which matters on memory-bound CPUs.
        return torch.einsum("nkd,nkd->nk", y, y).mul_(-0.5).add_(plan["const"])

    @staticmethod
    def _normalise(lp: Tensor) -> tuple[Tensor, Tensor]:
        """log r_nk = lp_nk − logsumexp_k lp_nk [B, K] and log p(x_n) = logsumexp_k lp_nk [B].

        log p is read off at the arg-max component, where log r ∈ [−log K, 0], so it carries no
        cancellation even when lp is large and negative.
        """
        log_resp = torch.log_softmax(lp, dim=1)
        top, best = lp.max(dim=1, keepdim=True)
        return log_resp, (top - log_resp.gather(1, best)).squeeze(1)

    def _e_step(
        self, x: Tensor, second_moments: bool = False, plan: dict[str, Tensor] | None = None
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per row chunk of x [B, D]: (log r [b, K], log p(x) [b], features F [b, M]), for the model's
        parameters or those of ``plan`` (``_plan_for``)."""
        if plan is None:
            if not bool(self.initialized):
                raise RuntimeError("GaussianMixtureEM is not fitted yet (parameters are uninitialised)")
            plan = self._e_plan()
        out = []
        # A mixed-precision Trainer would otherwise run these matmuls in bf16/fp16.
        with torch.autocast(device_type=x.device.type, enabled=False):
            for chunk in torch.split(x, self._chunk_rows()):
                F = self._features(chunk, plan["shift"], second_moments)
                out.append((*self._normalise(self._log_prob(F, plan)), F))
        return out

    def _log_resp(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts = self._e_step(x)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _accumulate(self, x: Tensor, st: dict[str, Tensor] | None = None, plan: dict[str, Tensor] | None = None) -> None:
        """Add this batch's Σ_n r_nk F_n = [S2_k, S1_k, N_k] [K, M] and Σ log p(x_n) to the sums (the
        training sums for the model's parameters, or ``st`` for those of ``plan``)."""
        st = self._train_stats if st is None else st
        assert st is not None
        for log_resp, log_norm, F in self._e_step(x, second_moments=True, plan=plan):
            st["moments"] += (log_resp.exp_().T @ F).to(torch.float64)
            st["ll"] += log_norm.sum(dtype=torch.float64)
        st["count"] += x.shape[0]

    def _new_train_stats(self) -> dict[str, Tensor]:
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=self.device)  # noqa: E731
        return {"moments": z(self.n_components, self._n_moments()), "ll": z(), "count": z()}

    # ------------------------------------------------------------------ M-step
    def _m_step(self, st: dict[str, Tensor], shift: Tensor) -> None:
        """Update π, μ, Σ, U from summed statistics (equations in the module docstring)."""
        weights, means, cov = self._m_step_params(st["moments"][None], shift, self.means[None], self.covariances[None])
        self.weights.copy_(weights[0])
        self.means.copy_(means[0])
        self._set_covariances(cov[0])

    def _m_step_params(
        self, moments: Tensor, shift: Tensor, means: Tensor, covariances: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The M-step of S mixtures at once: statistics [S, K, M] summed around ``shift`` [D] → weights [S, K],
        means [S, K, D] and covariances [S, …] (the covariance type's shape). An empty component keeps its
        ``means`` [S, K, D] and ``covariances`` [S, …]."""
        ct = self.covariance_type
        D = self.n_features
        N, S1, S2 = moments[..., -1], moments[..., -(D + 1) : -1], moments[..., : -(D + 1)]
        if ct in ("full", "tied"):
            iu = torch.triu_indices(D, D, device=moments.device)
            packed, S2 = S2, moments.new_zeros(*moments.shape[:2], D, D)
            S2[..., iu[0], iu[1]] = packed
            S2[..., iu[1], iu[0]] = packed
            if ct == "tied":
                S2 = S2.sum(1)
        eps = 10 * torch.finfo(torch.float64).eps
        nk = N + eps
        m = S1 / nk[..., None]
        empty = N < _EMPTY_MASS
        eye = torch.eye(D, dtype=torch.float64, device=N.device)
        reg = self.hparams.reg_covar
        if ct == "full":
            cross = S1[..., :, None] * m[..., None, :]
            scatter = S2 - cross - cross.mT + N[..., None, None] * m[..., :, None] * m[..., None, :]
            cov = scatter / nk[..., None, None]
            cov = 0.5 * (cov + cov.mT) + reg * eye
            cov = torch.where(empty[..., None, None], covariances, cov)
        elif ct == "tied":
            # Σ_k Σ_n r_nk (x̃ − m_k)(x̃ − m_k)ᵀ = Σ_n x̃ x̃ᵀ − Σ_k (S1_k m_kᵀ + m_k S1_kᵀ − N_k m_k m_kᵀ)
            cross = S1.mT @ m
            scatter = S2 - cross - cross.mT + torch.einsum("sk,ski,skj->sij", N, m, m)
            cov = scatter / nk.sum(1)[:, None, None]
            cov = 0.5 * (cov + cov.mT) + reg * eye
        else:
            var = (S2 - 2.0 * S1 * m + N[..., None] * m * m) / nk[..., None] + reg
            if ct == "spherical":
                var = var.mean(-1)
                cov = torch.where(empty, covariances, var)
            else:
                cov = torch.where(empty[..., None], covariances, var)
        means = torch.where(empty[..., None], means, shift + m)
        return nk / nk.sum(1, keepdim=True), means, cov

    # ------------------------------------------------------------------ initialisation
    def _collect_init_sample(self, loader: Any) -> Tensor:
        """Training points for seeding, identical on every rank: all of them, or a seeded subset."""
        ws, rank = _world_size(), _rank()
        cap = max(1, math.ceil(self.hparams.init_samples / ws))
        try:
            n_batches = len(loader)
        except TypeError:
            n_batches = None
        gen = torch.Generator().manual_seed(int(self.hparams.seed) * 1_000_003 + rank)
        kept: list[Tensor] = []
        fraction = None
        for batch in loader:
            x, _ = _split_batch(batch)
            x = x.detach().to("cpu", torch.float64)
            if fraction is None:
                estimate = (n_batches or 1) * max(1, x.shape[0])
                fraction = 1.0 if n_batches is None else min(1.0, cap / estimate)
            if fraction < 1.0:
                x = x[torch.rand(x.shape[0], generator=gen) < fraction]
            kept.append(x)
        local = torch.cat(kept) if kept else torch.zeros(0, self.n_features, dtype=torch.float64)
        return _all_gather_rows(local.to(self.device)).cpu()

    @staticmethod
    def kmeans_plusplus(X: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
        """Greedy k-means++ seeds [K, D] from X [N, D], as scikit-learn's ``kmeans_plusplus``.

        Each new seed is the best of 2 + ⌊log K⌋ candidates drawn with probability ∝ d²(x),
        the squared distance to the nearest seed so far; best = smallest resulting Σ_n d²(x_n).
        Distances as scikit-learn computes them, ‖x‖² − 2 x·c + ‖c‖² (one GEMM for all candidates),
        here of the points centred on their mean, which keeps the cancellation small.
        """
        n = X.shape[0]
        Xc = X - X.mean(0)
        sq = (Xc * Xc).sum(1)
        trials = 2 + int(math.log(n_clusters))
        centers = torch.empty(n_clusters, X.shape[1], dtype=X.dtype)
        first = int(torch.randint(n, (1,), generator=generator))
        centers[0] = X[first]
        closest = ((X - centers[0]) ** 2).sum(1)
        for c in range(1, n_clusters):
            total = closest.sum()
            if not bool(total > 0):
                # Fewer distinct points than clusters: any point is as good as another.
                cand = torch.randint(n, (trials,), generator=generator)
            else:
                u = torch.rand(trials, generator=generator, dtype=X.dtype) * total
                cand = torch.searchsorted(torch.cumsum(closest, 0), u).clamp_(max=n - 1)
            dist_c = torch.addmm(sq[None, :] + sq[cand, None], Xc[cand], Xc.T, alpha=-2.0).clamp_(min=0.0)
            dist_c = torch.minimum(closest[None], dist_c)
            best = int(dist_c.sum(1).argmin())
            centers[c] = X[cand[best]]
            closest = dist_c[best]
        return centers

    def initialize_from(self, loader: Any) -> None:
        """Set the starting parameters from the training data (see the class docstring).

        Passes over ``loader``: one to collect the seeding sample, and with ``init="kmeans"`` one per Lloyd
        iteration; ``init_passes`` counts them. Choosing among ``n_init`` starts makes none: the starts are
        screened on rows of the seeding sample, and the chosen one goes on on the whole sample
        (``init_iterations`` counts its EM iterations there).
        """
        K, D = self.n_components, self.n_features
        X = self._collect_init_sample(loader)
        if X.shape[0] < max(K, 2):
            raise ValueError(f"need at least {max(K, 2)} training points for {K} components, got {X.shape[0]}")
        if X.shape[1] != D:
            raise ValueError(f"training data has {X.shape[1]} features, model expects n_features={D}")
        given = self.hparams.means_init is not None
        n_starts = 1 if given else int(self.hparams.get("n_init", 1))
        steps = int(self.hparams.get("init_iter", 0)) if n_starts > 1 else 0
        # The screening rows: _SCREEN_ROWS_PER_PARAMETER per free parameter (at least _SCREEN_MIN_ROWS), evenly
        # spaced through the seeding sample (all of it when smaller).
        m = min(X.shape[0], max(_SCREEN_MIN_ROWS, _SCREEN_ROWS_PER_PARAMETER * self.n_parameters()))
        rows = X[torch.arange(m) * X.shape[0] // m]
        pool = rows if steps else X  # what the seeds are drawn from
        if _rank() == 0:
            gen = torch.Generator().manual_seed(int(self.hparams.seed))
            if given:
                seeds = [torch.as_tensor(self.hparams.means_init, dtype=torch.float64)]
            elif self.hparams.init == "random":
                seeds = [pool[torch.randperm(pool.shape[0], generator=gen)[:K]] for _ in range(n_starts)]
            else:  # kmeans++, and the seeds of kmeans
                seeds = [self.kmeans_plusplus(pool, K, gen) for _ in range(n_starts)]
            seeds = torch.stack(seeds)
        else:
            seeds = torch.zeros(n_starts, K, D, dtype=torch.float64)
        seeds = _broadcast(seeds.to(self.device)).to(torch.float64)
        Xc = X - X.mean(0)
        data_cov = (Xc.T @ Xc / X.shape[0]).to(self.device)
        eye = torch.eye(D, dtype=torch.float64, device=self.device)
        ct = self.covariance_type
        if ct == "full":
            cov = (data_cov + self.hparams.reg_covar * eye).expand(K, D, D).clone()
        elif ct == "tied":
            cov = data_cov + self.hparams.reg_covar * eye
        elif ct == "diag":
            cov = (torch.diagonal(data_cov) + self.hparams.reg_covar).expand(K, D).clone()
        else:
            cov = (torch.diagonal(data_cov) + self.hparams.reg_covar).mean().expand(K).clone()
        self.initialized.fill_(False)
        self._set_start(torch.full((K,), 1.0 / K, dtype=torch.float64, device=self.device), seeds[0], cov)
        self.initialized.fill_(True)  # from here a covariance that is not positive definite is kept, not fatal
        passes = 1
        try:
            starts = [(self.weights.clone(), seeds[s], cov) for s in range(n_starts)]
            if self.hparams.init == "kmeans" and not given:
                starts, lloyd = self._kmeans_starts(loader, seeds, X.mean(0).to(self.device), float((Xc**2).mean()))
                passes += lloyd
            start, iterations = starts[0], 0
            if len(starts) > 1:  # the screening, in float32: it chooses, the EM that follows fits
                rounds = [(math.ceil(steps * t), max(1, math.ceil(len(starts) * n))) for t, n in _SCREEN_ROUNDS]
                start, iterations = self._screen(rows.to(self.device), starts, rounds if steps else [(0, 1)],
                                                 torch.float32)
            # The chosen start on the whole seeding sample until tol, at most init_iter iterations, in float32 as the
            # screening (the epochs that follow run in compute_dtype): a third less time than float64 (0.24 → 0.15 s on
            # 300,000 × 6, K=10), with the same iterations and the same fits at the end (the 24 fits of
            # benchmarks/gmm_vs_sklearn.py --mode fit, to 1e-4 nats a row; 2026-12-03).
            if steps:
                start, more = self._screen(X.to(self.device), [start], [(steps, 1)], torch.float32)
                iterations += more
            self._set_start(*start)
            self.n_iter.zero_()
            self.lower_bound.fill_(-math.inf)
        except BaseException:
            self.initialized.fill_(False)
            raise
        self.converged.fill_(False)
        self.init_passes = passes
        self.init_iterations = iterations
        self._init_metrics = {"train/init_passes": float(passes), "train/init_iterations": float(iterations)}

    def _set_start(self, weights: Tensor, means: Tensor, cov: Tensor) -> None:
        self.weights.copy_(weights)
        self.means.copy_(means)
        self._set_covariances(cov)

    def _kmeans_starts(
        self, loader: Any, seeds: Tensor, shift: Tensor, mean_var: float
    ) -> tuple[list[tuple[Tensor, Tensor, Tensor]], int]:
        """Lloyd's k-means from each of the seeds [S, K, D] at once, streamed over ``loader``; then each
        start's first M-step from its hard assignments (responsibilities 0 or 1): weights, means and
        covariances of its clusters. Returns the starts as (weights, means, covariances) and the passes made.

        Each pass assigns every row to its nearest centre (argmin_k ‖x̃ − c̃_k‖², x̃ = x − shift) and sums
        the same moment features as the E-step, [x̃x̃ᵀ, x̃, 1], per cluster: the new centres are S1/N, and
        the sums of the last pass are the M-step's statistics. A cluster left empty keeps its centre (and
        becomes an inert component with the data covariance). Passes stop when Σ_k ‖c_k' − c_k‖² ≤
        1e-4 × the mean feature variance for every start (scikit-learn's KMeans tolerance), or after 3:
        a rough clustering is start enough for EM (benchmarks/gmm_init.py; the README has the measurement).
        Three passes are scikit-learn's ``KMeans(max_iter=2)``: two updates of the centres, and the labels of
        the last centres.
        """
        S, K, D = seeds.shape
        dt = self._compute_dtype
        f64 = torch.float64
        centres = (seeds - shift).reshape(S * K, D)
        offsets = (torch.arange(S, device=self.device) * K)[None, :]
        tol = _KMEANS_TOL * mean_var
        base_cov = self.covariances.clone()
        passes = 0
        while True:
            passes += 1
            stats = torch.zeros(S * K, self._n_moments(), dtype=f64, device=self.device)
            # Nearest centres from float32 distances: the [rows, S·K] matrix is the pass's largest, and in float64
            # it costs 5 times as much; only a row within ~1e-7 (relative) of a tie could go the other way.
            c = centres.to(torch.float32)
            half_norms = 0.5 * (c * c).sum(1)
            with torch.no_grad(), torch.autocast(device_type=self.device.type, enabled=False):
                for batch in loader:
                    x = _split_batch(batch)[0].to(self.device)
                    for chunk in torch.split(x, self._chunk_rows()):
                        F = self._features(chunk, shift, second_moments=True)
                        xt = F[:, -(D + 1) : -1]
                        nearest = torch.addmm(half_norms, xt.to(torch.float32), c.T, alpha=-1.0).view(-1, S, K).argmin(2)
                        nearest += offsets
                        sums = torch.zeros(S * K, F.shape[1], dtype=dt, device=self.device)
                        for s in range(S):  # a scatter-add per start: S·M adds a row, not the one-hot GEMM's S·K·M
                            sums.index_add_(0, nearest[:, s], F)
                        stats += sums.to(f64)
            stats = _all_reduce_sum(stats)
            N, S1 = stats[:, -1], stats[:, -(D + 1) : -1]
            moved = torch.where((N > 0)[:, None], S1 / N.clamp(min=1)[:, None], centres)
            shifts = ((moved - centres) ** 2).sum(1).view(S, K).sum(1)
            centres = moved
            if bool((shifts <= tol).all()) or passes >= _KMEANS_MAX_ITER:
                break
        starts = []
        for s in range(S):
            rows = slice(s * K, (s + 1) * K)
            # Empty clusters keep these: their centre and the data covariance.
            self._set_start(self.weights, centres[rows] + shift, base_cov)
            self._m_step({"moments": stats[rows]}, shift)
            starts.append((self.weights.clone(), self.means.clone(), self.covariances.clone()))
        return starts, passes

    def _screen(
        self, X: Tensor, starts: list[tuple[Tensor, Tensor, Tensor]], rounds: list[tuple[int, int]],
        dtype: torch.dtype = torch.float32,
    ) -> tuple[tuple[Tensor, Tensor, Tensor], int]:
        """EM on the rows X [m, D] alone for the S ``starts`` (weights [K], means [K, D], covariances) at once,
        keeping the best at the end of each round (see the class docstring).

        Iteration t of start s is the module docstring's EM on X: its E-step (``_screen_e_step``, all S·K
        components in one plan) and its M-step (``_m_step_params``, batched over s), so each start follows its
        own EM path exactly (scikit-learn's iterates in float64, tested). ``rounds`` [(t_1, n_1), (t_2, n_2), …]:
        after t_i iterations in all, the n_i starts with the highest mean log-likelihood of X,

            ℓ_s = (1/m) Σ_n log Σ_k π_sk N(x_n | μ_sk, Σ_sk),

        go on (in their order among the starts), the others are dropped; a round ends early once no start gains
        ``tol`` from one iteration to the next, and the EM stops there. Returns the best start at the end (the
        first within 1e-9, relative, of the highest ℓ) with its parameters then, and the iterations made.
        """
        W, MU, COV = (torch.stack([p[i] for p in starts]) for i in range(3))
        U, _ = self._precision_cholesky(COV, self.covariance_type)
        shift = X.mean(0)
        tol = float(self.hparams.tol)
        it, prev = 0, None
        with torch.no_grad(), torch.autocast(device_type=X.device.type, enabled=False):
            ll, moments = self._screen_e_step(X, W, MU, U, shift, dtype)
            for until, keep in rounds:
                while not (it >= until or (prev is not None and tol > 0 and bool(((ll - prev) < tol).all()))):
                    W, MU, new_cov = self._m_step_params(moments, shift, MU, COV)
                    new_U, ok = self._precision_cholesky(new_cov, self.covariance_type)
                    kept = (~ok).reshape(ok.shape + (1,) * (new_cov.dim() - ok.dim()))  # not positive definite: kept
                    COV, U = torch.where(kept, COV, new_cov), torch.where(kept, U, new_U)
                    it, prev = it + 1, ll
                    ll, moments = self._screen_e_step(X, W, MU, U, shift, dtype)
                if W.shape[0] > keep:
                    top = torch.sort(ll, descending=True, stable=True).indices[:keep].sort().values
                    W, MU, COV, U, ll, moments = (t[top] for t in (W, MU, COV, U, ll, moments))
                    prev = None if prev is None else prev[top]
        best = float(ll.max())
        b = next(i for i in range(len(ll)) if float(ll[i]) >= best - 1e-9 * max(1.0, abs(best)))
        return (W[b], MU[b], COV[b]), it

    def _screen_e_step(
        self, X: Tensor, W: Tensor, MU: Tensor, U: Tensor, shift: Tensor, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """The E-step of S mixtures at once over the rows X [m, D]: weights W [S, K], means MU [S, K, D],
        precision factors U [S, …] → mean log-likelihoods [S] and statistics [S, K, M] around ``shift``, the
        E-step's arithmetic in ``dtype`` (statistics summed in float64).

        The S·K components are one expanded-form plan (``_e_plan``), columns component-major (k·S + s), so that
        the normalisation over each start's K components runs along contiguous rows of S::

            lp [b, K, S] = const + F [b, M] @ Q [M, K·S]           (one GEMM per chunk of rows)
            a = max_k lp,  e = exp(lp − a),  s = Σ_k e,  log p = a + log s,  r = e / s
            statistics [K·S, M] = rᵀ [K·S, b] @ F [b, M]            (one GEMM)
        """
        S, K, D = W.shape[0], self.n_components, self.n_features
        if self.covariance_type == "tied":
            U = U[:, None].expand(S, K, D, D)
        comp = lambda t: t.transpose(0, 1).reshape(S * K, *t.shape[2:])  # noqa: E731 - [S, K, …] → [K·S, …]
        plan = self._plan_for(comp(W), comp(MU), comp(U), shift, dtype)
        moments = torch.zeros(K * S, self._n_moments(), dtype=torch.float64, device=X.device)
        ll = torch.zeros(S, dtype=torch.float64, device=X.device)
        for chunk in torch.split(X, max(1, _MAX_CHUNK_ELEMENTS // max(self._n_moments(), S * K))):
            F = self._features(chunk, shift, second_moments=True, dtype=dtype)
            e = torch.addmm(plan["const"], F, plan["Q"]).view(-1, K, S)
            top = e.amax(1, keepdim=True)
            # lp − a is floored at -50: a component that far below a row's most likely one gets e^-50 of its share
            # instead of less, which no float32 sum sees, and no subnormal float appears (e^-88 and below in
            # float32, and products with them, cost ~100 times a normal one on x86).
            total = e.sub_(top).clamp_(min=_SCREEN_FLOOR).exp_().sum(1, keepdim=True)
            ll += (top + total.log()).sum((0, 1), dtype=torch.float64)
            moments += (e.div_(total).view(-1, K * S).T @ F).to(torch.float64)
        return ll / X.shape[0], moments.view(K, S, -1).transpose(0, 1)

    # ------------------------------------------------------------------ Lightning hooks: training
    def configure_optimizers(self) -> None:
        return None

    def on_train_start(self) -> None:
        if not bool(self.initialized):
            self.initialize_from(self.trainer.train_dataloader)
        if self._restored_train_stats is not None:  # a run restarted in the middle of an E-step
            self._train_stats = {k: v.to(self.device) for k, v in self._restored_train_stats.items()}
            self._restored_train_stats = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written in the middle of an epoch (a run stopped by a signal) keeps the E-step sums
        gathered so far, summed over processes: every process saves at the same batch, and only the total
        matters to the M-step."""
        if self._train_stats is not None:
            checkpoint["gmm_partial_e_step"] = {k: _all_reduce_sum(v).cpu() for k, v in self._train_stats.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        partial = checkpoint.get("gmm_partial_e_step")
        if partial is not None:  # rank 0 carries the total on; the others start their remaining batches at 0
            self._restored_train_stats = {k: v if _rank() == 0 else torch.zeros_like(v) for k, v in partial.items()}

    def on_train_epoch_start(self) -> None:
        self._plan = None
        self._train_stats = self._new_train_stats()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = _split_batch(batch)
        with torch.no_grad():
            self._accumulate(x)
        return None

    def on_train_epoch_end(self) -> None:
        st = self._train_stats
        if st is None:
            return
        keys = list(st)
        flat = _all_reduce_sum(torch.cat([st[k].reshape(-1) for k in keys]))
        reduced, offset = {}, 0
        for k in keys:
            reduced[k] = flat[offset : offset + st[k].numel()].view_as(st[k])
            offset += st[k].numel()
        self._train_stats = None
        count = float(reduced["count"])
        if count == 0:
            return
        ll_sum = float(reduced["ll"])
        ll = ll_sum / count
        # The statistics were centred on the shift of the parameters that produced them.
        self._m_step(reduced, self._e_plan()["shift64"])
        self.n_iter += 1
        change = ll - float(self.lower_bound)
        self.lower_bound.fill_(ll)
        ll_sum -= count * self._log_scale  # reported in the data's units; the change is the same in both
        tol = float(self.hparams.tol)
        if tol > 0 and int(self.n_iter) > 1 and change < tol:
            self.converged.fill_(True)
            if self._trainer is not None:
                self.trainer.should_stop = True
        p = self.n_parameters()
        metrics = {
            "train/log_likelihood": ll_sum / count,
            "train/bic": -2.0 * ll_sum + p * math.log(count),
            "train/aic": -2.0 * ll_sum + 2.0 * p,
            "train/n_iter": float(int(self.n_iter)),
            "train/converged": float(bool(self.converged)),
            **self._init_metrics,
        }
        self._init_metrics = {}
        self._log_metrics(metrics)

    def _log_metrics(self, metrics: dict[str, float]) -> None:
        self.last_metrics.update(metrics)
        if self._trainer is None:
            return
        for name, value in metrics.items():
            # Values are already global (summed statistics); sync_dist averages identical copies. float64 tensors:
            # Lightning would round a Python float to float32 (1e-7 of a BIC of 1e6 is 0.1).
            value = torch.tensor(value, dtype=torch.float64, device=self.device)
            self.log(name, value, on_step=False, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self) -> None:
        C = self.hparams.n_classes
        self._eval_stats = {
            "ll": torch.zeros((), dtype=torch.float64, device=self.device),
            "count": torch.zeros((), dtype=torch.float64, device=self.device),
            "table": torch.zeros(self.n_components, C or 0, dtype=torch.float64, device=self.device),
        }

    def _eval_step(self, batch: Any) -> Tensor | None:
        if not bool(self.initialized) or self._eval_stats is None:
            return None  # e.g. Lightning's sanity check before the first epoch initialises the model
        x, y = _split_batch(batch)
        with torch.no_grad():
            log_resp, log_norm = self._log_resp(x)
        st = self._eval_stats
        st["ll"] += log_norm.sum(dtype=torch.float64)
        st["count"] += x.shape[0]
        C = self.hparams.n_classes
        if y is not None and C:
            y = y.to(self.device).long().reshape(-1)
            labelled = y >= 0
            if bool((y[labelled] >= C).any()):
                raise ValueError(f"label {int(y.max())} out of range for n_classes={C}")
            pred = log_resp.argmax(1)[labelled]
            flat = pred * C + y[labelled]
            counts = torch.bincount(flat, minlength=self.n_components * C)
            st["table"] += counts.view(self.n_components, C).to(torch.float64)
        return log_resp

    def _eval_end(self, stage: str) -> dict[str, float]:
        st = self._eval_stats
        self._eval_stats = None
        if st is None or not bool(self.initialized):
            return {}
        flat = _all_reduce_sum(torch.cat([st["ll"].reshape(1), st["count"].reshape(1), st["table"].reshape(-1)]))
        ll_sum, count = float(flat[0]), float(flat[1])
        if count == 0:
            return {}
        ll_sum -= count * self._log_scale  # in the data's units
        p = self.n_parameters()
        metrics = {
            f"{stage}/log_likelihood": ll_sum / count,
            f"{stage}/bic": -2.0 * ll_sum + p * math.log(count),
            f"{stage}/aic": -2.0 * ll_sum + 2.0 * p,
        }
        table = flat[2:].view(self.n_components, -1).cpu().numpy()
        if table.size and table.sum() > 0:
            metrics[f"{stage}/accuracy"] = matched_accuracy(table)
            metrics[f"{stage}/ari"] = adjusted_rand_index(table)
        self._log_metrics(metrics)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()
        self._test_sample, self._test_sample_rows = [], 0

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch)
        if self._test_sample_rows < _REPORT_SAMPLE:
            x, _ = _split_batch(batch)
            take = x[: _REPORT_SAMPLE - self._test_sample_rows].detach().to("cpu", torch.float64)
            self._test_sample.append(take)
            self._test_sample_rows += take.shape[0]

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x, _ = _split_batch(batch)
        return self.predict(x)

    # ------------------------------------------------------------------ inference API
    def _chunks(self, x: Tensor | np.ndarray) -> list[Tensor]:
        x = torch.as_tensor(x).to(self.device)
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected input of shape (N, {self.n_features}), got {tuple(x.shape)}")
        return list(torch.split(x, 65536))

    @torch.no_grad()
    def predict_proba(self, x: Tensor | np.ndarray) -> Tensor:
        """Responsibilities r_nk [N, K] (float64)."""
        return torch.cat([self._log_resp(c)[0].exp() for c in self._chunks(x)]).to(torch.float64)

    @torch.no_grad()
    def predict(self, x: Tensor | np.ndarray) -> Tensor:
        """Most responsible component argmax_k r_nk, LongTensor [N]."""
        return torch.cat([self._log_resp(c)[0].argmax(1) for c in self._chunks(x)])

    @torch.no_grad()
    def score_samples(self, x: Tensor | np.ndarray) -> Tensor:
        """log p(x_n) [N] (float64), in the data's units like every likelihood the model reports.

        ``x`` is what the model is fed (standardised when the datamodule standardises, see ``feature_std``);
        the density is that of the rows in their own units: log p_z(z_n) − Σ_d log s_d.
        """
        return torch.cat([self._log_resp(c)[1] for c in self._chunks(x)]).to(torch.float64) - self._log_scale

    @torch.no_grad()
    def score(self, x: Tensor | np.ndarray) -> float:
        """Mean log-likelihood (1/N) Σ_n log p(x_n), scikit-learn's ``score``."""
        return float(self.score_samples(x).mean())

    def bic(self, x: Tensor | np.ndarray) -> float:
        """−2 Σ_n log p(x_n) + p log N, scikit-learn's ``bic``."""
        n = torch.as_tensor(x).shape[0]
        return -2.0 * self.score(x) * n + self.n_parameters() * math.log(n)

    def aic(self, x: Tensor | np.ndarray) -> float:
        """−2 Σ_n log p(x_n) + 2p, scikit-learn's ``aic``."""
        n = torch.as_tensor(x).shape[0]
        return -2.0 * self.score(x) * n + 2.0 * self.n_parameters()

    # ------------------------------------------------------------------ report
    def _scaling(self) -> tuple[Tensor, Tensor] | None:
        """(m [D], s [D]) float64 on the CPU with x = m + s·z, or None when the model sees the data as they are."""
        if self.hparams.get("feature_std") is None:
            return None
        f64 = torch.float64
        return torch.tensor(self.hparams.feature_mean, dtype=f64), torch.tensor(self.hparams.feature_std, dtype=f64)

    def parameters_in_data_units(self) -> dict[str, np.ndarray]:
        """Weights, means and covariances of the mixture over the rows in their own units: μ = m + s·μ_z,
        Σ = S Σ_z S with S = diag(s). The covariances keep their type's shape, except ``spherical``, which
        becomes diagonal ([K, D]) when the features were scaled differently. Without scaling, the parameters."""
        weights, means, covs = (t.detach().cpu() for t in (self.weights, self.means, self.covariances))
        scaling = self._scaling()
        if scaling is not None:
            m, sd = scaling
            means = m + sd * means
            ct = self.covariance_type
            if ct in ("full", "tied"):
                covs = covs * sd[:, None] * sd[None, :]
            elif ct == "diag":
                covs = covs * sd**2
            else:
                covs = covs[:, None] * sd**2
        return {"weights": weights.numpy(), "means": means.numpy(), "covariances": covs.numpy()}

    def parameters_dict(self) -> dict[str, np.ndarray]:
        """The fitted parameters as the model holds them (in the units it is fed) and, when the datamodule
        standardised the features, that standardisation and the mixture in the data's own units."""
        out = {
            "weights": self.weights.detach().cpu().numpy(),
            "means": self.means.detach().cpu().numpy(),
            "covariances": self.covariances.detach().cpu().numpy(),
            "precisions_cholesky": self.precisions_cholesky.detach().cpu().numpy(),
        }
        scaling = self._scaling()
        if scaling is not None:
            data = self.parameters_in_data_units()
            out.update(feature_mean=scaling[0].numpy(), feature_std=scaling[1].numpy(),
                       means_data_units=data["means"], covariances_data_units=data["covariances"])
        return out

    def report(self) -> dict[str, object]:
        """``parameters`` (npz arrays) and ``components``: test sample coloured by component.

        The figure, in the data's own units, projects the kept test sample (≤ 2000 points) onto its
        first two principal axes V [D, 2] (right singular vectors of the centred sample; identity
        when D = 2) and draws each component's 1σ and 2σ ellipses of the projected covariance
        Vᵀ Σ_k V around Vᵀ (μ_k − centre).
        """
        from matplotlib.figure import Figure
        from matplotlib.patches import Ellipse

        out: dict[str, object] = {"parameters": self.parameters_dict()}
        if not bool(self.initialized):
            return out
        K, D = self.n_components, self.n_features
        sample = torch.cat(self._test_sample) if self._test_sample else torch.zeros(0, D, dtype=torch.float64)
        pred_all = self.predict(sample).cpu() if sample.shape[0] else torch.zeros(0, dtype=torch.long)
        means = self.means.detach().cpu()
        covs = self._full_covariances().detach().cpu()
        scaling = self._scaling()
        if scaling is not None:  # drawn in the data's units
            m, sd = scaling
            sample, means, covs = m + sd * sample, m + sd * means, covs * sd[:, None] * sd[None, :]
        fig = Figure(figsize=(6.5, 5.5))
        ax = fig.add_subplot(1, 1, 1)
        colours = [f"C{k % 10}" for k in range(K)]
        if D == 1:
            if sample.shape[0]:
                pred = pred_all
                for k in range(K):
                    ax.hist(sample[pred == k, 0].numpy(), bins=40, alpha=0.5, color=colours[k], label=f"component {k}")
            for k in range(K):
                mu, sd = float(means[k, 0]), float(covs[k, 0, 0]) ** 0.5
                for s, alpha in ((1, 0.25), (2, 0.1)):
                    ax.axvspan(mu - s * sd, mu + s * sd, color=colours[k], alpha=alpha)
            ax.set_xlabel("x")
            ax.set_ylabel("count")
        else:
            if D == 2:
                centre, basis = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
            else:
                ref = sample if sample.shape[0] >= 2 else means
                centre = ref.mean(0)
                _, _, vt = torch.linalg.svd(ref - centre, full_matrices=False)
                basis = vt[:2].T
                ax.set_xlabel("PC 1")
                ax.set_ylabel("PC 2")
            if sample.shape[0]:
                pred = pred_all.numpy()
                pts = ((sample - centre) @ basis).numpy()
                sparse = pts.shape[0] < 300  # few points must stay visible
                ax.scatter(
                    pts[:, 0], pts[:, 1], s=14 if sparse else 4, c=[colours[p] for p in pred],
                    alpha=0.8 if sparse else 0.5, linewidths=0,
                )
            mu2 = ((means - centre) @ basis).numpy()
            cov2 = (basis.T @ covs @ basis).numpy()
            for k in range(K):
                vals, vecs = np.linalg.eigh(cov2[k])
                vals = np.clip(vals, 0.0, None)
                angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
                for s in (1, 2):
                    ax.add_patch(
                        Ellipse(
                            mu2[k], 2 * s * math.sqrt(vals[1]), 2 * s * math.sqrt(vals[0]), angle=angle,
                            fill=False, color=colours[k], lw=1.5 if s == 1 else 0.8, ls="-" if s == 1 else "--",
                        )
                    )
                ax.plot(*mu2[k], marker="x", color="black", ms=7)
                ax.annotate(str(k), mu2[k], textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.autoscale_view()
        ax.set_title(f"GMM ({self.covariance_type}, K={K}): 1σ/2σ ellipses, test sample by component")
        fig.tight_layout()
        out["components"] = fig
        return out
