"""Helpers for the command-line tests: TOML writing, in-process runs, subprocess runs."""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(config: dict) -> str:
    """Tables of plain values; ``methods`` is a table of tables."""
    lines = []
    for table, body in config.items():
        if table == "methods" and isinstance(body, dict):
            for label, options in body.items():
                lines.append(f"[methods.{json.dumps(label)}]")
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in options.items()]
        else:
            lines.append(f"[{table}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: dict) -> Path:
    path.write_text(dump_toml(config))
    return path


def run_cli(*args) -> tuple[int, str, str]:
    """``flows ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def run_subprocess(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    """``python -m flows ARGS`` in a fresh interpreter (its own JAX flags)."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [environment.get("PYTHONPATH")] if p]
    )
    return subprocess.run(
        [sys.executable, "-m", "flows", *map(str, args)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout,
    )


def load_results(directory: Path) -> dict[str, np.ndarray]:
    with np.load(directory / "results.npz") as archive:
        return {k: archive[k] for k in archive.files}


def assert_one_line_error(stderr: str) -> None:
    text = stderr.strip()
    assert text.startswith("flows: error:"), stderr
    assert "\n" not in text, stderr
    assert "Traceback" not in stderr
