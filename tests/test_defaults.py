"""Each hyper-parameter's default is stated once, in its constructor: a model's or datamodule's config keys
are the constructor's arguments (labbook/config/signature.py reads them from the source), the YAML options
in conf/model and conf/datamodule restate no default (they name the class and add only what cannot live
there: interpolations such as ``seed: ${seed}``, the optimizer as a ``_partial_`` config, which must equal
the module's own ``default_optimizer``), and a ``Literal``'s choices are the constructor's own check."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class, instantiate

from labbook.config.signature import MISSING, NO_DEFAULT, arguments

CONF = Path(__file__).resolve().parents[1] / "conf"
OPTIONS = [(p.parent.name, p.stem) for group in ("model", "datamodule") for p in sorted((CONF / group).glob("*.yaml"))]
IDS = [f"{g}/{n}" for g, n in OPTIONS]


def target(group: str, name: str) -> str:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())["_target_"]


def parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's parameters, and where it hands ``**kwargs`` on, its base classes' in turn."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return found
    return found


@pytest.mark.parametrize("group, name", OPTIONS, ids=IDS)
def test_the_signature_read_from_the_source_is_the_constructors(group: str, name: str) -> None:
    """What the config offers (read without importing) is what Python calls: every argument, every plain
    default, required exactly where the constructor has no default."""
    cls = get_class(target(group, name))
    read = arguments(target(group, name))
    real = parameters(cls)
    assert set(read) == set(real), f"{cls.__name__}: read {sorted(read)}, the constructor takes {sorted(real)}"
    for key, param in real.items():
        if param.default is param.empty:
            assert read[key].default == MISSING, f"{group}.{key}: required in {cls.__name__}, read {read[key]}"
        elif read[key].default is not NO_DEFAULT:
            assert read[key].default == param.default, f"{group}.{key}: {param.default!r}, read {read[key].default!r}"
        else:  # left to the constructor: not a plain value
            assert not isinstance(param.default, (int, float, str, bool, type(None))), f"{group}.{key}"


@pytest.mark.parametrize("group, name", OPTIONS, ids=IDS)
def test_yaml_options_restate_no_default(group: str, name: str) -> None:
    text = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
    assert "defaults" not in text, f"conf/{group}/{name}.yaml: its schema is its constructor's, not named"
    read = arguments(text["_target_"])
    restated = {k: v for k, v in text.items() if k not in ("_target_", "optimizer")
                and not (isinstance(v, str) and v.startswith("${"))}
    assert not restated, f"conf/{group}/{name}.yaml restates {restated}: a default lives in its constructor"
    assert set(text) - {"_target_"} <= set(read), f"conf/{group}/{name}.yaml sets what the constructor does not take"
    if "optimizer" in text:  # the config's optimizer is the one the module falls back to
        cls = get_class(text["_target_"])
        configured = instantiate(text["optimizer"])
        assert (configured.func, configured.keywords) == (cls.default_optimizer.func, cls.default_optimizer.keywords)


@pytest.mark.parametrize("path", ["trainer/default", "logger/mlflow", "callbacks/default", "paths/default", "train"])
def test_the_other_schema_backed_yaml_files_restate_nothing(path: str) -> None:
    text = yaml.safe_load((CONF / f"{path}.yaml").read_text())
    assert set(text) == {"defaults"}, f"conf/{path}.yaml restates {set(text) - {'defaults'}}: its schema states them"


@pytest.mark.parametrize("key, accepted", [
    ("covariance_type", "_COVARIANCE_TYPES"), ("init", "_INITS"), ("compute_dtype", "_DTYPES"),
])
def test_a_literal_offers_exactly_what_the_constructor_accepts(key: str, accepted: str) -> None:
    """String choices are ``Literal`` hints (labbook refuses any other value before a run is opened); the
    hint's values and the constructor's own check are the same set, in the same order."""
    from labbook.lightning_modules import gmm

    read = arguments("labbook.lightning_modules.gmm.GaussianMixtureEM")[key].choices
    assert read == tuple(getattr(gmm, accepted))
    hint = typing.get_type_hints(gmm.GaussianMixtureEM.__init__, include_extras=True)[key]
    assert typing.get_args(hint) == read


def test_a_choice_is_checked_before_anything_is_built() -> None:
    """An out-of-range value in a constructor's ``Annotated`` bound is one line naming the key, from the
    signature alone."""
    from omegaconf import OmegaConf

    from labbook.config.signature import complete
    from labbook.errors import ConfigValueError

    cfg = OmegaConf.create({"model": {"_target_": "labbook.lightning_modules.gmm.GaussianMixtureEM", "n_init": 0}})
    with pytest.raises(ConfigValueError, match=r"^model.n_init=0 is not allowed: expected an integer ≥ 1$"):
        complete(cfg)
    cfg.model.n_init = 3
    complete(cfg)
    assert cfg.model.n_components == 4 and OmegaConf.is_missing(cfg.model, "n_features")


def test_keyword_arguments_handed_to_a_base_class_are_its_keys() -> None:
    """``SineDataModule(length, ..., **kwargs)`` hands the window and split on to its base class: those are keys
    too, with the base's defaults and bounds, written there once."""
    read = arguments("labbook.datamodules.series.SineDataModule")
    assert list(read)[:4] == ["length", "period", "amplitude", "noise_std"] and "**" not in read
    assert read["window"].default == 20 and read["window"].bounds == (">= 1",)
    assert read["val_fraction"].bounds == ("> 0", "< 1")
