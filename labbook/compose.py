"""Composing ``conf/train.yaml`` outside a run, as ``labbook train`` would: for ``train --help`` and for tab
completion, which need the config (or Hydra's own config groups) but no job, no output folder, no store.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence


@contextlib.contextmanager
def hydra_for_train() -> Iterator[Any]:
    """Hydra set up on ``conf/`` with labbook's schemas registered; yields its ``Hydra`` object (its
    ``compose_config`` and ``config_loader``). Leaves no global Hydra behind."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from labbook import schemas
    from labbook.console import CONF_DIR

    schemas.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        yield hydra


def compose_train(hydra: Any, overrides: Sequence[str]) -> Any:
    """``conf/train.yaml`` composed with ``overrides``, the ``hydra`` node included; overrides are judged as on
    the command line (``from_shell``: the same messages as a run's)."""
    from hydra.types import RunMode

    return hydra.compose_config("train", overrides=list(overrides), run_mode=RunMode.RUN, from_shell=True)
