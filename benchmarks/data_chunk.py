"""Memory and cost of a loss evaluated over chunks of the data (``data_chunk``).

Two measurements, on this machine's CPU:

- ``memory``: the peak resident set (``ru_maxrss``) of a float64 central flow
  (`flows.simulate`, five tracked eigenvalues, ``--steps`` steps, compilation included) of
  the CIFAR-10 reproduction's CNN (zoo `cnn`, channels 32, 64, 64, tanh, ½‖f − y‖²; 66,570
  parameters) on random 32×32×3 images with one-hot targets (CIFAR-10's shape; no file
  needed), η = 1/λ₁(w₀), each (images, chunk) in a fresh subprocess. A whole batch that
  does not fit is reported with the size XLA asked for.
- ``cost``: gradient, HVP and third derivative ∇³L[v, v] of the 100k CNN of ``scale.py``
  (channels 64, 160; 200 digits; float32), each jitted alone, best of 5 interleaved over
  the chunk sizes, and a `flows.simulate` GD step (best of 2 runs of 200 steps).

    taskset -c 1 python benchmarks/data_chunk.py memory --images 100 200 --chunks 0 25    # ~20 min
    taskset -c 1 python benchmarks/data_chunk.py memory --images 1000 --chunks 0 100 --steps 1
    taskset -c 1 python benchmarks/data_chunk.py cost                                    # ~2 min

Chunk 0 is the whole batch at once; on 1000 images it fails in about a minute (XLA asks
for 44.5 GB), and chunks of 100 take ~15 min. Writes ``<mode>.md`` and ``<mode>.json`` to
``--out`` (default ``runs/data_chunk/``).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

from scale import ROOT, SIZES, machine, save
from step_profile import best_time


def memory_child(images: int, chunk: int, steps: int) -> dict:
    """One central flow in this process; its peak resident set."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import flows
    from flows.linalg import sharpness
    from flows.problems import Dataset, cnn

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(images, 32, 32, 3))
    y = np.eye(10)[rng.integers(0, 10, size=images)]
    problem = cnn(Dataset(x, y, 10, "random-cifar-shape"), channels=(32, 64, 64),
                  data_chunk=chunk or None)
    # η = 1/λ₁(w₀), as the CIFAR-10 case of central_flow_vs_gd.py: GD has to double its
    # sharpness to reach 2/η.
    top = float(jax.jit(lambda p: sharpness(p.flat_loss, p.w0))(problem))
    run = flows.simulate(problem, "central_flow", lr=1 / top, steps=steps, num_eigenvalues=5)
    return {"images": images, "chunk": chunk, "steps": steps, "status": run.status,
            "compile_s": run.compile_time, "run_s": run.wall_time,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def memory(args) -> tuple[str, list]:
    rows = []
    for images in args.images:
        for chunk in args.chunks:
            command = [sys.executable, __file__, "--child", str(images), str(chunk),
                       str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode == 0:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            else:
                asked = re.search(r"allocating (\d+) bytes", done.stderr)
                row = {"images": images, "chunk": chunk, "steps": args.steps,
                       "failed": f"asked for {int(asked.group(1)) / 1e9:.1f} GB" if asked
                       else done.stderr.strip().splitlines()[-1][:200]}
            print(row, flush=True)
            rows.append(row)
    lines = [f"Machine: {machine('cpu')}.", "",
             "| images | chunk | steps | peak memory (GB) | compile (s) | run (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        chunk = r["chunk"] or "whole batch"
        if "failed" in r:
            lines.append(f"| {r['images']} | {chunk} | {r['steps']} | fails: {r['failed']} | | |")
        else:
            lines.append(f"| {r['images']} | {chunk} | {r['steps']} | {r['peak_rss_gb']:.2f} | "
                         f"{r['compile_s']:.0f} | {r['run_s']:.0f} |")
    return "\n".join(lines) + "\n", rows


def cost(args) -> tuple[str, dict]:
    import jax
    import jax.numpy as jnp

    import flows
    from flows.linalg import hvp
    from flows.problems import PROBLEMS, digits

    kind, kwargs = SIZES["100k-cnn"]
    data = digits(n=200, flatten=False, standardize=False)

    def third(problem, w, v):
        return jax.jvp(lambda u: hvp(problem.flat_loss, u, v), (w,), (v,))[1]

    pieces = {
        "gradient": jax.jit(lambda problem, w, v: jax.grad(problem.flat_loss)(w)),
        "HVP": jax.jit(lambda problem, w, v: hvp(problem.flat_loss, w, v)),
        "third derivative": jax.jit(third),
    }
    chunks = [c or None for c in args.chunks]
    problems = {c: PROBLEMS[kind](data, activation="tanh", data_chunk=c, **kwargs)
                .astype(jnp.float32) for c in chunks}
    best = {}
    for _ in range(5):  # interleaved over the chunk sizes, so that drift hits all alike
        for chunk, problem in problems.items():
            v = jnp.ones_like(problem.w0)
            for name, fn in pieces.items():
                seconds = best_time(fn, problem, problem.w0, v, repeats=1)
                best[chunk, name] = min(best.get((chunk, name), seconds), seconds)
    for chunk, problem in problems.items():
        runs = [flows.simulate(problem, "gd", lr=0.01, steps=200) for _ in range(2)]
        best[chunk, "GD step"] = min(r.wall_time for r in runs) / 200
    names = [*pieces, "GD step"]
    lines = [f"Machine: {machine('cpu')}.", "", "| chunk | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for chunk in chunks:
        cells = " | ".join(f"{1e3 * best[chunk, name]:.1f} ms" for name in names)
        lines.append(f"| {chunk or 'whole batch'} | {cells} |")
    data = {f"{chunk}/{name}": seconds for (chunk, name), seconds in best.items()}
    return "\n".join(lines) + "\n", data


def main() -> None:
    if "--child" in sys.argv:
        images, chunk, steps = map(int, sys.argv[sys.argv.index("--child") + 1:][:3])
        print(json.dumps(memory_child(images, chunk, steps)), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("memory", "cost"))
    parser.add_argument("--images", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--chunks", type=int, nargs="+", default=None,
                        help="examples per chunk, 0 for the whole batch (default: memory "
                             "0 25, cost 0 100 50)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "data_chunk")
    args = parser.parse_args()
    if args.chunks is None:
        args.chunks = [0, 25] if args.mode == "memory" else [0, 100, 50]
    text, data = memory(args) if args.mode == "memory" else cost(args)
    print(text)
    save(args.out, args.mode, args.mode, text, {"machine": machine("cpu"), "rows": data})


if __name__ == "__main__":
    main()
