"""A run rebuilt from what it keeps, with no store and no MLflow: its model and datamodule from its resolved
config (``config/config.yaml``) and one of its checkpoints, and inputs answered with them.

:func:`rebuild` is what ``labbook predict``, :func:`labbook.load` (through ``labbook.train.stored``) and a
logged model's pyfunc call; :func:`answer` is the one way text inputs become answers. The checkpoint holds
everything the model learnt of the data: its weights and hyper-parameters (``dims`` included), and the
datamodule's state (``LightningDataModule.state_dict()``, which Lightning stores under the datamodule class's
``__qualname__``), so that a model answers where its training data are not.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from labbook.config.contract import current_targets, data_traits, model_traits
from labbook.errors import UserError


@dataclasses.dataclass
class Rebuilt:
    config: Any  # the resolved config, an OmegaConf DictConfig, every _target_ where its class lives now
    model: Any  # in eval mode, on the CPU
    datamodule: Any  # built from the config, not set up; its state restored from the checkpoint when it has one


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A Lightning checkpoint file, read as Lightning reads one to restore it (on the CPU; ``weights_only=False``:
    a run's own checkpoint is trusted, and a model's hyper-parameters may hold any object)."""
    import torch
    from pytorch_lightning.utilities.migration import migrate_checkpoint, pl_legacy_patch

    with pl_legacy_patch():
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return migrate_checkpoint(checkpoint)[0]


def model_from_checkpoint(cls: type, checkpoint: dict[str, Any]) -> Any:
    """``cls.load_from_checkpoint`` of an already loaded checkpoint: built from its hyper-parameters, its
    ``on_load_checkpoint`` called, its weights loaded, in eval mode. Lightning's own private step of
    ``load_from_checkpoint`` after reading the file (``tests/test_lightning_api.py`` fails if it changes)."""
    from pytorch_lightning.core.saving import _load_state

    checkpoint.setdefault(cls.CHECKPOINT_HYPER_PARAMS_KEY, {})
    model = _load_state(cls, checkpoint)
    model.eval()
    return model


def restore_datamodule(datamodule: Any, checkpoint: Mapping[str, Any]) -> bool:
    """Hand ``datamodule`` its state from ``checkpoint`` (the entry under its class's ``__qualname__``, as
    Lightning's trainer stores and restores it); False when the checkpoint holds none (a datamodule without
    state, or a checkpoint written before datamodules kept any: ``parse_inputs`` then reads the data)."""
    state = checkpoint.get(type(datamodule).__qualname__)
    if not state or not callable(getattr(datamodule, "load_state_dict", None)):
        return False
    datamodule.load_state_dict(state)
    return True


def rebuild(config: Mapping[str, Any], checkpoint_path: str | os.PathLike[str]) -> Rebuilt:
    """The run whose resolved config is ``config`` (a mapping as ``config/config.yaml`` holds it, or a
    DictConfig) rebuilt from its local checkpoint file: the model (class from ``config.model._target_``) from the
    checkpoint, the datamodule from ``config.datamodule`` with its state from the same checkpoint, read once."""
    from hydra.utils import get_class, instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    cfg = OmegaConf.create(current_targets(dict(config)))
    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(get_class(cfg.model._target_), checkpoint)
    datamodule = instantiate(cfg.datamodule)
    restore_datamodule(datamodule, checkpoint)
    return Rebuilt(cfg, model, datamodule)


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def cannot_answer(model: Any, datamodule: Any) -> str | None:
    """What the model or datamodule lacks of what :func:`answer` calls, in a few words; None when nothing."""
    lacks = [f"{_class_name(model)} has no predict(x)" if not model_traits(model).predicts else "",
             *(f"{_class_name(datamodule)} has no {m}" for m, ok in (
                 ("parse_inputs(lines)", data_traits(datamodule).parses_inputs),
                 ("format_outputs(y)", data_traits(datamodule).formats_outputs)) if not ok)]
    return "; ".join(x for x in lacks if x) or None


def answer(model: Any, datamodule: Any, lines: list[str]) -> list[str]:
    """One answer per input line, in order: ``datamodule.parse_inputs(lines)`` -> ``model.predict(x)`` (without
    gradients) -> ``datamodule.format_outputs(y)``. A :class:`UserError` of one line when the model or
    datamodule lacks one of those, when an input is refused (``input: …``, the datamodule's ``ValueError``), or
    when the answers are not one per input."""
    lacks = cannot_answer(model, datamodule)
    if lacks:
        raise UserError(f"{lacks}, which labbook predict calls (docs/contract.md)")
    import torch

    try:
        x = datamodule.parse_inputs(list(lines))
    except ValueError as exc:
        raise UserError(f"input: {exc}") from exc
    with torch.no_grad():
        y = model.predict(x)
    answers = list(datamodule.format_outputs(y))
    if len(answers) != len(lines):  # printed, they would pair answers with the wrong inputs
        raise UserError(f"{_class_name(datamodule)}.format_outputs gave {len(answers)} answers for {len(lines)} "
                        "inputs; predict prints exactly one answer per input")
    return answers
