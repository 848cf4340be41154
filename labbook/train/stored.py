"""A stored run rebuilt in this process: its model from its best checkpoint (else its last) and its datamodule
from its stored config — what ``labbook predict`` answers with, and what :func:`labbook.load` hands a notebook."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class StoredRun:
    run_id: str
    config: Any  # the run's resolved config (an OmegaConf DictConfig)
    model: Any  # in eval mode, on the CPU
    datamodule: Any  # built from the config, not set up


def rebuild(reader: Any, run: Any) -> StoredRun:
    """``run`` (a :class:`labbook.store.read.RunRecord` of ``reader``'s store) rebuilt: a :class:`UserError`
    when it has no checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        from labbook.config.contract import current_targets

        config = current_targets(reader.config(run))
        from labbook.store.models import checkpoint_of

        ckpt = checkpoint_of(reader, run, Path(tmp), why=(
            ": was it trained with logger.log_checkpoints=false, or did it fail before one was saved?"))
        # Only now torch (~1.5 s): a mistyped run id or store is answered without it.
        from hydra.utils import get_class, instantiate
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(config)
        model = get_class(cfg.model._target_).load_from_checkpoint(str(ckpt), map_location="cpu")
    model.eval()
    return StoredRun(run.run_id, cfg, model, instantiate(cfg.datamodule))
