"""What ``labbook train`` overrides complete to: a group with ``=`` (``mod`` -> ``model=``), a group's options
(``model=g`` -> ``model=gmm``), a config key (``model.n_`` -> ``model.n_components=``) and a key's current
value (``model.n_components=`` -> ``model.n_components=4``).

Groups and options are read from ``conf/`` (:mod:`labbook.config.groups`: no Hydra import, milliseconds).
Keys come from the config composed with the overrides typed before the word (after ``model=lstm``,
``model.`` lists the LSTM's keys), matched by Hydra's own completion code
(:meth:`hydra.plugins.completion_plugin.CompletionPlugin._get_matches`, what ``-sc`` uses). Hydra's own
groups (``hydra/launcher``, ``hydra/sweeper``, ...) come from its config loader, asked only for them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from labbook.config.groups import groups, options

HYDRA_GROUPS = "hydra/"


def override_candidates(word: str, typed: Callable[[], Sequence[str]]) -> list[str]:
    """The completions of ``word``, an override being typed after the overrides ``typed()`` (asked only when
    keys are matched: only they depend on the rest of the line)."""
    sign = word[:1] if word[:1] in ("+", "~") else ""  # +key=value adds, ~group deletes
    body = word[len(sign):]
    key, eq, value = body.partition("=")
    if eq:
        names = options(key) or (_hydra_group_options(key) if key.startswith(HYDRA_GROUPS) else [])
        if names:
            return [f"{sign}{key}={name}" for name in names if name.startswith(value)]
        return [sign + match for match in _key_matches(body, typed)]
    # A group name: "group=" to choose an option; "~group" deletes it, and takes no value.
    found = [f"{sign}{group}" + ("" if sign == "~" else "=") for group in groups() if group.startswith(body)]
    if body.startswith(HYDRA_GROUPS):
        found += [f"{sign}{HYDRA_GROUPS}{sub}=" for sub in _hydra_subgroups() if f"{HYDRA_GROUPS}{sub}".startswith(body)]
    elif HYDRA_GROUPS.startswith(body):
        found.append(sign + HYDRA_GROUPS)
    if sign != "~" and "/" not in body:  # a key has dots, never slashes
        found += [sign + match for match in _key_matches(body, typed)]
    return sorted(set(found))


def _key_matches(word: str, typed: Callable[[], Sequence[str]]) -> list[str]:
    from hydra.plugins.completion_plugin import CompletionPlugin

    from labbook.config.compose import hydra_for_train

    with hydra_for_train() as hydra:
        cfg = _compose_leniently(hydra, typed())
        if cfg is None:
            return []
        try:
            return [m for m in CompletionPlugin._get_matches(cfg, word) if m != word]
        except Exception:  # noqa: BLE001 - a value that cannot be shown (an interpolation needing a job): none
            return []


def _compose_leniently(hydra: Any, typed: Sequence[str]) -> Any:
    """The config composed with the overrides typed so far that compose: a sweep (``a=1,2``) or a half-typed
    override must not leave the user with no completion at all."""
    from labbook.config.compose import compose_train

    usable = [o for o in typed if _is_single_override(o)]
    for attempt in (usable, [o for o in usable if options(o.lstrip("+~").partition("=")[0])], []):
        try:
            return compose_train(hydra, attempt)
        except Exception:  # noqa: BLE001 - try with fewer overrides
            continue
    return None


def _is_single_override(text: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return not OverridesParser.create().parse_override(text).is_sweep_override()
    except Exception:  # noqa: BLE001 - not an override Hydra can parse
        return False


def _hydra_subgroups() -> list[str]:
    from hydra.core.object_type import ObjectType

    from labbook.config.compose import hydra_for_train

    with hydra_for_train() as hydra:
        return sorted(hydra.config_loader.get_group_options("hydra", results_filter=ObjectType.GROUP))


def _hydra_group_options(group: str) -> list[str]:
    from hydra.core.object_type import ObjectType

    from labbook.config.compose import hydra_for_train

    with hydra_for_train() as hydra:
        return sorted(hydra.config_loader.get_group_options(group, results_filter=ObjectType.CONFIG))
