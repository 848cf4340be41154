"""The ``labbook`` command: ``labbook train [OVERRIDES]`` (a Hydra app) and ``labbook predict``.

Errors a user can fix end with one line on stderr and a non-zero exit; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ENV_USER_FULL_ERROR = "LABBOOK_FULL_ERROR"
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--version", "--shell-completion", "-sc")

USAGE = """\
usage: labbook COMMAND [ARGS]      (labbook --version: the version and the checkout it runs from)

commands:
  train [OVERRIDES ...]      compose conf/train.yaml with Hydra overrides, train, test, record in MLflow
                             (`labbook train --help` lists the config groups and keys)
  predict RUN_ID [INPUT ...] load a run's best checkpoint from the store and print one answer per input
                             (inputs from stdin, one per line, when none are given)

The store is $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
"""


def _quiet_libraries() -> None:
    # stdout/stderr belong to labbook's own answers and errors, not to download progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Advice aimed at Lightning users that labbook already acts on (exact sharded sums, worker counts).
    for message in (r".*does not have many workers.*", r".*`srun` command is available.*",
                    r".*recommended to use `self\.log\(.*sync_dist=True.*", r".*Using `DistributedSampler` with the dataloaders.*",
                    r".*isinstance\(treespec, LeafSpec\).*", r".*The number of training batches .* is smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=message)


def _fail(exc: BaseException, full_error: bool, prefix: str = "") -> int:
    from labbook.errors import one_line

    if full_error:
        raise exc
    line = prefix + one_line(exc)
    run_id = getattr(exc, "labbook_run_id", None)
    if run_id:
        line += f" (run {run_id} marked FAILED)"
    print(f"labbook: error: {line}", file=sys.stderr)
    return 1


def _prepare_store(uri: str) -> None:
    """Create or upgrade the store, or say in one line why it cannot be used."""
    from labbook.errors import UserError, one_line
    from labbook.store import prepare_store

    try:
        prepare_store(uri)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"tracking store {uri}: {one_line(exc)}") from exc


def train_main(args: Sequence[str]) -> int:
    """Hand the overrides to Hydra; errors from composing or training come back to us as exceptions."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from labbook import schemas
    from labbook.errors import RunKilled
    from labbook.store import ENV_URI, resolve_tracking_uri

    full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra needs HYDRA_FULL_ERROR=1 below and DDP workers inherit it: they learn the user's choice here.
    os.environ[ENV_USER_FULL_ERROR] = "1" if full_error else ""
    informational = any(a in INFO_FLAGS or a.startswith("--cfg=") for a in args)
    _quiet_libraries()
    uri, store_ready = "", False
    if not informational:
        uri = resolve_tracking_uri()
        os.environ[ENV_URI] = uri
        if any(a in ("-m", "--multirun") for a in args):
            # Sweep jobs may run in parallel (joblib, SLURM): one process creates the store before any starts.
            try:
                _prepare_store(uri)
            except Exception as exc:  # noqa: BLE001
                return _fail(exc, full_error)
            store_ready = True

    schemas.register()

    failures: list[BaseException] = []

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def _task(cfg: DictConfig) -> Any:
        nonlocal store_ready
        hc = HydraConfig.get()
        try:
            # A bad config is reported before torch, Lightning and MLflow are even imported (~5 s).
            schemas.validate(cfg)
            if not store_ready:  # one run: this process is the only one, and DDP workers start later
                _prepare_store(uri)
                store_ready = True
            from labbook.train import run, summary

            result = run(cfg, overrides=list(hc.overrides.task), choices=dict(hc.runtime.choices))
        except Exception as exc:  # noqa: BLE001
            if full_error:
                raise
            # Kept for after Hydra returns: a sweep goes on with its other jobs, and Hydra does not
            # print its own multi-line report for a job that raised.
            failures.append(exc)
            if hc.mode == RunMode.MULTIRUN:
                _fail(exc, full_error, prefix=f"job {hc.job.num} ({' '.join(hc.overrides.task)}): ")
            return None
        print(summary(result), flush=True)
        headline = result.get("headline")
        return headline[1] if headline else None

    sys.argv = [sys.argv[0], *args]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us, so we decide how they are shown
    try:
        _task()
    except RunKilled as exc:
        print(f"labbook: {exc.signal_name} received; run {exc.run_id} marked KILLED", file=sys.stderr)
        return int(exc.code)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else _fail(exc, full_error)
    except KeyboardInterrupt:
        print("labbook: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001
        return _fail(exc, full_error)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if failures:
        return _fail(failures[0], full_error) if len(failures) == 1 else _fail(
            failures[0], full_error, prefix=f"{len(failures)} jobs failed; the first: ")
    return 0


def worker_main(config_path: Path) -> int:
    """A DDP worker rank started by Lightning: same config as rank 0, no Hydra, no store."""
    import yaml
    from omegaconf import OmegaConf

    from labbook.train import run
    from labbook.workers import die_with_parent

    die_with_parent()
    _quiet_libraries()
    cfg = OmegaConf.create(yaml.safe_load(config_path.read_text()))
    try:
        run(cfg)
    except Exception as exc:  # noqa: BLE001 - rank 0 reports the job; this line says what this rank met
        return _fail(exc, bool(os.environ.get(ENV_USER_FULL_ERROR)), prefix=f"rank {os.environ.get('LOCAL_RANK')}: ")
    return 0


def version_line() -> str:
    """``labbook X.Y.Z from /path/to/checkout``: which code this command runs (the suite checks it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("labbook")
    except PackageNotFoundError:
        number = "(not installed)"
    return f"labbook {number} from {CONF_DIR.parent}"


def main(argv: Sequence[str] | None = None) -> int:
    from labbook.workers import worker_config

    worker = worker_config()
    if worker is not None:
        return worker_main(worker)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version_line())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        return train_main(rest)
    if command == "predict":
        from labbook.predict import predict_main

        return predict_main(rest)
    print(f"labbook: error: unknown command {command!r}; expected one of: train, predict", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
