"""Timing a call into compiled code: seconds compiling apart from seconds running.

JAX reports how long it spends tracing, lowering and compiling through its monitoring
events; `timed` adds them up over a call, so ``compile + run`` is the whole call (a call
that reuses a compiled function records no compile time), whichever functions the call
compiles on the way (the run, eigenvalue tracking, …).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

__all__ = ["compile_clock", "timed"]

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def compile_clock() -> Iterator[list[float]]:
    """Accumulate, in ``seconds[0]``, the time JAX spends tracing, lowering and compiling
    inside the block."""
    seconds = [0.0]

    def listener(event, duration, **kwargs):
        if event in _COMPILE_EVENTS:
            seconds[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seconds
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """``fn(*args, **kwargs)`` run to completion: (output, compile seconds, run seconds),
    the two adding up to the whole call."""
    with compile_clock() as compiling:
        start = time.perf_counter()
        output = jax.block_until_ready(fn(*args, **kwargs))
        total = time.perf_counter() - start
    return output, compiling[0], max(total - compiling[0], 0.0)
