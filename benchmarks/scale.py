"""Cost against model size: GD, gradient flow and the central flow at 10k, 100k and 1M parameters.

Each (size, method) is measured in a fresh subprocess (so peak memory is its own), on
200 scikit-learn digits with ½‖f − y‖²:

- ``10k``: MLP 64-150-10 tanh (11,260 parameters), the digits case of
  ``central_flow_vs_gd.py``;
- ``100k``: MLP 64-300-300-10 tanh (112,810 parameters);
- ``100k-cnn``: CNN (zoo `cnn`, 3×3 convolutions of 64 and 160 channels, tanh, 2×2 average
  pooling, dense head) on the 8×8 images (99,370 parameters);
- ``1M``: MLP 64-1000-1000-10 tanh (1,076,010 parameters).

The learning rate is set from the initial sharpness λ₁ (Lanczos): the central flow runs at
η = 2.2/λ₁, so it is at the edge of stability from its first step (Σ ≠ 0; the cost that
matters), and GD and gradient flow at η = 1.8/λ₁ (their cost does not depend on η).
Reported per case: time per step (steps 5 to 5 + ``--steps``, or from ``--warmup`` on, from
the difference of two runs, compilation excluded), its
ratio to GD's step of the same size, compile seconds, and peak memory: the process's peak
resident set on a CPU (``ru_maxrss``, compilation included), the device's
``peak_bytes_in_use`` on an accelerator.

    python benchmarks/scale.py                       # every size, CPU (float32)
    python benchmarks/scale.py --sizes 10k 100k      # a subset
    python benchmarks/scale.py --device gpu          # the same on an accelerator
    python benchmarks/scale.py --methods central_flow --options '{"refresh_interval": 1}'
    python benchmarks/scale.py --methods gd central_flow --warmup 45   # past the entry

writes ``results.json`` and ``table.md`` to ``--out`` (default ``runs/scale/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SIZES = {
    "10k": ("mlp", {"widths": [150]}),
    "100k": ("mlp", {"widths": [300, 300]}),
    "100k-cnn": ("cnn", {"channels": [64, 160]}),
    "1M": ("mlp", {"widths": [1000, 1000]}),
}
METHODS = ("gd", "gradient_flow", "central_flow")
# Steps timed per method (after compilation): enough for a stable per-step figure.
STEPS = {"gd": 400, "gradient_flow": 100, "central_flow": 20}
WARMUP = 5


def build(size: str, dtype: str):
    """The problem of ``size`` in ``dtype``, its initial sharpness λ₁ and the seconds it took."""
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from flows.linalg import sharpness
    from flows.problems import PROBLEMS, digits

    kind, kwargs = SIZES[size]
    data = digits(n=200, flatten=kind == "mlp", standardize=False)
    problem = PROBLEMS[kind](data, activation="tanh", **kwargs).astype(jnp.dtype(dtype))
    start = time.perf_counter()
    top = float(jax.jit(lambda p: sharpness(p.flat_loss, p.w0))(problem))
    return problem, top, time.perf_counter() - start


def child(size: str, method: str, steps: int, dtype: str, options: dict,
          warmup: int = WARMUP) -> dict:
    """One measurement, in this process (called in a fresh subprocess)."""
    problem, top, sharpness_seconds = build(size, dtype)
    import jax
    import numpy as np

    import flows
    from flows.vector_fields.central_flow import REFRESH_INTERVAL

    lr = (2.2 if method == "central_flow" else 1.8) / top
    # Time steps warmup .. warmup + steps: the difference of two runs, so that the first
    # step's from-scratch eigensolve (the central flow's) is not spread over the rest.
    options = options if method == "central_flow" else {}
    runs = [flows.simulate(problem, method, lr=lr, steps=count, **options) for count in
            (warmup, warmup + steps)]
    run = runs[1]
    done = int(run.stopped_at) if int(run.stopped_at) >= 0 else warmup + steps
    if done < warmup + steps:
        raise RuntimeError(f"{method} stopped at step {done}: {run.status}")
    record = {
        "size": size,
        "method": method + "".join(f", {k}={v}" for k, v in options.items())
        + (f" (default: adaptive refresh_interval, 1 to {REFRESH_INTERVAL})"
           if method == "central_flow" and "refresh_interval" not in options else ""),
        "params": problem.num_params,
        "dtype": dtype,
        "device": str(jax.devices()[0].device_kind),
        "lr": lr,
        "initial_sharpness": top,
        "sharpness_seconds": sharpness_seconds,
        "steps": steps,
        "status": run.status,
        "ms_per_step": 1e3 * (run.wall_time - runs[0].wall_time) / steps,
        "warmup": warmup,
        "first_steps_ms": 1e3 * runs[0].wall_time / warmup,
        "compile_s": run.compile_time,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        record["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    if method == "central_flow":
        at_edge = np.asarray(run.extras["num_at_edge"])[warmup:]
        record["mean_at_edge"] = float(np.mean(at_edge))
        # Timed steps whose eigen-basis was refined (`refresh_interval`).
        age = np.rint(np.asarray(run.extras["basis_age"])[warmup + 1:])
        record["refreshed_steps"] = int(np.sum(age == 0))
    return record


def measure(size: str, method: str, steps: int, dtype: str, device: str, options: dict,
            warmup: int = WARMUP) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["JAX_PLATFORMS"] = "cuda" if device == "gpu" else "cpu"
    command = [sys.executable, __file__, "--child", size, method, "--steps", str(steps),
               "--dtype", dtype, "--options", json.dumps(options), "--warmup", str(warmup)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        return {"size": size, "method": method, "error": " | ".join(tail)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(records: list[dict]) -> str:
    gd = {r["size"]: r["ms_per_step"] for r in records if r["method"] == "gd" and "error" not in r}
    lines = [
        "| size | parameters | method | ms/step | ratio to GD | compile (s) | peak memory (MB) |"
        " at the edge |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['size']} | | {r['method']} | failed: {r['error']} | | | | |")
            continue
        ratio = r["ms_per_step"] / gd[r["size"]] if r["size"] in gd else float("nan")
        memory = r.get("device_peak_mb", r["peak_rss_mb"])
        edge = f"{r['mean_at_edge']:.2f}" if "mean_at_edge" in r else ""
        if "refreshed_steps" in r:
            edge += f" (basis refined at {r['refreshed_steps']} of {r['steps']} steps)"
        lines.append(
            f"| {r['size']} | {r['params']:,} | {r['method']} | {r['ms_per_step']:.3g} | "
            f"{ratio:.3g} | {r['compile_s']:.1f} | {memory:.0f} | {edge} |"
        )
    return "\n".join(lines)


def machine(device: str) -> str:
    """This machine in words, for the tables: architecture, CPU count, device."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {device}"


def save(out: Path, table_name: str, data_name: str, text: str, data: dict) -> None:
    """``<table_name>.md`` (text) and ``<data_name>.json`` (data) in ``out``, atomically."""
    from flows.results import atomic_write_bytes, save_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{table_name}.md", text.encode())
    save_json(out / f"{data_name}.json", data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="steps per method (default: "
                        + ", ".join(f"{m} {s}" for m, s in STEPS.items()) + ")")
    parser.add_argument("--options", type=json.loads, default={},
                        help='central-flow options as JSON, e.g. \'{"refresh_interval": 4}\'')
    parser.add_argument("--warmup", type=int, default=WARMUP,
                        help=f"steps run before the timed ones (default {WARMUP}; the adaptive "
                        "refresh_interval reaches its steady state at the edge after ~40)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scale")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, method = args.child
        print(json.dumps(child(size, method, args.steps or STEPS[method], args.dtype,
                               args.options, args.warmup)))
        return
    records = []
    for size in args.sizes:
        for method in args.methods:
            record = measure(size, method, args.steps or STEPS[method], args.dtype, args.device,
                             args.options, args.warmup)
            records.append(record)
            print(json.dumps(record), flush=True)
    text = f"Machine: {machine(args.device)}; dtype {args.dtype}\n\n{table(records)}\n"
    save(args.out, "table", "results", text, {"machine": machine(args.device),
                                              "records": records})
    print(text)


if __name__ == "__main__":
    main()
