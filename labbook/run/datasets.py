"""A run's data in MLflow's dataset tracking: what the runs table's Dataset column shows, and what groups runs
trained on the same data.

Derived from the config and the datamodule, never declared twice: the name is the datamodule preset
(``blobs``, ``dates``) or the CSV file's name; the source is the CSV file (a path) or the preset with its
settings; the digest hashes the file's bytes or the resolved datamodule config (the generated data is a
function of it); the profile holds what the datamodule hands the model (``dims``) and the number of examples
per split (for what the loaders know).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from labbook import names
from labbook.config.contract import data_dims
from labbook.redact import redact, redact_tree


def dataset_entity(datamodule_cfg: Mapping[str, Any], choice: str | None, datamodule: Any) -> Any:
    """MLflow's ``Dataset`` entity for the run's training data."""
    from mlflow.entities import Dataset

    path = datamodule_cfg.get("path")
    config = {k: v for k, v in datamodule_cfg.items() if k not in ("num_workers", "batch_size")}
    if path and os.path.isfile(str(path)):
        digest = _file_digest(str(path))
        name, source_type = os.path.basename(str(path)), "local"
        source = {"uri": os.path.abspath(str(path))}
    else:
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
        name, source_type = choice or type(datamodule).__name__, "code"
        source = {"tags": {"labbook.datamodule": choice or "", "target": str(datamodule_cfg.get("_target_", ""))}}
    profile = {"dims": {k: v for k, v in data_dims(datamodule).items()
                        if isinstance(v, (int, float, str, bool))}, "examples": _examples(datamodule)}
    # Redacted before JSON escapes a secret's quotes and non-ASCII letters (a CSV path may hold a token).
    return Dataset(name=redact(name), digest=digest[:8], source_type=source_type,
                   source=json.dumps(redact_tree(source)), profile=json.dumps(redact_tree(profile)))


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _examples(datamodule: Any) -> dict[str, int]:
    """Examples per split the datamodule has set up for fitting (train and val)."""
    counts = {}
    for split in ("train", "val"):
        try:
            loader = getattr(datamodule, f"{split}_dataloader")()
            counts[split] = int(len(loader.dataset))
        except Exception:  # noqa: BLE001 - a loader without a sized dataset: no count, no failure
            continue
    return counts


def log_dataset(tracked: Any, entity: Any) -> None:
    """Record the dataset as the run's input. Parallel jobs on the same data race to insert the same dataset
    row (MLflow's SQL store answers the loser with a unique-key violation): the second try finds it there.
    A dataset record that still cannot be written is a warning, never a failed run."""
    import sys
    import time

    from mlflow.entities import DatasetInput, InputTag

    given = [DatasetInput(dataset=entity, tags=[InputTag(key=names.DATASET_CONTEXT, value="training")])]
    for attempt in range(3):
        try:
            tracked.log_inputs(given)
            return
        except Exception as exc:  # noqa: BLE001
            if attempt == 2:
                print(f"labbook: warning: the run's dataset was not recorded: {str(exc).splitlines()[0][:200]}",
                      file=sys.stderr, flush=True)
            else:
                time.sleep(0.5 * (attempt + 1))
