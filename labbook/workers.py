"""Multi-process training: how worker ranks learn the run and the config without re-running Hydra.

Lightning's DDP launcher starts ranks 1..N-1 by re-running the command line. Under Hydra that would
re-compose the config — and, in a ``-m`` sweep, re-run the whole sweep in every child. Instead, rank 0
writes its resolved config to a file and names it (and the run id) in the environment the children
inherit; :func:`worker_config` lets the CLI recognise such a child and hand it that config directly.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

ENV_CONFIG = "LABBOOK_WORKER_CONFIG"
ENV_RUN_ID = "LABBOOK_RUN_ID"
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    """True unless the environment says this process is a non-zero rank of a distributed job."""
    return all(int(os.environ.get(var, "0") or 0) == 0 for var in _RANK_VARS)


def worker_config() -> Path | None:
    """The config file handed down by rank 0, when this process is one of its DDP workers."""
    path = os.environ.get(ENV_CONFIG)
    return Path(path) if path and not is_rank_zero() else None


@contextlib.contextmanager
def hand_off(resolved: Mapping[str, Any], output_dir: Path, run_id: str | None) -> Iterator[None]:
    """While fitting, let any worker process Lightning starts find the config and the run id.

    Afterwards restore the environment (Lightning leaves LOCAL_RANK/WORLD_SIZE behind, which would make
    the next job of a sweep believe it was launched externally) and tear down the process group so the
    next job can create its own.
    """
    import yaml

    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / ".labbook_worker_config.yaml"
    path.write_text(yaml.safe_dump(dict(resolved), sort_keys=False))
    saved = dict(os.environ)
    os.environ[ENV_CONFIG] = str(path)
    if run_id:
        os.environ[ENV_RUN_ID] = run_id
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
