"""``labbook train [OVERRIDES]``: a Hydra app around :func:`labbook.train.run`, and the DDP worker entry.

The store is resolved from the composed config (``logger.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
else ``./mlflow.db``) and prepared once: here for a single run, by :class:`labbook.sweeps.SweepStore`
before the first job of a sweep.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

from labbook.console import CONF_DIR, fail, quiet_libraries

ENV_USER_FULL_ERROR = "LABBOOK_FULL_ERROR"


def train_main(args: Sequence[str]) -> int:
    """Hand the overrides to Hydra; errors from composing or training come back to us as exceptions."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from labbook import schemas
    from labbook.errors import RunKilled
    from labbook.store import prepare_store, resolve_tracking_uri

    full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    # Hydra needs HYDRA_FULL_ERROR=1 below and DDP workers inherit it: they learn the user's choice here.
    os.environ[ENV_USER_FULL_ERROR] = "1" if full_error else ""
    quiet_libraries()
    try:
        check_group_options(args)
    except Exception as exc:  # noqa: BLE001
        return fail(exc, full_error)
    schemas.register()

    failures: list[BaseException] = []

    @hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
    def _task(cfg: DictConfig) -> Any:
        hc = HydraConfig.get()
        try:
            # A bad config is reported before torch, Lightning and MLflow are even imported (~5 s).
            schemas.validate(cfg)
            uri = resolve_tracking_uri(cfg.logger.tracking_uri)
            if hc.mode != RunMode.MULTIRUN:  # a sweep's store was prepared before its first job (SweepStore)
                prepare_store(uri)
            from labbook.train import run, summary

            result = run(cfg, uri, overrides=list(hc.overrides.task), choices=dict(hc.runtime.choices))
        except Exception as exc:  # noqa: BLE001
            if full_error:
                raise
            # Kept for after Hydra returns: a sweep goes on with its other jobs, and Hydra does not
            # print its own multi-line report for a job that raised.
            failures.append(exc)
            if hc.mode == RunMode.MULTIRUN:
                fail(exc, full_error, prefix=f"job {hc.job.num} ({' '.join(hc.overrides.task)}): ")
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
        return int(exc.code or 0) if not isinstance(exc.code, str) else fail(exc, full_error)
    except KeyboardInterrupt:
        print("labbook: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # noqa: BLE001
        return fail(exc, full_error)
    finally:
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if failures:
        return fail(failures[0], full_error) if len(failures) == 1 else fail(
            failures[0], full_error, prefix=f"{len(failures)} jobs failed; the first: ")
    return 0


def check_group_options(args: Sequence[str]) -> None:
    """``GROUP=OPTION`` must name an option that exists, optional groups (``experiment``, ``debug``) too:
    Hydra silently composes the defaults for a misspelled optional one."""
    from labbook.errors import UserError

    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        group = CONF_DIR / key
        if not sep or "." in key or key == "hydra" or not group.is_dir() or "(" in value or not value:
            continue
        options = sorted(p.stem for p in group.glob("*.yaml"))
        for option in value.split(","):
            if option not in options and option != "null":
                raise UserError(f"{key}={option!r} is not an option of the {key} group: expected one of "
                                + ", ".join(options))


def worker_main(config_path: Path) -> int:
    """A DDP worker rank started by Lightning: same config as rank 0, no Hydra, no store."""
    import yaml
    from omegaconf import OmegaConf

    from labbook.train import run
    from labbook.workers import die_with_parent

    die_with_parent()
    quiet_libraries()
    cfg = OmegaConf.create(yaml.safe_load(config_path.read_text()))
    try:
        run(cfg)
    except Exception as exc:  # noqa: BLE001 - rank 0 reports the job; this line says what this rank met
        return fail(exc, bool(os.environ.get(ENV_USER_FULL_ERROR)), prefix=f"rank {os.environ.get('LOCAL_RANK')}: ")
    return 0
