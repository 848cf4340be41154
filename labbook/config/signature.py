"""A model's or datamodule's config schema is its constructor's signature, as LightningCLI derives its parser:
each argument a key, its type hint the key's type, its default the key's default — written once, in the
constructor. labbook's own models and datamodules and a project's are read alike.

The signature is read from the source, without importing the module (torch and Lightning take seconds):
a bad key, type or value is one line before anything is built. What a type hint may say:

* ``int``, ``float``, ``bool``, ``str``, ``X | None`` / ``Optional[X]``: checked and converted as OmegaConf
  does (``model.tol=abc``: "could not be converted to Float"); anything else is taken as it is;
* ``Literal["full", "diag"]``: the allowed values;
* ``Annotated[int, ">= 1"]``, ``Annotated[float, ">= 0", "< 1"]``: bounds (``>``, ``>=``, ``<``, ``<=``);
* a name given one of these at the top of the module (``CovarianceType = Literal["full", "diag"]``), so the
  constructor's own check can use the same values (``typing.get_args(CovarianceType)``).

``**kwargs`` handed whole to ``super().__init__`` of a base class in the same module adds that class's
arguments (a subclass restates no default of its base's); any other ``**kwargs`` takes any key, unchecked.

An argument without a default is required: a model's may come from its datamodule's ``dims`` (checked when
the model is built); a datamodule's must be in the config. A default that is not a plain value (a call, a
name) is left to the constructor: the key may be set, and is not filled in.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import inspect
import itertools
from pathlib import Path
from typing import Any, Optional

from labbook.errors import ConfigValueError, check_choice, check_range

MISSING = "???"  # OmegaConf's mark of a value still to be given
NO_DEFAULT = object()  # a default that is not a plain value: the constructor's own applies
GROUPS = ("model", "datamodule")  # the groups whose options are constructors' arguments
_BOUNDS = {">=": ("low", True), ">": ("low", False), "<=": ("high", True), "<": ("high", False)}


@dataclasses.dataclass(frozen=True)
class Argument:
    name: str
    type: Any  # int, float, bool, str, Optional[...] or Any: what OmegaConf checks and converts to
    default: Any  # a plain value, MISSING (required) or NO_DEFAULT
    choices: tuple[Any, ...] | None = None
    bounds: tuple[str, ...] = ()  # ">= 1", "< 1"

    def check(self, key: str, value: Any) -> None:
        """The choices and bounds of the type hint: one :class:`ConfigValueError` line naming ``key``."""
        if value is None or value == MISSING:
            return
        if self.choices is not None:
            check_choice(key, value, self.choices)
        limits: dict[str, Any] = {}
        for bound in self.bounds:
            op, _, number = bound.strip().partition(" ")
            side, inclusive = _BOUNDS[op]
            limits[side], limits[f"{side}_inclusive"] = float(number) if "." in number else int(number), inclusive
        if limits:
            integer = self.type in (int, Optional[int])
            check_range(key, value, integer=integer, **limits)


MISSING_ARGUMENT = Argument("?", Any, NO_DEFAULT)  # what arguments() has not: no default to compare with


@functools.lru_cache(maxsize=None)
def arguments(target: str) -> dict[str, Argument]:
    """The constructor arguments of the class ``target`` (``package.module.Class``), by name; a
    :class:`ConfigValueError` when there is no such class. Read from the source when the class defines its
    ``__init__`` there, else from the imported class."""
    module, _, name = target.rpartition(".")
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ConfigValueError("_target_", target, f"a class to build: no module {module!r} can be imported")
    tree = ast.parse(Path(spec.origin).read_text(), filename=spec.origin)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    aliases = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Subscript)
               for t in n.targets if isinstance(t, ast.Name)}
    found = _read(classes, name, aliases)
    return found if found is not None else _imported(target)


def _read(classes: dict[str, ast.ClassDef], name: str, aliases: dict[str, ast.expr]) -> dict[str, Argument] | None:
    """The arguments of class ``name`` from the module's source: its own ``__init__``'s, followed by those of a
    base class of the same module it hands ``**kwargs`` to (``super().__init__(**kwargs)``, so a base's
    defaults are written once); None when its ``__init__`` is another module's."""
    cls = classes.get(name)
    while cls is not None:
        bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
        base = bases[0] if len(cls.bases) == 1 and bases else None  # one base, of this module when in classes
        init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:
            cls = classes.get(base) if base else None
            continue
        own = _from_source(init, aliases)
        inherited = _read(classes, base, aliases) if base in classes and _passes_kwargs(init) else None
        if inherited is None:
            return own
        del own["**"]
        return {**own, **{k: v for k, v in inherited.items() if k not in own}}
    return None


def _passes_kwargs(init: ast.FunctionDef) -> bool:
    """Whether ``__init__`` takes ``**kwargs`` and hands them on whole to ``super().__init__``."""
    kwarg = init.args.kwarg.arg if init.args.kwarg else None
    return kwarg is not None and any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "__init__"
        and isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", "") == "super"
        and any(k.arg is None and getattr(k.value, "id", "") == kwarg for k in node.keywords)
        for node in ast.walk(init))


def _from_source(init: ast.FunctionDef, aliases: dict[str, ast.expr]) -> dict[str, Argument]:
    args = init.args
    positional = [*args.posonlyargs, *args.args][1:]  # self
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)  # the last ones have them
    found = {}
    for arg, default in [*zip(positional, defaults), *zip(args.kwonlyargs, args.kw_defaults)]:
        kind, choices, bounds = _hint(arg.annotation, aliases)
        found[arg.arg] = Argument(arg.arg, kind, _default(default), choices, bounds)
    if args.kwarg is not None:
        found["**"] = Argument("**", Any, NO_DEFAULT)  # takes any key
    return found


def _default(node: ast.expr | None) -> Any:
    if node is None:
        return MISSING
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError):
        return NO_DEFAULT


def _hint(node: ast.expr | None, aliases: dict[str, ast.expr]) -> tuple[Any, tuple[Any, ...] | None, tuple[str, ...]]:
    """(the OmegaConf type, the Literal's choices, the Annotated bounds) of a type hint's source; ``aliases``:
    the module's names for hints."""
    if node is None:
        return Any, None, ()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted hint
        return _hint(ast.parse(node.value, mode="eval").body, aliases)
    if isinstance(node, ast.Name) and node.id in aliases:
        return _hint(aliases[node.id], {k: v for k, v in aliases.items() if k != node.id})
    if isinstance(node, ast.Name):
        return {"int": int, "float": float, "bool": bool, "str": str}.get(node.id, Any), None, ()
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # X | None
        sides = [s for s in (node.left, node.right) if not (isinstance(s, ast.Constant) and s.value is None)]
        if len(sides) == 1:
            inner, choices, bounds = _hint(sides[0], aliases)
            return (Optional[inner] if inner is not Any else Any), choices, bounds
        return Any, None, ()
    if isinstance(node, ast.Subscript):
        head = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Optional":
            inner, choices, bounds = _hint(items[0], aliases)
            return (Optional[inner] if inner is not Any else Any), choices, bounds
        if head == "Literal":
            choices = tuple(ast.literal_eval(i) for i in items)
            kinds = {type(c) for c in choices}
            return (kinds.pop() if len(kinds) == 1 and kinds <= {str, int} else Any), choices, ()
        if head == "Annotated":
            inner, choices, bounds = _hint(items[0], aliases)
            extra = tuple(i.value for i in items[1:] if isinstance(i, ast.Constant) and isinstance(i.value, str)
                          and i.value.split(" ")[0] in _BOUNDS)
            return inner, choices, bounds + extra
    return Any, None, ()


def _imported(target: str) -> dict[str, Argument]:
    """The arguments of the imported class (its ``__init__`` is inherited, or not in its module's source)."""
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception as exc:  # noqa: BLE001
        raise ConfigValueError("_target_", target, f"a class to build ({exc})") from None
    found = {}
    for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if param.kind is param.VAR_KEYWORD:
            found["**"] = Argument("**", Any, NO_DEFAULT)
        elif param.kind is not param.VAR_POSITIONAL:
            default = MISSING if param.default is param.empty else param.default
            plain = default is None or isinstance(default, (int, float, bool, str))
            found[param.name] = Argument(param.name, Any, default if plain else NO_DEFAULT)
    return found


@functools.lru_cache(maxsize=None)
def schema(target: str) -> type:
    """A dataclass of the constructor's arguments (OmegaConf checks keys and types against it): each with
    its default, a required one MISSING; one whose default is not a plain value is only typed."""
    fields = [("_target_", str, dataclasses.field(default=target))]
    for arg in arguments(target).values():
        if arg.name == "**":
            continue
        default = MISSING if arg.default is NO_DEFAULT else arg.default
        if isinstance(default, (list, dict)):
            fields.append((arg.name, Any, dataclasses.field(default_factory=functools.partial(_copy, default))))
        else:
            fields.append((arg.name, arg.type if default is not None or arg.type is Any else Optional[arg.type],
                           dataclasses.field(default=default)))
    made = dataclasses.make_dataclass(f"{target.rsplit('.', 1)[-1]}Config", fields)
    made._signature = True  # completed already: complete() is idempotent
    return made


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def complete(cfg: Any) -> None:
    """Each of ``cfg``'s :data:`GROUPS` checked against, and completed with, its constructor's arguments:
    an unknown key, a wrong type, a value outside a ``Literal`` or a bound is one line naming it; every
    argument not set gets its default. Idempotent; a group without ``_target_`` is left as it is."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    for group in GROUPS:
        node = cfg.get(group) if isinstance(cfg, DictConfig) else None
        if not isinstance(node, DictConfig) or "_target_" not in node or OmegaConf.is_missing(node, "_target_"):
            continue
        if OmegaConf.get_type(node) not in (dict, None) and not getattr(OmegaConf.get_type(node), "_signature", False):
            continue  # a typed schema of its own
        target = str(node._target_)
        found = arguments(target)
        if "**" in found:  # **kwargs: any key goes to the constructor
            continue
        raw = OmegaConf.to_container(node, resolve=False)  # "???" and "${...}" kept as they are
        extra = {k: v for k, v in raw.items() if str(k).startswith("_") and k != "_target_"}  # _partial_...
        merged = OmegaConf.merge(OmegaConf.structured({group: schema(target)}),
                                 {group: {k: v for k, v in raw.items() if k not in extra}})[group]
        with open_dict(cfg):
            cfg[group] = merged
            for key, value in extra.items():
                with open_dict(cfg[group]):
                    cfg[group][key] = value
        for name, arg in found.items():
            if not OmegaConf.is_missing(cfg[group], name) and not _interpolation(cfg[group], name):
                arg.check(f"{group}.{name}", cfg[group][name])


def check_sweep_values(cfg: Any, overrides: list[str], most: int = 10_000) -> None:
    """Each value a sweep override gives a model's or datamodule's argument (``model.n_components=3,0``,
    ``range(..)``, an ``interval(..)``'s ends) checked against its ``Literal`` and bounds, as :func:`complete`
    checks one value, and of the argument's type: a sweep with a value no job could take is refused before
    its parent run is opened. ``cfg`` is the sweep's own composition (completed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    for override in OverridesParser.create().parse_overrides(overrides):
        group, _, name = override.get_key_element().lstrip("+~").partition(".")
        node = cfg.get(group) if group in GROUPS else None
        if not override.is_sweep_override() or "." in name or node is None or "_target_" not in node:
            continue
        arg = arguments(str(node._target_)).get(name)
        if arg is None:
            continue  # an unknown key: the job's composition names it
        if override.is_discrete_sweep():
            values = list(itertools.islice(override.sweep_iterator(), most))
        else:
            values = [override.value().start, override.value().end]
        typed = OmegaConf.structured({group: schema(str(node._target_))})
        for value in values:
            value = OmegaConf.merge(typed, {group: {name: value}})[group][name]  # converted, or refused as a job's
            arg.check(f"{group}.{name}", value)


def _interpolation(node: Any, key: str) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.is_interpolation(node, key)


def missing(group: str, node: Any) -> list[str]:
    """The required arguments of ``node``'s constructor that it still lacks (MISSING)."""
    from omegaconf import OmegaConf

    return [f"{group}.{k}" for k in node if OmegaConf.is_missing(node, k)]


def constructor_error(group: str, target: str, message: str) -> str:
    """A constructor's own check (``n_heads=3 is not allowed: …``) said with its key (``model.n_heads=3 …``)."""
    name = message.split("=", 1)[0]
    known = name.isidentifier() and name in arguments(target) if "=" in message else False
    return f"{group}.{message}" if known else f"{group} ({target}): {message}"

