"""Every name a run carries in the store, defined once: artifact paths, tag names, and the config keys that
belong to one run only. Code that writes a name and code that reads it both import it from here, so the two
can never drift apart (``compare`` reading ``sweep.objective`` that the summary wrote, ``resume`` finding the
``checkpoints/last.ckpt`` that training stored).

A leaf: no import, nothing computed. MLflow's own tags (``mlflow.*``) are here too, because labbook reads
and writes them by name.
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------------ artifacts
CONFIG = "config/config.yaml"  # the resolved config the run (now) trains with: enough to rebuild it
OVERRIDES = "config/overrides.yaml"  # the command line's overrides, each resume's appended
RESUME_RECORD = "config/resume-{number}.yaml"  # what resume N changed and where it started
CHECKPOINTS = "checkpoints"  # the folder of the two below
BEST_CHECKPOINT = "checkpoints/best.ckpt"  # the best by the checkpoint's monitor
LAST_CHECKPOINT = "checkpoints/last.ckpt"  # the end of the last epoch (or the batch a signal stopped at)
STORED_CHECKPOINT = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}  # by a logged model's labbook.checkpoint
GIT_PATCH = "git/diff.patch"  # uncommitted changes of a dirty checkout
PACKAGES = "environment/packages.txt"  # every installed distribution, name==version
PLOTS = "plots"  # a model's report figures, plots/<name>.png
SWEEP_SPACE = "sweep/space.yaml"  # a sweep parent's swept and fixed overrides
SWEEP_SUMMARY_CSV = "sweep/summary.csv"
SWEEP_SUMMARY_TXT = "sweep/summary.txt"
SEARCH_PLOTS = "optuna"  # a search parent's Optuna figures

# ------------------------------------------------------------------------------ a run's MLflow model
LOGGED_MODEL = "model"  # the name of a run's logged models (MLflow 3), one per checkpoint logged
MODEL_CHECKPOINT = "checkpoint"  # the pyfunc's artifacts: the checkpoint file
MODEL_CONFIG = "config"  # and the run's resolved config (config.yaml)
MODEL_CHECKPOINT_KIND = "labbook.checkpoint"  # a logged model's tag: best or last
MODEL_EPOCH = "labbook.epoch"  # a logged model's tag: the epoch its checkpoint ended
MODEL_GLOBAL_STEP = "labbook.global_step"  # and the metrics' step it was taken at

# ------------------------------------------------------------------------------------- MLflow's tags
PARENT_RUN = "mlflow.parentRunId"  # a sweep's child names its parent run (MLflow's UI nests it there)
RUN_NAME = "mlflow.runName"
USER = "mlflow.user"
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
EXPERIMENT_KIND = "mlflow.experimentKind"  # an experiment's tag
DATASET_CONTEXT = "mlflow.data.context"  # a dataset input's tag

# ----------------------------------------------------------------------------------- a run's own tags
ERROR = "error"  # why a run FAILED or was KILLED
HOST = "host"
SLURM_JOB = "slurm.job_id"  # the job squeue shows (an array's task as <array job>_<task>), where Slurm started it
SLURM_ARRAY_TASK = "slurm.array_task_id"
SLURM_NODES = "slurm.nodelist"
TORCHRUN_JOB = "torchrun.job"  # <--rdzv-id>@<--rdzv-endpoint> of the torchrun launch that started it
TORCHRUN_RESTARTS = "torchrun.restarts"  # its agent's TORCHELASTIC_RESTART_COUNT when it last opened the run
SLURM_REQUEUES = "slurm.requeues"  # how often Slurm requeued the job (SLURM_RESTART_COUNT) when it last opened the run
CUDA_DEVICES = "cuda.visible_devices"  # the run's CUDA_VISIBLE_DEVICES where set (a parallel sweep job's own slice)
COMMAND = "command"
HEADLINE = "headline_metric"  # the name of the metric printed at a run's end (its value is a metric)
OBJECTIVE = "objective"  # what a sweep of this run would rank it by
OBJECTIVE_DIRECTION = "objective.direction"
CHECKPOINT_MONITOR = "checkpoint.monitor"
CHECKPOINT_BEST_SCORE = "checkpoint.best_score"
GIT_COMMIT = "git.commit"  # the project's: the git repository holding the working directory
GIT_DIRTY = "git.dirty"  # its uncommitted changes, untracked source files included
LABBOOK_FROM = "labbook.installed_from"  # labbook's own folder (a checkout, or site-packages/labbook)
LABBOOK_COMMIT = "labbook.git.commit"  # labbook's own commit, when installed from a checkout
VERSIONS = "versions."  # versions.<package>
TIMING_BUILD = "timing.build_s"
TIMING_FIT = "timing.fit_s"
TIMING_TEST = "timing.test_s"
RESUMES = "resumes"  # how often the run was resumed

# Who resumed (or requeued) a stopped run the n-th time: a param, so that of two processes claiming the same
# attempt at once exactly one succeeds (the store refuses a param's second value). labbook.run.owners.claim.
CLAIM = "labbook.claim."  # labbook.claim.<n>

# Who owns a RUNNING run (labbook.run.owners), and what reaping one left.
OWNER_HOST = "owner.host"
OWNER_PID = "owner.pid"
OWNER_BOOT_ID = "owner.boot_id"
OWNER_START_TICKS = "owner.start_ticks"
HEARTBEAT = "heartbeat"
REAPED = "reaped"
REAPED_AT = "reaped.at"

# ------------------------------------------------------------------------------------------ sweeps
SWEEP_ROLE = "sweep.role"  # "parent" or "child"
SWEEP_KEY = "sweep.key"  # identifies a sweep's command across re-runs
SWEEP_SWEPT = "sweep.swept"  # the swept keys, comma-separated
SWEEP_LAUNCHER = "sweep.launcher"
SWEEP_SWEEPER = "sweep.sweeper"
SWEEP_ROUNDS = "sweep.rounds"
SWEEP_DIR = "sweep.dir"
SWEEP_JOB = "sweep.job"  # a child's job number
SWEEP_OVERRIDES = "sweep.overrides"  # a child's overrides
SWEEP_CONFIG_HASH = "sweep.config_hash"  # what a child trains (labbook.sweep.space.config_hash)
SWEEP_JOBS = "sweep.jobs"
SWEEP_FAILED = "sweep.failed"
SWEEP_FAILED_JOBS = "sweep.failed_jobs"
SWEEP_OBJECTIVE = "sweep.objective"
SWEEP_DIRECTION = "sweep.direction"
SWEEP_BEST_RUN = "sweep.best_run_id"
SWEEP_BEST_NAME = "sweep.best_name"

# A search's trials and its parent.
TRIAL_NUMBER = "optuna.trial_number"
TRIAL_STATE = "optuna.state"  # RUNNING, COMPLETE, PRUNED, FAIL
TRIAL_PARAM = "optuna.param."  # optuna.param.<key>
SEARCH_BEST = "optuna.best_"  # optuna.best_trial, optuna.best_value, optuna.best_run_id
SEARCH_BEST_PARAM = "optuna.best."  # optuna.best.<key>
SEARCH_PARETO_TRIALS = "optuna.pareto_trials"
SEARCH_PARETO_RUNS = "optuna.pareto_run_ids"

# -------------------------------------------------------------------------------- run-local config keys
# Config keys whose values belong to one run, not to what it tries (directories named by time and job; how a
# sweep runs): recorded as tags, not params, so that the params that differ between a sweep's jobs are the
# swept ones.
RUN_LOCAL_PREFIXES = ("paths.", "sweep.")
# Keys that differ between any two runs without being part of what was tried: which checkpoint or run a run
# continued, and which store it wrote to. ``compare`` never shows them; ``diff`` lists them apart.
RUN_LOCAL_KEYS = ("ckpt_path", "resume", "logger.tracking_uri")
# How a run is recorded, not what it computes: left out of what identifies a sweep's job (its config hash)
# and its command (the sweep's key).
HOW_RECORDED = ("logger.run_name", "logger.heartbeat_s", "logger.flush_every_s", "logger.log_model")
