"""A job's side of a sweep: what it learns of its sweep from the environment, its name and tags as a child
run, and the small record it leaves beside its outputs (``.labbook_job.yaml``) so that a job that failed
before it could open a run still counts in the parent's tally.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from labbook import names
from labbook.config.compose import task_overrides
from labbook.sweep.space import config_hash, short_names

ENV_PARENT = "LABBOOK_SWEEP_PARENT_RUN"
ENV_SWEPT = "LABBOOK_SWEEP_SWEPT"  # JSON list of the swept config keys
ENV_EXPERIMENT = "LABBOOK_SWEEP_EXPERIMENT"
JOB_RECORD = ".labbook_job.yaml"
STOPPING = ".labbook_stopping"  # in the sweep's directory once it was interrupted: jobs not yet started skip


def stopping(hydra_config: Any) -> bool:
    """Whether the sweep this job belongs to was interrupted before the job started."""
    return (Path(str(hydra_config.sweep.dir)) / STOPPING).exists()


@dataclasses.dataclass
class SweepJob:
    """What a job of a sweep knows about its sweep (from the environment) and about itself."""

    parent_run_id: str
    experiment: str
    number: int
    overrides: list[str]
    name: str
    config_hash: str
    record_path: Path

    def tags(self) -> dict[str, str]:
        return {names.SWEEP_ROLE: "child", names.SWEEP_JOB: str(self.number),
                names.SWEEP_OVERRIDES: " ".join(self.overrides), names.SWEEP_CONFIG_HASH: self.config_hash}

    def finished_run(self, uri: str) -> str | None:
        """A FINISHED child of the parent that trained this very configuration (for ``sweep.resume``)."""
        from labbook.store.read import search_runs

        found = search_runs(uri, None, parent_run_id=self.parent_run_id, status="FINISHED",
                            tags={names.SWEEP_CONFIG_HASH: self.config_hash})
        return found[0].run_id if found else None

    def record(self, status: str, run_id: str | None, error: str | None = None, reused: bool = False) -> None:
        import yaml

        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        self.record_path.write_text(yaml.safe_dump({
            "job": self.number, "name": self.name, "overrides": self.overrides, "status": status, "run_id": run_id,
            "error": error, "reused": reused, "config_hash": self.config_hash, "at": time.time()}, sort_keys=False))


def _shown(value: str) -> str:
    """A value as a run's name shows it: a search's sampled 0.004430375245218269 as 0.00443."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.3g}" if "." in value and len(value) > 8 else value


def job_of_sweep(hydra_config: Any, cfg: Any) -> SweepJob | None:
    """This job's :class:`SweepJob` when it runs inside a labbook sweep; None for a single run."""
    parent = os.environ.get(ENV_PARENT)
    if not parent:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except Exception:  # noqa: BLE001 - a broken interpolation: the job fails on it right after, recorded
        resolved = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)

    swept = json.loads(os.environ.get(ENV_SWEPT, "[]"))
    overrides = task_overrides(hydra_config)
    values = {o.key_or_group: o.get_value_element_as_str() for o in OverridesParser.create().parse_overrides(overrides)}
    short = short_names([k for k in swept if k in values])
    name = ",".join(f"{short[k]}={_shown(values[k])}" for k in short) or f"job-{hydra_config.job.num}"
    return SweepJob(parent, os.environ.get(ENV_EXPERIMENT, ""), int(hydra_config.job.num), overrides, name,
                    config_hash(resolved), Path(str(hydra_config.runtime.output_dir)) / JOB_RECORD)
