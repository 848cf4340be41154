"""Where a command's time goes: with ``LABBOOK_TIMING=1`` in the environment, :func:`mark` writes
``labbook-timing: PHASE SECONDS`` to stderr, SECONDS being :func:`time.monotonic` (one clock for every
process of the machine, so ``benchmarks/startup.py`` can set them against its own). Without it a mark
costs one test of a flag.
"""

from __future__ import annotations

import os
import sys
import time

ENV_TIMING = "LABBOOK_TIMING"
_ON = bool(os.environ.get(ENV_TIMING))


def enabled() -> bool:
    return _ON


def mark(phase: str, at: float | None = None) -> None:
    """Say that ``phase`` (one word, such as ``composed``) ends now, or ended at ``at`` (a
    :func:`time.monotonic` reading taken earlier)."""
    if _ON:
        print(f"labbook-timing: {phase} {time.monotonic() if at is None else at:.6f}", file=sys.stderr, flush=True)
