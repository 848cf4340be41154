"""PROVISIONAL (to be replaced by the dm-state branch): rebuild a model and datamodule from a config and checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def rebuild_from(config: Mapping[str, Any], checkpoint: Path) -> tuple[Any, Any]:
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from labbook.config.contract import current_targets

    cfg = OmegaConf.create(current_targets(dict(config)))
    model = get_class(cfg.model._target_).load_from_checkpoint(str(checkpoint), map_location="cpu")
    model.eval()
    return model, instantiate(cfg.datamodule)


def answer(model: Any, datamodule: Any, lines: list[str]) -> list[str]:
    import torch

    x = datamodule.parse_inputs(list(lines))
    with torch.no_grad():
        y = model.predict(x)
    return list(datamodule.format_outputs(y))


def input_columns(datamodule: Any) -> list[str] | None:
    return getattr(datamodule, "input_columns", None)


def example_inputs(datamodule: Any, n: int = 3) -> list[str] | None:
    f = getattr(datamodule, "example_inputs", None)
    return f(n) if callable(f) else None
