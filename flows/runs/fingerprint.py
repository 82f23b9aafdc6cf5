"""Fingerprints: what identifies a run, so a run folder is resumed only by the same run."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import jax
import numpy as np

from ..problem import Problem

__all__ = ["problem_fingerprint", "text_fingerprint"]

# Function reprs carry memory addresses that change from process to process.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _hash_update_tree(digest, tree) -> None:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    digest.update(_ADDRESS.sub("", str(treedef)).encode())
    for leaf in leaves:
        array = np.asarray(leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())


def problem_fingerprint(problem: Problem, *extra: Any) -> str:
    """A hash of the problem's arrays and structure and of ``extra`` (reprs)."""
    digest = hashlib.sha256()
    _hash_update_tree(digest, problem)
    for item in extra:
        digest.update(_ADDRESS.sub("", repr(item)).encode())
    return digest.hexdigest()


def text_fingerprint(*items: Any) -> str:
    """A hash of the reprs of ``items``."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(_ADDRESS.sub("", repr(item)).encode())
    return digest.hexdigest()
