"""``labbook train [OVERRIDES]``: a Hydra app around :func:`labbook.train.fit.run`, and the DDP worker entry.

The store is resolved from the composed config (``logger.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
else ``./mlflow.db``) and prepared once: here for a single run, by :class:`labbook.sweep.parent.Sweep`
before the first job of a sweep.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from labbook.cli.console import fail, freeze_imports, quiet_libraries
from labbook.cli.console import full_error as _full_error
from labbook.config.compose import task_overrides
from labbook.config.groups import CONF_DIR

ENV_USER_FULL_ERROR = "LABBOOK_FULL_ERROR"


def main(args: Sequence[str]) -> int:
    """Hand the overrides to Hydra; errors from composing or training come back to us as exceptions."""
    from labbook.timing import mark

    mark("hydra-imported")
    full_error = _full_error()
    # Hydra needs HYDRA_FULL_ERROR=1 below and DDP workers inherit it: they learn the user's choice here.
    os.environ[ENV_USER_FULL_ERROR] = "1" if full_error else ""
    quiet_libraries()
    try:
        args = project_config_dir(args)
        answer = _answer_before_hydra(args)
    except Exception as exc:  # noqa: BLE001
        return fail(exc, full_error)
    if answer is not None:
        print(answer, end="")
        return 0
    return _run_hydra(args, full_error)


def _answer_before_hydra(args: Sequence[str]) -> str | None:
    """What is checked or answered before Hydra starts: options of the config groups, a resume's overrides,
    ``--help`` and ``-sc``. Returns the text to print instead of training, if any."""
    check_group_options(args)
    check_resume_arguments(args)
    if "-h" in args or "--help" in args:
        shown = own_help(args)
        if shown is not None:
            return shown + "\n"
    if "-sc" in args or "--shell-completion" in args:
        return completion_script(args)
    return None


def _run_hydra(args: Sequence[str], full_error: bool, results: list[dict[str, Any]] | None = None) -> int:
    """Hydra composes the config and runs the job (or the sweep's jobs); how it ended is the exit code. Each
    job that ran in this process and trained adds its result to ``results`` (the Python API's answer)."""
    import hydra
    from omegaconf import DictConfig

    from labbook.config import schemas
    from labbook.config.compose import composed_once, search_project_configs
    from labbook.sweep.parent import SweepOutcome

    schemas.register()
    search_project_configs()
    failures: list[BaseException] = []
    outcome = SweepOutcome()

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def task(cfg: DictConfig) -> Any:
        return run_job(cfg, failures, full_error, results)

    sys.argv = [sys.argv[0], *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us, so we decide how they are shown
    try:
        # Hydra composes once where it would compose the same config twice (labbook.config.compose).
        with outcome.current(), composed_once():
            task()
    except BaseException as exc:  # noqa: BLE001
        return _ended_early(exc, outcome, full_error)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if failures:
        return fail(failures[0], full_error) if len(failures) == 1 else fail(
            failures[0], full_error, prefix=f"{len(failures)} jobs failed; the first: ")
    return _not_finished(outcome)


def _not_finished(outcome: Any) -> int:
    """The exit code of a sweep that ended: 1, said in one line, when some of its jobs did not finish."""
    if outcome.failed:  # jobs that ran in other processes (joblib, submitit) reported their own errors
        print(f"labbook: error: {outcome.failed} job(s) of the sweep did not finish", file=sys.stderr)
        return 1
    return 0


def _ended_early(exc: BaseException, outcome: Any, full_error: bool) -> int:
    """The exit code of a command that Hydra left with ``exc``: a sweep that could not start, a signal (the
    sweep's parent and running jobs KILLED with it), Ctrl-C, an exit, or an error."""
    import signal

    from labbook.errors import RunKilled
    from labbook.sweep.parent import JobWithoutResult, SweepNotStarted

    if isinstance(exc, SweepNotStarted):
        return fail(exc.error, full_error)
    killed = outcome.abort(exc)  # a sweep interrupted (or broken) before its end: its parent run says so
    if isinstance(exc, JobWithoutResult) and outcome.failed:  # its launcher said which (and how it ended)
        return _not_finished(outcome)
    if killed is not None:
        name = signal.Signals(killed[1]).name
        print(f"labbook: {name} received; sweep run {killed[0]} and its running jobs marked KILLED", file=sys.stderr)
        return 128 + killed[1]
    if isinstance(exc, RunKilled):
        print(f"labbook: {exc.signal_name} received; run {exc.run_id} marked KILLED", file=sys.stderr)
        return int(exc.code)
    if isinstance(exc, SystemExit):
        return int(exc.code or 0) if not isinstance(exc.code, str) else fail(exc, full_error)
    if isinstance(exc, KeyboardInterrupt):
        print("labbook: interrupted", file=sys.stderr)
        return 130
    return fail(exc, full_error)


def run_job(cfg: Any, failures: list[BaseException], full_error: bool,
            results: list[dict[str, Any]] | None = None) -> Any:
    """One job, as Hydra runs it: a single run, or one job of a sweep (in this process or a launcher's).
    Returns what a sweeper learns of the job; an error is recorded in ``failures`` (and, in a sweep, said at
    once, so that the sweep goes on with its other jobs)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from labbook.errors import one_line
    from labbook.sweep.job import job_of_sweep
    from labbook.timing import mark
    from labbook.train.ranks import is_rank_zero

    mark("composed")
    hc = HydraConfig.get()
    sweep_job = None
    quiet_libraries()  # again: a launcher may run this job in a fresh process (joblib, submitit)
    try:
        if is_rank_zero():  # first: a job whose config is refused still counts in its sweep
            sweep_job = job_of_sweep(hc, cfg)
        with _own_devices(hc, sweep_job):
            result = _train(cfg, hc, sweep_job)
    except Exception as exc:  # noqa: BLE001
        if sweep_job is not None:
            sweep_job.record("FAILED", getattr(exc, "labbook_run_id", None), error=one_line(exc))
        if full_error:
            raise
        # Kept for after Hydra returns: a sweep goes on with its other jobs, and Hydra does not print its own
        # multi-line report for a job that raised.
        failures.append(exc)
        if hc.mode == RunMode.MULTIRUN:
            fail(exc, full_error, prefix=f"job {hc.job.num} ({' '.join(task_overrides(hc))}): ")
        return None
    if result is not None and results is not None:
        results.append(result)
    return None if result is None else _report(result)


def _own_devices(hc: Any, sweep_job: Any) -> Any:
    """A parallel sweep's job on its own GPUs (labbook.sweep.devices): ``CUDA_VISIBLE_DEVICES`` set before
    torch initialises CUDA, the slot held until the job ends."""
    import contextlib

    if sweep_job is None:
        return contextlib.nullcontext()
    from labbook.sweep.devices import job_devices
    from labbook.sweep.job import STOPPING

    sweep_dir = Path(str(hc.sweep.dir))
    return job_devices(sweep_dir, f"job {sweep_job.number}", sweep_dir / STOPPING)


def _train(cfg: Any, hc: Any, sweep_job: Any) -> dict[str, Any] | None:
    """Validate, prepare the store, and train the job on this rank; the result on rank 0 (None when a sweep's
    job was skipped, or on another rank)."""
    from hydra.types import RunMode

    from labbook.config import schemas
    from labbook.run.owners import reap_own_host
    from labbook.store.prepare import prepare_store
    from labbook.store.uri import resolve_tracking_uri
    from labbook.timing import mark
    from labbook.train.ranks import is_rank_zero

    # A bad config is reported before torch, Lightning and MLflow are even imported (~5 s).
    schemas.validate(cfg)
    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    mark("validated")
    if hc.mode != RunMode.MULTIRUN:  # a sweep's store was prepared before its first job (labbook.sweep.parent)
        prepare_store(uri)
        mark("store-prepared")
    if not is_rank_zero():  # a rank started by the cluster (SLURM tasks): rank 0 owns the run
        return _train_other_rank(cfg, uri)
    reap_own_host(uri)
    mark("reaped")
    from labbook.train.fit import open_run, run
    from labbook.train.job import prepare

    freeze_imports()
    mark("train-imported")
    if sweep_job is not None and _skip(cfg, hc, sweep_job, uri):
        return None
    if sweep_job is not None and not cfg.logger.experiment_name:  # every job beside its parent
        cfg.logger.experiment_name = sweep_job.experiment
    plan = _continued(cfg, hc, uri, sweep_job)
    if plan is False:  # a requeued job whose run had already FINISHED
        return None
    if plan is not None:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(plan.config)
    job = prepare(cfg, choices=dict(hc.runtime.choices))
    overrides = task_overrides(hc)
    result = run(job, open_run(job, uri, resume=plan, sweep=sweep_job, overrides=overrides), overrides=overrides,
                 resume=plan)
    if sweep_job is not None:
        sweep_job.record("FINISHED", result["run_id"])
    return result


def _train_other_rank(cfg: Any, uri: str) -> None:
    """A rank other than 0 that the cluster started: it trains without a store, in a requeued job from the
    checkpoint rank 0 continues (:func:`labbook.train.requeue.rank_checkpoint`)."""
    from labbook.train.fit import run
    from labbook.train.job import prepare
    from labbook.train.requeue import rank_checkpoint

    checkpoint = rank_checkpoint(uri, cfg.paths.checkpoint_dir)
    if checkpoint is False:  # rank 0 found the job's run FINISHED: nothing to train
        return None
    if checkpoint is not None:
        cfg.ckpt_path = str(checkpoint)
    freeze_imports()
    run(prepare(cfg), None)
    return None


def _skip(cfg: Any, hc: Any, sweep_job: Any, uri: str) -> bool:
    """Whether a sweep's job is not to train: its sweep was interrupted before it started, or (with
    ``sweep.resume``) its configuration already FINISHED in an earlier round."""
    from labbook.sweep.job import stopping

    if stopping(hc):
        print(f"labbook: job {sweep_job.number} ({sweep_job.name}): not started, the sweep was "
              "interrupted", file=sys.stderr, flush=True)
        return True
    if cfg.sweep.resume and (done := sweep_job.finished_run(uri)) is not None:
        print(f"labbook: job {sweep_job.number} ({sweep_job.name}): this configuration already "
              f"FINISHED as run {done}; reusing it", file=sys.stderr, flush=True)
        sweep_job.record("FINISHED", done, reused=True)
        return True
    return False


def _continued(cfg: Any, hc: Any, uri: str, sweep_job: Any) -> Any:
    """The plan that continues a stored run (:mod:`labbook.train.resume`): the one ``resume=`` names, or the
    one an earlier attempt of this job opened (a requeued Slurm job, a restarted torchrun launch:
    :mod:`labbook.train.requeue`); None for a new run, False when that run had FINISHED already (nothing is
    left to do)."""
    from labbook.train.requeue import continue_note, earlier_run

    if (run_id := _resume_id(cfg, hc)) is not None:
        return _resume_plan(cfg, hc, uri, run_id, [o for o in task_overrides(hc) if not o.startswith("resume=")])
    earlier = earlier_run(uri, sweep_job)
    if earlier is None:
        return None
    if earlier.status == "FINISHED":
        print(f"labbook: the job came back after its run {earlier.run_id} FINISHED; nothing left to train",
              file=sys.stderr, flush=True)
        if sweep_job is not None:
            sweep_job.record("FINISHED", earlier.run_id, reused=True)
        return False
    from labbook.store.models import has_checkpoint
    from labbook.store.read import open_reader

    if not has_checkpoint(open_reader(uri), earlier, "last"):
        print(f"labbook: the job came back; its run {earlier.run_id} ({earlier.status}) stopped before its first "
              "checkpoint: training starts over in a new run", file=sys.stderr, flush=True)
        return None
    print(continue_note(earlier), file=sys.stderr, flush=True)
    return _resume_plan(cfg, hc, uri, earlier.run_id, [])


def _resume_plan(cfg: Any, hc: Any, uri: str, run_id: str, new: list[str]) -> Any:
    """The plan that continues the stored run ``run_id`` with the ``new`` overrides (labbook.train.resume)."""
    from hydra import compose
    from omegaconf import OmegaConf

    from labbook.train.resume import plan_resume


    def composed(overrides: list[str]) -> dict:
        return OmegaConf.to_container(compose("train", overrides=overrides), resolve=True, enum_to_str=True)

    return plan_resume(uri, run_id, new, checkpoint_dir=Path(cfg.paths.checkpoint_dir),
                       compose=composed)


def _resume_id(cfg: Any, hc: Any) -> str | None:
    """The run id ``resume=`` names, as typed: Hydra reads a short id such as ``3744e1`` as the number 37440.0
    (and ``001234`` as 1234), so the composed value is not the id. A quoted id is taken without its quotes."""
    typed = next((o.split("=", 1)[1] for o in task_overrides(hc) if o.startswith("resume=")), None)
    if typed is None:
        return str(cfg.resume) if cfg.resume else None
    if len(typed) >= 2 and typed[0] == typed[-1] and typed[0] in "'\"":
        typed = typed[1:-1]
    return typed or None


def _report(result: dict[str, Any]) -> dict[str, Any]:
    """The run's closing lines, and what a sweeper learns of the job: its objectives (validation, never the
    test headline), whether the search pruned it, its run."""
    from labbook.train.fit import summary

    print(summary(result), flush=True)
    missing = [metric for metric, value in result["objectives"].items() if value is None]
    if missing:
        print(f"labbook: warning: optimized_metric {', '.join(missing)} was never logged by this run (it logged "
              f"{', '.join(sorted(result['metrics']))})", file=sys.stderr, flush=True)
    return {"objectives": list(result["objectives"].values()), "pruned": result["pruned"], "run_id": result["run_id"]}


def project_config_dir(args: Sequence[str]) -> list[str]:
    """``--config-dir DIR`` (``-cd DIR``, Hydra's flag): the project's config folder, which labbook puts before
    its own (Hydra would put it after); the other arguments as they are."""
    args, rest = list(args), []
    while args:
        arg = args.pop(0)
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            from labbook.config.groups import use_project
            from labbook.errors import UserError

            if not eq:
                if not args:
                    raise UserError(f"{flag} needs a folder of configs (conf/ of your project)")
                value = args.pop(0)
            use_project(value)
            continue
        rest.append(arg)
    return rest


def own_help(args: Sequence[str]) -> str | None:
    """``labbook train [OVERRIDES] --help`` rendered by labbook (:mod:`labbook.cli.train_help`, well under a
    second), or None where Hydra's own is needed: another config path, name or folder. (``--hydra-help``
    stays Hydra's; ``--help`` wins over it, as in Hydra.)"""
    from hydra._internal.utils import get_args_parser

    parsed = get_args_parser().parse_args(list(args))  # Hydra's own flags, parsed as Hydra parses them
    if not parsed.help or parsed.config_path or parsed.config_name or parsed.config_dir:
        return None
    from labbook.cli.train_help import train_help

    return train_help(parsed.overrides, resolve=parsed.resolve)


def completion_script(args: Sequence[str]) -> str:
    """``labbook train -sc install=bash|zsh``: labbook's completion script (``labbook completion SHELL``).
    Hydra's would complete ``labbook`` itself as one Hydra app, whose first word is a subcommand, so that
    ``labbook train mod<TAB>`` never reached it."""
    from labbook.cli.completion import SCRIPTS
    from labbook.errors import UserError

    for arg in args:
        key, _, shell = arg.partition("=")
        if key == "install" and shell in SCRIPTS:
            return SCRIPTS[shell]
    raise UserError('-sc: labbook completes with eval "$(labbook completion bash)" (or zsh), which '
                    "-sc install=bash|zsh prints too; it is removed with complete -r labbook (bash) or "
                    "compdef -d labbook (zsh)")


def check_resume_arguments(args: Sequence[str]) -> None:
    """For ``resume=RUN_ID``, before Hydra composes anything: the run must exist in the store, then every
    override must be one a resume may change (Hydra would otherwise judge ``model.hidden_size=8`` against
    the default model, not the run's)."""
    given = {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[1] for a in args if "=" in a and not a.startswith("-")}
    if not given.get("resume"):
        return
    from labbook.errors import UserError
    from labbook.store.read import open_reader
    from labbook.store.uri import resolve_tracking_uri
    from labbook.train.resume import allowed, describe_resumable

    try:
        open_reader(resolve_tracking_uri(given.get("logger.tracking_uri"))).find_run(given["resume"])
    except UserError as exc:
        raise UserError(f"resume={given['resume']}: {exc}") from None
    refused = [k for k in given if k not in ("resume", "trainer", "debug") and not k.startswith("hydra")
               and not allowed(k)]
    if refused:
        raise UserError(f"resume={given['resume']}: {', '.join(refused)} cannot change on a resume (that is a "
                        f"different experiment: start a new run); a resume may change {describe_resumable()}, "
                        "and choose trainer= and debug= presets")


def check_group_options(args: Sequence[str]) -> None:
    """``GROUP=OPTION`` must name an option that exists, optional groups (``experiment``, ``debug``) too:
    Hydra silently composes the defaults for a misspelled optional one."""
    from labbook.config.groups import options as group_options
    from labbook.errors import UserError

    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or "." in key or "(" in value or not value:
            continue
        options = group_options(key)
        if not options:  # not one of labbook's groups: a key, or Hydra's own (hydra/launcher)
            continue
        for option in value.split(","):
            if option not in options and option != "null":
                raise UserError(f"{key}={option!r} is not an option of the {key} group: expected one of "
                                + ", ".join(options))


def worker_main(config_path: Path) -> int:
    """A DDP worker rank started by Lightning: same config as rank 0, no Hydra, no store."""
    import yaml
    from omegaconf import OmegaConf

    from labbook.train.fit import run
    from labbook.train.job import prepare
    from labbook.train.ranks import die_with_parent

    freeze_imports()
    die_with_parent()
    quiet_libraries()
    cfg = OmegaConf.create(yaml.safe_load(config_path.read_text()))
    try:
        run(prepare(cfg), None)
    except Exception as exc:  # noqa: BLE001 - rank 0 reports the job; this line says what this rank met
        return fail(exc, bool(os.environ.get(ENV_USER_FULL_ERROR)), prefix=f"rank {os.environ.get('LOCAL_RANK')}: ")
    return 0
