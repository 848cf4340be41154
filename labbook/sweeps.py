"""What labbook does around a Hydra multirun, whichever sweeper or launcher runs its jobs.

Registered in ``conf/hydra/default.yaml`` as a Hydra callback, so it runs for ``-m`` on the command line
and for a preset that sets ``hydra.mode: MULTIRUN`` alike, once, in the launching process, before any job.
"""

from __future__ import annotations

import os
from typing import Any

from hydra.experimental.callback import Callback


class SweepStore(Callback):
    """Resolve the sweep's tracking store and create it once before jobs start (they may run in parallel:
    joblib, SLURM); jobs inherit the resolved URI through ``$MLFLOW_TRACKING_URI``."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from labbook.store import ENV_URI, prepare_store, resolve_tracking_uri

        uri = resolve_tracking_uri(config.logger.get("tracking_uri"))
        prepare_store(uri)
        os.environ[ENV_URI] = uri
