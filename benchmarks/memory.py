"""Peak memory of a long `flows run`: bounded by a chunk, not by the run.

Runs ``flows run`` in a subprocess on the quick-start problem (``configs/quickstart.toml``,
a 64-32-32-10 tanh MLP on 256 digits, 3466 parameters, float32) with GD only and no
eigenvalue tracking, and reports the subprocess's peak resident set size (``ru_maxrss``
of its resource usage, as ``resource.getrusage(RUSAGE_CHILDREN)`` gives it for a sole
child; read with ``os.wait4`` so that each case is measured alone), its wall time, and
the size of ``results.npz``. Cases:

- ``long``: 10**6 steps, ``save_every = 100`` (10 001 saved rows, 139 MB of parameters);
- ``every_step``: 20 000 steps, ``save_every = 1`` (20 001 rows, 277 MB of parameters);
- ``every_step_80k`` (with ``--all``): 80 000 steps, ``save_every = 1`` (1.1 GB).

    python benchmarks/memory.py [--cases long every_step] [--all] [--out DIR]

writes ``results.md`` and ``results.json`` to ``--out`` (default ``runs/memory/``). Each
case runs in a fresh temporary output folder with a fresh compilation cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.toml"

CASES = {
    "long": {"steps": 10**6, "save_every": 100},
    "every_step": {"steps": 20_000, "save_every": 1},
    "every_step_80k": {"steps": 80_000, "save_every": 1},
}


def config_text(steps: int, save_every: int) -> str:
    """The quick-start config with GD only, ``steps`` and ``save_every``, no eigenvalues."""
    text = QUICKSTART.read_text()
    text = text[: text.index("[methods.")] + "[methods.gd]\n"
    text = re.sub(r"(?m)^steps = .*$", f"steps = {steps}", text)
    text = re.sub(r"(?m)^save_every = .*$", f"save_every = {save_every}", text)
    return re.sub(r"(?m)^num_eigenvalues = .*$", "num_eigenvalues = 0", text)


def measure(name: str, steps: int, save_every: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="flows-memory-") as tmp:
        tmp = Path(tmp)
        config = tmp / f"{name}.toml"
        config.write_text(config_text(steps, save_every))
        env = {**os.environ, "FLOWS_CACHE_DIR": str(tmp / "cache"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "flows", "run", str(config), "--out",
                   str(tmp / "run"), "--no-progress"]
        start = time.perf_counter()
        with open(tmp / "stdout", "w") as out, open(tmp / "stderr", "w") as err:
            child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
            # Reap it ourselves, with its own resource usage.
            _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        err = (tmp / "stderr").read_text()
        results = tmp / "run" / "results.npz"
        chunks = list((tmp / "run" / "chunks").glob("*.npz"))
        row = {
            "case": name, "steps": steps, "save_every": save_every,
            "saved_rows": steps // save_every + 1,
            "exit_status": child.returncode,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
            "wall_seconds": seconds,
            "results_mb": results.stat().st_size / 1e6 if results.exists() else None,
            "chunk_files_left": len(chunks),
            "done_line": next((line for line in err.splitlines() if line.startswith("done")),
                              err.strip().splitlines()[-1] if err.strip() else ""),
        }
        if child.returncode != 0:
            print(err, file=sys.stderr)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES),
                        default=["long", "every_step"])
    parser.add_argument("--all", action="store_true", help="also the 80 000-step case")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "memory")
    args = parser.parse_args()
    cases = list(CASES) if args.all else args.cases
    rows = []
    for name in cases:
        print(f"{name}: flows run, {CASES[name]} …", flush=True)
        rows.append(measure(name, **CASES[name]))
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "",
        "| case | steps | save_every | saved rows | peak RSS (MB) | wall (s) | results.npz (MB) "
        "| exit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = "—" if r["results_mb"] is None else f"{r['results_mb']:.0f}"
        lines.append(
            f"| {r['case']} | {r['steps']} | {r['save_every']} | {r['saved_rows']} | "
            f"{r['peak_rss_mb']:.0f} | {r['wall_seconds']:.0f} | {size} | {r['exit_status']} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
