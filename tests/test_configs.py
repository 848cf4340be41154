"""Every option of every config group composes and passes the schemas' checks."""

from __future__ import annotations

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from labbook.config import schemas
from labbook.config.compose import search_project_configs
from labbook.config.groups import CONF_DIR
from labbook.config.signature import complete
from labbook.errors import ConfigValueError

GROUPS = ["datamodule", "model", "trainer", "logger", "callbacks", "paths", "experiment", "debug"]
NEEDS = {("datamodule", "tabular"): ["datamodule.path=data.csv"]}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    """As labbook composes: its search path (a model's and datamodule's keys from their constructors), then
    every argument completed with its default."""
    schemas.register()
    search_project_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    complete(cfg)
    return cfg


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
    ("model.n_init=0", "model.n_init"),
    ("model.init_iter=-1", "model.init_iter"),
    ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("trainer.precision=8", "trainer.precision"),
    ("datamodule.val_fraction=1.5", "datamodule.val_fraction"),
])
def test_range_checks_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigValueError) as err:
        schemas.validate(_compose([override]))
    assert err.value.key == key and key in str(err.value)


def test_the_gmm_keys_come_from_its_signature() -> None:
    """What `labbook train model=gmm --cfg job` shows: the start's init_iter with the constructor's default, and
    n_train, which the datamodule's dims give (None until then)."""
    model = _compose(["model=gmm"]).model
    assert (model.init, model.n_init, model.init_iter) == ("kmeans++", 48, 40)
    assert "n_train" in model and model.n_train is None


def test_a_choice_outside_its_literal_fails_when_composing() -> None:
    from labbook.errors import one_line

    with pytest.raises(ConfigValueError) as err:
        _compose(["model=gmm", "model.covariance_type=banana"])
    assert one_line(err.value) == ("model.covariance_type='banana' is not allowed: expected one of 'full', 'diag', "
                                   "'spherical', 'tied'")


def test_ddp_cpu_preset_is_two_gloo_processes() -> None:
    cfg = _compose(["trainer=ddp_cpu"])
    assert cfg.trainer.devices == 2 and cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.strategy.process_group_backend == "gloo"


def test_trainer_presets_inherit_the_default() -> None:
    default = OmegaConf.to_container(_compose(["trainer=default"]).trainer)
    for preset in options("trainer"):
        own = yaml.safe_load((CONF_DIR / "trainer" / f"{preset}.yaml").read_text())
        assert "default" in own["defaults"] or preset == "default", preset
        t = OmegaConf.to_container(_compose([f"trainer={preset}"]).trainer)
        # Every key the preset does not set itself is trainer/default.yaml's value.
        inherited = {k: v for k, v in t.items() if k not in own}
        assert inherited == {k: v for k, v in default.items() if k not in own}, preset
        # Hardware overrides apply on top of any preset and leave its own settings alone.
        o = _compose([f"trainer={preset}", "trainer.devices=3", "trainer.num_nodes=2", "trainer.precision=bf16-mixed"])
        assert (o.trainer.devices, o.trainer.num_nodes, o.trainer.precision) == (3, 2, "bf16-mixed"), preset
        assert o.trainer.strategy == t["strategy"] and o.trainer.accelerator == t["accelerator"], preset


GPU_PRESETS = {"gpu": ("gpu", 1, "auto", "32-true"), "ddp": ("gpu", 2, "ddp", "32-true"),
               "fsdp": ("gpu", "auto", "FSDPStrategy", "bf16-mixed")}


def _strategy_name(strategy: object) -> str:
    return strategy if isinstance(strategy, str) else type(strategy).__name__


@pytest.mark.parametrize("preset", sorted(GPU_PRESETS))
def test_gpu_presets_build_their_strategy(preset: str) -> None:
    """Without a GPU: each multi-GPU preset's settings and its strategy object (instantiated, as labbook
    does); the Trainer itself is built with the accelerator switched to CPU where Lightning allows it."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    cfg = _compose([f"trainer={preset}"])
    schemas.validate(cfg)
    accelerator, devices, strategy, precision = GPU_PRESETS[preset]
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == (accelerator, devices, precision)
    built = instantiate(cfg.trainer.strategy) if OmegaConf.is_config(cfg.trainer.strategy) else cfg.trainer.strategy
    assert _strategy_name(built) == strategy
    if preset == "fsdp":
        assert built.sharding_strategy.name == "FULL_SHARD"
        return  # Lightning refuses FSDP on a CPU accelerator; the GPU test below builds it
    trainer = instantiate(cfg.trainer, accelerator="cpu", devices=2 if preset == "ddp" else 1, logger=False)
    assert isinstance(trainer, pl.Trainer) and trainer.num_devices == (2 if preset == "ddp" else 1)
    if preset == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", sorted(GPU_PRESETS))
def test_gpu_presets_instantiate_on_a_gpu(preset: str) -> None:
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    if preset == "ddp" and torch.cuda.device_count() < 2:
        pytest.skip("trainer=ddp needs 2 GPUs")
    cfg = _compose([f"trainer={preset}"])
    trainer = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer, pl.Trainer) and type(trainer.accelerator).__name__ == "CUDAAccelerator"
    assert _strategy_name(trainer.strategy) in ("SingleDeviceStrategy", "DDPStrategy", "FSDPStrategy")
