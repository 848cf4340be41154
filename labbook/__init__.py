"""labbook: compose an experiment from Hydra configs, train it with Lightning, record every run in MLflow.

From Python: :func:`labbook.launch` (what ``labbook train`` does) and :func:`labbook.load`
(:mod:`labbook.cli.api`); imported only when used, so that ``import labbook.<room>`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["launch", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from labbook.cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'labbook' has no attribute {name!r}")
