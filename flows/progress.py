"""Progress bars for long runs, fed from inside compiled code by host callbacks.

`progress_bar` opens a tqdm bar on the host; `progress_callback`, called inside a
jitted ``lax.scan``, moves it to the current step. Only one bar is active at a
time; with none open the callback does nothing, so compiled code that calls it is
safe to run anywhere.
"""

from __future__ import annotations

import contextlib
import sys

import jax
import numpy as np
from tqdm.auto import tqdm

__all__ = ["progress_bar", "progress_callback"]

_active: list[tqdm] = []


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True):
    """Show a bar of ``total`` steps while the block runs (no-op when disabled)."""
    if not enabled:
        yield None
        return
    bar = tqdm(total=total, desc=description, unit="step", file=sys.stderr, leave=True)
    _active.append(bar)
    try:
        yield bar
    finally:
        _active.remove(bar)
        bar.close()


def _advance(step) -> None:
    if _active:
        bar = _active[-1]
        # Under vmap the callback sees the batch of steps; they move together.
        current = int(np.max(np.asarray(step)))
        if current > bar.n:
            bar.update(current - bar.n)


def progress_callback(step, total: int) -> None:
    """Inside traced code: report that ``step`` of ``total`` steps are done."""
    del total
    jax.debug.callback(_advance, step)
