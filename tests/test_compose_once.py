"""labbook train composes its config once where Hydra would compose the same config twice (once to read
``hydra.mode``, once for the job), and composes again wherever the two could differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from labbook.config import schemas
from labbook.config.compose import composed_once, search_project_configs
from labbook.config.groups import CONF_DIR
from labbook.config.signature import complete


def _as_hydra_runs_it(overrides: list[str], conf: Path = CONF_DIR, name: str = "train") -> tuple[Any, int]:
    """What hydra._internal.utils._run_hydra does for a command without -m: get_mode, then the job's
    composition (the overrides extended by hydra.mode=RUN where the config sets no mode). Returns the job's
    config as a container and how many compositions it took."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    schemas.register()
    search_project_configs()  # labbook's search path: a model's and datamodule's keys are their constructors'
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(name, create_config_search_path(str(conf)))
    calls: list[Any] = []
    _count(calls)
    try:
        overrides = list(overrides)
        mode = hydra.get_mode(name, overrides)
        if mode is None:
            overrides.append("hydra.mode=RUN")
        if mode == RunMode.MULTIRUN:
            return None, len(calls)
        cfg = hydra.compose_config(name, overrides, run_mode=RunMode.RUN)
        complete(cfg)  # as labbook completes every composition (idempotent)
        container = OmegaConf.to_container(cfg)
        container["hydra"]["runtime"].pop("cwd")
        return container, len(calls)
    finally:
        _uncount()
        GlobalHydra.instance().clear()


_saved: list[Any] = []


def _count(calls: list) -> None:
    """Count the real compositions: wrap the loader's implementation, beneath labbook's reuse."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    impl = ConfigLoaderImpl._load_configuration_impl
    _saved.append(impl)

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return impl(self, *args, **kwargs)

    ConfigLoaderImpl._load_configuration_impl = counted  # type: ignore[method-assign]


def _uncount() -> None:
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._load_configuration_impl = _saved.pop()  # type: ignore[method-assign]


@pytest.mark.parametrize("overrides", [[], ["experiment=polynomial"], ["experiment=gmm_iris", "seed=3"],
                                       ["model=gmm", "model.n_components=3", "hydra.verbose=true"],
                                       ["hydra.mode=RUN", "experiment=lstm_sunspots"]])
def test_the_job_config_is_hydras_in_one_composition(overrides: list[str]) -> None:
    theirs, their_count = _as_hydra_runs_it(overrides)
    with composed_once():
        mine, my_count = _as_hydra_runs_it(overrides)
    assert (their_count, my_count) == (2, 1)
    assert mine == theirs


def test_what_could_differ_is_composed_again(tmp_path: Path) -> None:
    from hydra.errors import ConfigCompositionException

    # A sweep value without -m: Hydra's own refusal, with its advice, from the job's composition.
    with composed_once(), pytest.raises(ConfigCompositionException, match="(?s)Ambiguous value.*--multirun"):
        _as_hydra_runs_it(["model=gmm,lstm"])
    # A config group left missing: a multirun's first composition skips it, a single run must refuse it.
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.yaml").write_text("y: 2\n")
    (tmp_path / "cfg.yaml").write_text("defaults:\n  - g: ???\n  - _self_\nx: 1\n")
    with composed_once(), pytest.raises(ConfigCompositionException, match="You must specify 'g'"):
        _as_hydra_runs_it([], conf=tmp_path, name="cfg")
    with composed_once():
        cfg, count = _as_hydra_runs_it(["g=a"], conf=tmp_path, name="cfg")
    assert count == 1 and cfg["g"] == {"y": 2}
    # A config that sets hydra.mode: MULTIRUN is a sweep; its composition is not handed to a single run.
    (tmp_path / "sweep.yaml").write_text("defaults:\n  - _self_\nhydra:\n  mode: MULTIRUN\nx: 1\n")
    with composed_once():
        assert _as_hydra_runs_it([], conf=tmp_path, name="sweep") == (None, 1)
