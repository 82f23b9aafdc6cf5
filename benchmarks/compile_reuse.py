"""First call vs later calls of `flows.simulate`: what compilation costs, and that it is paid once.

On the central-flow reference MLP (`flows.problems.reference_mlp`, 8-16-16-1 swish on 128
points, 433 parameters, float64), for GD (with the top eigenvalue tracked at every saved
step), gradient flow and the central flow, `flows.simulate` is called three times in one
process: a first call, then two calls with other learning rates. Each call's
``compile_time`` and ``wall_time`` are reported beside the call's own clock, so the table
shows both that a later call compiles nothing and that ``compile + run`` is the whole call.

With ``--quickstart`` it also times the README's quick start, ``flows run
configs/quickstart.toml``, three times in fresh output folders: without the persistent
compilation cache, then a first and a second run sharing a new cache folder.

    python benchmarks/compile_reuse.py [--steps N] [--quickstart] [--out DIR]

writes ``results.md`` and ``results.json`` to ``--out`` (default ``runs/compile_reuse/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import flows  # noqa: E402

LRS = (0.1, 0.08, 0.12)
METHODS = {
    "gd": {"tracking": 1},
    "gradient_flow": {},
    "central_flow": {},
}


def time_calls(problem, method, steps, save_every):
    rows = []
    for lr in LRS:
        start = time.perf_counter()
        run = flows.simulate(problem, method, lr=lr, steps=steps, save_every=save_every,
                             **METHODS[method])
        total = time.perf_counter() - start
        rows.append({"lr": lr, "total": total, "compile": run.compile_time,
                     "run": run.wall_time, "status": run.status})
    return rows


def time_quickstart(out: Path) -> dict[str, float]:
    config = Path(__file__).resolve().parent.parent / "configs" / "quickstart.toml"
    cache = Path(tempfile.mkdtemp(prefix="flows-cache-"))
    seconds = {}
    for name, cache_dir in [("no cache", ""), ("first, new cache", str(cache)),
                            ("second, same cache", str(cache))]:
        folder = Path(tempfile.mkdtemp(prefix="quickstart-"))
        env = {**os.environ, "FLOWS_CACHE_DIR": cache_dir}
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "flows", "run", str(config), "--out", str(folder),
             "--no-progress"], check=True, env=env, capture_output=True,
        )
        seconds[name] = time.perf_counter() - start
        print(f"quick start, {name}: {seconds[name]:.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--quickstart", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/compile_reuse"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    problem = flows.problems.reference_mlp()
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{jax.devices()[0].platform}", "steps": args.steps, "methods": {}}
    lines = [
        f"reference_mlp ({problem.num_params} parameters), float64, {args.steps} steps, "
        f"η = {', '.join(map(str, LRS))} in turn, one process",
        "",
        "| method | call | total (s) | compile (s) | run (s) | compile + run − total (s) |",
        "|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        rows = time_calls(problem, method, args.steps, args.save_every)
        results["methods"][method] = rows
        for i, row in enumerate(rows):
            label = "first" if i == 0 else f"later (η = {row['lr']})"
            gap = row["compile"] + row["run"] - row["total"]
            lines.append(f"| {method} | {label} | {row['total']:.2f} | {row['compile']:.2f} | "
                         f"{row['run']:.2f} | {gap:+.3f} |")
            print(lines[-1], flush=True)
    if args.quickstart:
        results["quickstart"] = time_quickstart(args.out)
        lines += ["", "| quick start (`flows run configs/quickstart.toml`) | wall (s) |",
                  "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in results["quickstart"].items()]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
