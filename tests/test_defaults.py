"""Each hyper-parameter's default is stated once: a model's or datamodule's constructor and its typed schema
(labbook/schemas.py) agree, every constructor argument a user may set has a schema field, and the YAML
options in conf/model and conf/datamodule restate no default (they name the schema and add only what cannot
live there: interpolations such as ``seed: ${seed}``, a required ``path: ???``, the optimizer as a
``_partial_`` config, which must equal the module's own ``default_optimizer``)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.utils import get_class, instantiate

from labbook.config import schemas

CONF = Path(__file__).resolve().parents[1] / "conf"
OPTIONS = [(group, name) for group in ("model", "datamodule") for name in schemas.GROUP_SCHEMAS[group]]
MISSING = object()


@functools.cache
def data_arguments() -> frozenset[str]:
    """What the glue passes from a datamodule's ``dims`` to a model: the data decides these, not the user."""
    small = {"blobs": {"n_samples": 200}, "sine": {"length": 120}, "dates": {"n_samples": 300, "n_test": 50}}
    keys: set[str] = set()
    for name, schema in schemas.GROUP_SCHEMAS["datamodule"].items():
        if name == "tabular":
            continue  # needs a file; its dims are the tabular family's, which blobs and iris give
        datamodule = get_class(schema._target_)(**small.get(name, {}))
        datamodule.prepare_data()
        datamodule.setup("fit")
        keys |= set(datamodule.dims)
    return frozenset(keys)


def schema_defaults(schema: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(schema):
        if f.name == "_target_":
            continue
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return out


def constructor_defaults(cls: type) -> dict[str, Any]:
    return {name: (p.default if p.default is not p.empty else MISSING)
            for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@pytest.mark.parametrize("group, name", OPTIONS, ids=[f"{g}/{n}" for g, n in OPTIONS])
def test_constructor_and_schema_state_the_same_defaults(group: str, name: str) -> None:
    schema = schemas.GROUP_SCHEMAS[group][name]
    cls = get_class(schema._target_)
    in_schema, in_constructor = schema_defaults(schema), constructor_defaults(cls)
    data = data_arguments() if group == "model" else frozenset()

    no_field = sorted(set(in_constructor) - set(in_schema) - data)
    assert not no_field, f"{cls.__name__} takes {no_field}, which {schema.__name__} does not declare"
    unknown = sorted(set(in_schema) - set(in_constructor))
    assert not unknown, f"{schema.__name__} declares {unknown}, which {cls.__name__} does not take"
    for key, default in in_schema.items():
        ctor = in_constructor[key]
        if default == "???":  # required in both
            assert ctor is MISSING, f"{group}.{key}: required in {schema.__name__}, {ctor!r} in {cls.__name__}"
            continue
        assert ctor == default, f"{group}.{key}: {default!r} in {schema.__name__}, {ctor!r} in {cls.__name__}"


@pytest.mark.parametrize("group, name", OPTIONS, ids=[f"{g}/{n}" for g, n in OPTIONS])
def test_yaml_options_restate_no_default(group: str, name: str) -> None:
    text = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
    assert text["defaults"][0] == f"/schema/{group}/{name}@_here_"
    restated = {k: v for k, v in text.items() if k not in ("defaults", "optimizer")
                and not (isinstance(v, str) and (v.startswith("${") or v == "???"))}
    assert not restated, f"conf/{group}/{name}.yaml restates {restated}: a default lives in its schema"
    if "optimizer" in text:  # the config's optimizer is the one the module falls back to
        cls = get_class(schemas.GROUP_SCHEMAS[group][name]._target_)
        configured = instantiate(text["optimizer"])
        assert (configured.func, configured.keywords) == (cls.default_optimizer.func, cls.default_optimizer.keywords)



@pytest.mark.parametrize("path", ["trainer/default", "logger/mlflow", "callbacks/default", "paths/default", "train"])
def test_the_other_schema_backed_yaml_files_restate_nothing(path: str) -> None:
    text = yaml.safe_load((CONF / f"{path}.yaml").read_text())
    assert set(text) == {"defaults"}, f"conf/{path}.yaml restates {set(text) - {'defaults'}}: its schema states them"


@pytest.mark.parametrize("schema, key, accepted", [
    (schemas.GMMConfig, "covariance_type", "labbook.lightning_modules.gmm._COVARIANCE_TYPES"),
    (schemas.GMMConfig, "compute_dtype", "labbook.lightning_modules.gmm._DTYPES"),
])
def test_a_schema_enum_offers_exactly_what_the_constructor_accepts(schema: type, key: str, accepted: str) -> None:
    """String choices are enums in the schemas (Hydra refuses any other value at compose time); the enum
    and the constructor's own list of choices are the same set."""
    import enum
    import importlib

    field = next(f for f in dataclasses.fields(schema) if f.name == key)
    assert isinstance(field.default, enum.Enum), f"{schema.__name__}.{key} is not an enum"
    module, name = accepted.rsplit(".", 1)
    assert {m.value for m in type(field.default)} == set(getattr(importlib.import_module(module), name))
