"""Where a command's time goes: with ``LABBOOK_TIMING=1`` in the environment, :func:`mark` writes
``labbook-timing: PHASE SECONDS CPU`` to stderr, SECONDS being :func:`time.monotonic` (one clock for every
process of the machine, so ``benchmarks/startup.py`` can set them against its own) and CPU the process's
:func:`time.process_time` (what the phases cost where other jobs share the cores and stretch wall times).
Without it a mark costs one test of a flag.
"""

from __future__ import annotations

import os
import sys
import time

ENV_TIMING = "LABBOOK_TIMING"
_ON = bool(os.environ.get(ENV_TIMING))


def enabled() -> bool:
    return _ON


def now() -> tuple[float, float]:
    """(wall, CPU) now, for a :func:`mark` made later: ``mark("last-step", at=reading)``."""
    return time.monotonic(), time.process_time()


def mark(phase: str, at: tuple[float, float] | None = None) -> None:
    """Say that ``phase`` (one word, such as ``composed``) ends now, or ended at ``at`` (a :func:`now`
    reading taken earlier)."""
    if _ON:
        wall, cpu = now() if at is None else at
        print(f"labbook-timing: {phase} {wall:.6f} {cpu:.6f}", file=sys.stderr, flush=True)


def read_marks(stderr: str) -> dict[str, tuple[float, float]]:
    """The marks a command printed (its ``stderr``), ``{phase: (wall, CPU)}``: what the benchmarks read."""
    marks = {}
    for line in stderr.splitlines():
        if line.startswith("labbook-timing: "):
            phase, wall, cpu = line.split()[1:4]
            marks[phase] = (float(wall), float(cpu))
    return marks
