"""A stored run rebuilt in this process: its model from its best checkpoint (else its last) and its datamodule
from its stored config, its state from the same checkpoint — what ``labbook predict`` answers with, and what
:func:`labbook.load` hands a notebook. The rebuilding itself is ``labbook.config.rebuild``'s (no store there)."""

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
    datamodule: Any  # built from the config, not set up; its state (a standardisation, a scaler) the checkpoint's


def rebuild(reader: Any, run: Any) -> StoredRun:
    """``run`` (a :class:`labbook.store.read.RunRecord` of ``reader``'s store) rebuilt: a :class:`UserError`
    when it has no checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        config = reader.config(run)
        from labbook.store.models import checkpoint_of

        ckpt = checkpoint_of(reader, run, Path(tmp), why=(
            ": was it trained with logger.log_checkpoints=false and logger.log_model=none, or did it fail before "
            "one was saved?"))
        # Only now torch (~1.5 s): a mistyped run id or store is answered without it.
        from labbook.config.rebuild import rebuild as from_checkpoint

        rebuilt = from_checkpoint(config, ckpt)
    return StoredRun(run.run_id, rebuilt.config, rebuilt.model, rebuilt.datamodule)
