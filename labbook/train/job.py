"""A job built from its config, before any run exists: validate, then datamodule → model → callbacks.

The shape of lightning-hydra-template's ``train.py``: everything comes from the config through
``hydra.utils.instantiate``; what the model must know about the data travels explicitly from the
datamodule's ``dims`` to the model's constructor. Everything that can fail on a bad config or a bad file
happens here, before a run is opened: such a mistake never leaves a run behind.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Mapping

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from labbook.config.contract import constructor_arguments, data_dims
from labbook.config.experiment import experiment_name
from labbook.config.schemas import validate
from labbook.config.signature import GROUPS, MISSING, MISSING_ARGUMENT, arguments, constructor_error
from labbook.errors import ConfigValueError, UserError, required
from labbook.timing import mark
from labbook.train.callbacks import PruneTrial, build_callbacks
from labbook.train.ranks import is_rank_zero


def check_hardware(trainer_cfg: Mapping[str, Any]) -> None:
    """Asking for a device this machine lacks is a config error, not a crash deep inside Lightning."""
    accelerator = trainer_cfg.get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigValueError("trainer.accelerator", accelerator,
                               "no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                               "use trainer=cpu, or trainer=ddp_cpu for 2 CPU processes")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigValueError("trainer.accelerator", accelerator, "MPS is not available on this machine")
    devices = trainer_cfg.get("devices")
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigValueError("trainer.devices", devices, f"this machine has {torch.cuda.device_count()} GPU(s)")


def build_data_and_model(cfg: DictConfig) -> tuple[Any, Any]:
    """Instantiate and set up the datamodule, then the model with the datamodule's ``dims`` (the arguments
    the data decides: a config value for one is refused when it differs, a required argument neither gives
    is one line)."""
    from hydra.utils import get_class

    try:
        datamodule = instantiate(cfg.datamodule)
        datamodule.prepare_data()
        datamodule.setup("fit")
    except Exception as exc:  # noqa: BLE001 - bad user data gets one line, not a traceback
        raise UserError(constructor_error("datamodule", cfg.datamodule._target_, _root_message(exc))) from exc
    target = str(cfg.model._target_)
    dims, unused = constructor_arguments(get_class(target), data_dims(datamodule))
    if is_rank_zero():
        for line in unused:  # reported, not silently dropped: a misspelt key would leave a default in place
            print(f"labbook: warning: {line}", file=sys.stderr, flush=True)
    declared = arguments(target)
    for key, value in dims.items():
        given = cfg.model.get(key, MISSING)
        if given not in (MISSING, value) and given != declared.get(key, MISSING_ARGUMENT).default:
            raise UserError(f"model.{key}={given!r} is not allowed: the data decides it (the datamodule's dims say "
                            f"{value!r}); leave it out")
    lacking = [k for k, a in declared.items() if a.default == MISSING and k not in cfg.model and k not in dims]
    if lacking and "**" not in declared:
        raise UserError(required(f"model.{lacking[0]}") + " (or have the datamodule's dims give it)")
    try:
        model = instantiate(cfg.model, **dims)
    except Exception as exc:  # noqa: BLE001
        raise UserError(constructor_error("model", target, _root_message(exc))) from exc
    return datamodule, model


@dataclasses.dataclass
class Job:
    """One job built from its config, before any run exists: what :func:`run` trains."""

    cfg: DictConfig  # resolved: no interpolation can change under us
    resolved: dict[str, Any]
    datamodule: Any
    model: Any
    callbacks: list[Any]
    datamodule_choice: str | None = None  # the datamodule preset (conf/datamodule/NAME.yaml), when known
    build_s: float = 0.0  # seconds to build the datamodule (reading or generating its data) and the model


def prepare(cfg: DictConfig, choices: Mapping[str, Any] | None = None) -> Job:
    """Validate ``cfg`` and build the datamodule, the model and the callbacks.

    Everything that can fail on a bad config or a bad file happens here, before a run is opened: such a
    mistake never leaves a run behind.
    """
    validate(cfg)
    check_hardware(cfg.trainer)
    if is_rank_zero() and cfg.logger.get("experiment_name") is None:
        cfg.logger.experiment_name = experiment_name(cfg, choices)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for group in GROUPS:  # an argument still missing is the data's to give (a model's dims): never recorded as ???
        if isinstance(resolved.get(group), dict):
            resolved[group] = {k: v for k, v in resolved[group].items() if v != MISSING}
    cfg = OmegaConf.create(resolved)

    import pytorch_lightning as pl

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    started = time.perf_counter()
    datamodule, model = build_data_and_model(cfg)
    build_s = time.perf_counter() - started
    callbacks = build_callbacks(cfg, model)
    if cfg.sweep.get("trial") is not None:  # a search's trial: rank 0 reports to it, every rank may be pruned
        from labbook.sweep.search import trial_report

        callbacks.append(PruneTrial(trial_report(cfg, model) if is_rank_zero() else None))
    mark("built")
    return Job(cfg, resolved, datamodule, model, callbacks, (choices or {}).get("datamodule"), build_s)


def _root_message(exc: BaseException) -> str:
    """The innermost message: Hydra wraps constructor errors in InstantiationException."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
