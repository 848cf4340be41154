"""``labbook train --help``: the header, the config groups with their options, the composed config, the footer.

Hydra's own ``--help`` lists the groups through its config loader, which builds a config repository for
each of the ~130 groups and schemas it finds, each deep-copying the ConfigStore: 2-4 s here, for a list that
also showed the ``schema/*`` groups behind the YAML options, which are not choices. This renders the same
template with the groups read from ``conf/`` (:mod:`labbook.config.groups`) and one compose for the config.

The text stays where Hydra keeps it: ``hydra.help`` (``header``, ``footer``, ``template``) in
``conf/hydra/default.yaml``. ``$HYDRA_CONFIG_GROUPS`` and ``$FLAGS_HELP`` are still Hydra's, computed only
if the template asks for them; ``--hydra-help`` is Hydra's.
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from labbook.config.groups import groups


def format_groups(listing: Mapping[str, Sequence[str]]) -> str:
    """``group: option, option`` lines, as Hydra's ``$APP_CONFIG_GROUPS`` writes them."""
    return "".join(f"{group}: {', '.join(options)}\n" for group, options in sorted(listing.items()))


class _Fields(Mapping[str, str]):
    """The template's ``$NAMES``, each computed only when the template uses it."""

    def __init__(self, hydra: Any, cfg: Any, resolve: bool) -> None:
        self.hydra, self.cfg, self.resolve = hydra, cfg, resolve

    def __getitem__(self, name: str) -> str:
        from omegaconf import OmegaConf

        if name == "APP_CONFIG_GROUPS":
            return format_groups(groups())
        if name == "CONFIG":
            return OmegaConf.to_yaml(self.cfg, resolve=self.resolve)
        if name == "HYDRA_CONFIG_GROUPS":  # slow (Hydra's listing), and only if a template wants it
            return self.hydra.format_config_groups(lambda g: g == "hydra" or g.startswith("hydra/"))
        if name == "FLAGS_HELP":
            from hydra._internal.utils import get_args_parser

            return self.hydra.format_args_help(get_args_parser())
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(("APP_CONFIG_GROUPS", "CONFIG", "HYDRA_CONFIG_GROUPS", "FLAGS_HELP"))

    def __len__(self) -> int:
        return 4


def train_help(overrides: Sequence[str], resolve: bool = False) -> str:
    """The help text for ``labbook train OVERRIDES --help``: the config composed with ``overrides``, as
    Hydra's ``--help`` composes it (``model=lstm --help`` shows the LSTM's keys)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import flag_override

    from labbook.config.compose import compose_train, hydra_for_train

    with hydra_for_train() as hydra:
        cfg = compose_train(hydra, overrides)
        HydraConfig.instance().set_config(cfg)  # --resolve resolves ${hydra:...} as Hydra's help does
        template = cfg.hydra.help.template
        with flag_override(cfg, ["struct", "readonly"], [False, False]):
            del cfg["hydra"]
        return string.Template(template).substitute(_Fields(hydra, cfg, resolve))
