"""Runs of one or more methods on one problem: chunks, checkpoints, resume, fingerprints.

`run` executes a `flows.RunSpec` (one learning rate or a sweep) in lockstep chunks and
keeps a run folder resumable (`flows.results` holds the file layout), with memory
bounded by a chunk, not by the run; `check_resources` refuses a run whose saved rows
would not fit in memory or on disk. `flows.simulate` with ``checkpoint_dir`` and the
``flows run`` command both go through it.
"""

from .fingerprint import problem_fingerprint, text_fingerprint
from .runner import (
    CheckpointMismatch,
    ResourceError,
    RunOutput,
    check_resources,
    check_take_over,
    is_parameter_series,
    run,
    saved_bytes,
    simulate_checkpointed,
    trajectory_of,
)

__all__ = [
    "run",
    "RunOutput",
    "CheckpointMismatch",
    "ResourceError",
    "saved_bytes",
    "check_resources",
    "check_take_over",
    "is_parameter_series",
    "simulate_checkpointed",
    "trajectory_of",
    "problem_fingerprint",
    "text_fingerprint",
]
