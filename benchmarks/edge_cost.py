"""Cost of a central-flow step at the edge of stability, and the accuracy of cheaper settings.

Two measurements, for `CentralFlow` refreshing its eigen-basis at every step (the exact
method) and for variants of its options
(``refresh_interval``, ``derivative_dtype``, ``refine_rtol``, ``edge_margin``,
``num_eigenvalues``), float64, on this machine's CPU:

1. **At the edge**: the digits MLP of ``central_flow_vs_gd.py`` (64-150-10 tanh, ½‖f − y‖²,
   200 digits, 11,260 parameters, η = 0.062) restarted from its central flow's point at step
   860, where two eigenvalues are at 2/η and a third within the margin. Time per step:
   the difference of a 105-step and a 5-step run (so compilation and the first, from-scratch
   eigensolve drop out), each the best of ``--repeats`` interleaved with the others; GD's
   the same way (2100 − 100 steps) in the same process, so the ratio is of one run. Both
   are `flows.simulate` runs saving every step (GD's also evaluates the loss there); the
   ratio to a bare GD step (a jitted `lax.scan` of the update, nothing saved) is given too.
2. **Accuracy**, 1000 steps from the start, of the digits case and of the reference case
   (`flows.problems.reference_mlp()`, η = 0.1): distance to GD in float32 at the end and its
   maximum after the edge (‖w_GD − w_CF‖ / ‖w_GD − w₀‖), the predicted loss' median error
   against GD's smoothed loss (as in ``central_flow_vs_gd.py``), the largest ηλ₁ after the
   edge, the largest change of the flow against the exact one (divided by GD's
   displacement), and the whole run's time against 1000 GD steps.

    python benchmarks/edge_cost.py            # ~10 min here
    python benchmarks/edge_cost.py --skip-accuracy   # timings only (keeps earlier accuracy)

writes ``results.json`` and ``table.md`` to ``--out`` (default ``runs/edge_cost/``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from central_flow_vs_gd import accuracy, digits_case  # noqa: E402

import flows  # noqa: E402
from flows.problems import reference_mlp  # noqa: E402
from flows.results import atomic_write_bytes, save_json  # noqa: E402

# The first is the exact method, the reference of "change of the flow".
VARIANTS = {
    "refresh_interval=1": {"refresh_interval": 1},
    "default (adaptive refresh_interval, 1 to 8)": {},
    "refresh_interval=2": {"refresh_interval": 2},
    "refresh_interval=4": {"refresh_interval": 4},
    "refresh_interval=8": {"refresh_interval": 8},
    "refresh_interval=4, derivative_dtype=float32": {
        "refresh_interval": 4, "derivative_dtype": "float32"
    },
    "derivative_dtype=float32, refine_rtol=1e-3, edge_margin=0.02": {
        "refresh_interval": 1, "derivative_dtype": "float32", "refine_rtol": 1e-3,
        "edge_margin": 0.02,
    },
}
CHECKPOINT_STEP = 860
# Run lengths whose difference times a step: the central flow's, GD's.
FLOW_LENGTHS, GD_LENGTHS = (5, 105), (100, 2100)


def run_times(problem, method, lr, lengths, **options) -> tuple[dict, flows.Trajectory]:
    """Wall seconds of one run of each length (compilation excluded), and the last run."""
    times = {}
    for steps in lengths:
        run = flows.simulate(problem, method, lr=lr, steps=steps, **options)
        if not run.ok:
            raise RuntimeError(f"{method} {options}: {run.status}")
        times[steps] = run.wall_time
    return times, run


def bare_gd_time(problem, lr, steps=2000) -> float:
    """Seconds of ``steps`` GD steps in a jitted `lax.scan` of ``w ← w − η∇L(w)``."""
    grad = jax.grad(problem.flat_loss)

    @jax.jit
    def run(w):
        return jax.lax.scan(lambda w, _: (w - lr * grad(w), None), w, None, length=steps)[0]

    run(problem.w0).block_until_ready()
    start = time.perf_counter()
    run(problem.w0).block_until_ready()
    return time.perf_counter() - start


def at_edge(out: Path, repeats: int) -> dict:
    problem, lr = digits_case()
    checkpoint = out / f"digits_central_flow_step{CHECKPOINT_STEP}.npy"
    if not checkpoint.exists():
        run = flows.simulate(problem, "central_flow", lr=lr, steps=CHECKPOINT_STEP,
                             save_every=CHECKPOINT_STEP, refresh_interval=1)
        np.save(checkpoint, np.asarray(run.final_params))
    w = jnp.asarray(np.load(checkpoint))
    problem = eqx.tree_at(lambda p: p.params0, problem, problem.unravel(w))
    # Interleaved repeats, the best time of each run length over them: the machine's speed
    # drifts (other jobs), and each figure is then from its fastest period.
    best: dict = {}
    edges = {}
    for _ in range(repeats):
        for name, method, lengths, options in [("gd", "gd", GD_LENGTHS, {})] + [
            (name, "central_flow", FLOW_LENGTHS, options) for name, options in VARIANTS.items()
        ]:
            times, run = run_times(problem, method, lr, lengths, **options)
            for steps, seconds in times.items():
                best[name, steps] = min(best.get((name, steps), np.inf), seconds)
            if method == "central_flow":
                edges[name] = float(np.mean(np.asarray(run.extras["num_at_edge"])[5:]))
        best["bare", 2000] = min(best.get(("bare", 2000), np.inf), bare_gd_time(problem, lr))
    gd = (best["gd", GD_LENGTHS[1]] - best["gd", GD_LENGTHS[0]]) / (GD_LENGTHS[1] - GD_LENGTHS[0])
    bare = best["bare", 2000] / 2000
    rows = {"gd_ms_per_step": 1e3 * gd, "bare_gd_ms_per_step": 1e3 * bare}
    print(f"at the edge: GD {1e3 * gd:.3f} ms/step ({1e3 * bare:.3f} bare)", flush=True)
    for name in VARIANTS:
        short, long = FLOW_LENGTHS
        seconds = (best[name, long] - best[name, short]) / (long - short)
        rows[name] = {"ms_per_step": 1e3 * seconds, "ratio": seconds / gd,
                      "ratio_to_bare": seconds / bare, "at_edge": edges[name]}
        print(f"  {name}: {1e3 * seconds:.2f} ms/step, {seconds / gd:.1f}× GD "
              f"({seconds / bare:.1f}× bare), {edges[name]:.2f} at the edge", flush=True)
    return rows


def accuracy_case(name: str, problem, lr: float, steps: int = 1000) -> dict:
    gd32 = flows.simulate(problem.astype(jnp.float32), "gd", lr=lr, steps=steps)
    gd_time = min(flows.simulate(problem, "gd", lr=lr, steps=steps).wall_time for _ in range(2))
    reference = np.asarray(gd32.params, dtype=np.float64)
    travelled = np.linalg.norm(reference - reference[0], axis=1)
    rows, exact = {}, None
    for variant, options in VARIANTS.items():
        cf = flows.simulate(problem, "central_flow", lr=lr, steps=steps, num_eigenvalues=5,
                            **options)
        figures = accuracy(cf, gd32, problem, lr)
        params = np.asarray(cf.params)
        exact = params if exact is None else exact
        change = np.linalg.norm(params - exact, axis=1)[1:] / travelled[1:]
        rows[variant] = {
            "final": figures["final_distance"],
            "max_after_edge": figures["max_distance_after_edge"],
            "predicted_loss_median_error": figures["predicted_loss_median_error"],
            "max_top_eigenvalue_after_edge": figures["max_top_eigenvalue_after_edge"],
            "change_vs_exact": float(np.max(change)),
            "run_s": cf.wall_time,
            "ratio": cf.wall_time / gd_time,
        }
        print(f"  {name}, {variant}: " + json.dumps(rows[variant]), flush=True)
    return rows


def table(results: dict) -> str:
    lines = []
    if "at_edge" in results:
        edge = results["at_edge"]
        lines += [
            f"At the edge (digits, step {CHECKPOINT_STEP}; GD {edge['gd_ms_per_step']:.3f} "
            f"ms/step, bare {edge['bare_gd_ms_per_step']:.3f}):", "",
            "| variant | ms/step | ratio to a GD step | to a bare GD step | at the edge |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {row['ms_per_step']:.2f} | {row['ratio']:.1f} | "
            f"{row['ratio_to_bare']:.1f} | {row['at_edge']:.2f} |"
            for name, row in edge.items() if isinstance(row, dict)
        ]
    for case in ("digits", "reference"):
        if case not in results:
            continue
        lines += [
            "", f"Accuracy, {case}, 1000 steps, against GD in float32:", "",
            "| variant | final | max after edge | predicted loss, median error | max ηλ₁ "
            "| change of the flow | whole run / GD |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {100 * r['final']:.2f}% | {100 * r['max_after_edge']:.2f}% | "
            f"{100 * r['predicted_loss_median_error']:.2f}% | "
            f"{r['max_top_eigenvalue_after_edge']:.6f} | {r['change_vs_exact']:.1e} | "
            f"{r['ratio']:.1f} |"
            for name, r in results[case].items()
        ]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/edge_cost"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"platform": platform.platform(), "devices": str(jax.devices())}}
    results["at_edge"] = at_edge(args.out, args.repeats)
    previous = args.out / "results.json"
    if args.skip_accuracy:  # keep the earlier run's accuracy tables, if any
        earlier = json.loads(previous.read_text()) if previous.exists() else {}
        results.update({k: earlier[k] for k in ("digits", "reference") if k in earlier})
    else:
        results["digits"] = accuracy_case("digits", *digits_case())
        results["reference"] = accuracy_case("reference", reference_mlp(), 0.1)
    text = table(results)
    print(text)
    atomic_write_bytes(args.out / "table.md", text.encode())
    save_json(args.out / "results.json", results)


if __name__ == "__main__":
    main()
