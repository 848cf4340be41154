"""Every option of every config group composes and passes the schemas' checks."""

from __future__ import annotations


import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from labbook import schemas
from labbook.cli import CONF_DIR
from labbook.errors import ConfigValueError

GROUPS = ["datamodule", "model", "trainer", "logger", "callbacks", "paths", "experiment", "debug"]
NEEDS = {("datamodule", "tabular"): ["datamodule.path=data.csv"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    schemas.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    cfg = _compose([f"{group}={option}", *NEEDS.get((group, option), [])])
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} in paths resolves as in a real run
    for key in cfg:
        if key not in ("hydra", "paths") and OmegaConf.is_config(cfg[key]):  # paths need a job runtime dir
            OmegaConf.to_container(cfg[key], resolve=True)
    schemas.validate(cfg)
    assert cfg.model._target_ and cfg.datamodule._target_ and cfg.trainer._target_


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), group


@pytest.mark.parametrize("override,key", [
    ("model.n_components=0", "model.n_components"),
    ("model.covariance_type=banana", "model.covariance_type"),
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("trainer.precision=8", "trainer.precision"),
    ("datamodule.val_fraction=1.5", "datamodule.val_fraction"),
])
def test_range_checks_name_the_key(override: str, key: str) -> None:
    cfg = _compose([override])
    with pytest.raises(ConfigValueError) as err:
        schemas.validate(cfg)
    assert err.value.key == key and key in str(err.value)


def test_ddp_cpu_preset_is_two_gloo_processes() -> None:
    cfg = _compose(["trainer=ddp_cpu"])
    assert cfg.trainer.devices == 2 and cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.strategy.process_group_backend == "gloo"


def test_trainer_presets_inherit_the_default() -> None:
    default = _compose([]).trainer
    for preset in options("trainer"):
        t = _compose([f"trainer={preset}"]).trainer
        # A key the presets never touch comes from trainer/default.yaml.
        assert t.log_every_n_steps == default.log_every_n_steps, preset
        assert _compose([f"trainer={preset}", "trainer.devices=3", "trainer.num_nodes=2",
                         "trainer.precision=bf16-mixed"]).trainer.num_nodes == 2
