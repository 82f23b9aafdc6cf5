"""A learning-rate sweep as one compiled, vmapped `flows.sweep` vs a loop of single runs.

For each method (GD, gradient flow, central flow when registered) on the central-flow
reference problem (an 8-16-16-1 swish MLP on 128 points, `flows.problems.reference_mlp`;
``--problem tiny_mlp`` for a 3-6-1 tanh MLP), 16 learning rates are run

- as a loop of 16 `flows.simulate` calls (the first compiles, the others reuse it),
- as a loop of 16 one-member sweeps (likewise one compiled function, reused 16 times),
- as one `flows.sweep` call,

and the wall times (compilation included, and run time alone) are compared.

Stiffness: in step time gradient flow ``dw/dτ = −η g`` is stiffer the larger η, and a
vmapped adaptive solve runs until its slowest member finishes. The script counts the
integrator's accepted steps per learning rate and times gradient flow over the 16 rates
as one vmapped chunk, as 4 chunks of 4 rates sorted by η (`flows.sweep`'s grouping), and
as 4 chunks of 4 interleaved (unsorted) rates.

    python benchmarks/sweep_vs_loop.py [--quick] [--out DIR] [--steps N] [--problem P]
        [--methods M ...] [--skip-stiffness]

writes ``results.md`` and ``results.json`` to ``--out`` (default ``runs/sweep_vs_loop/``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import flows  # noqa: E402
from flows.integrate import default_tolerances  # noqa: E402

PROBLEMS = {
    "reference_mlp": lambda: flows.problems.reference_mlp(draw="numpy"),  # as recorded
    "tiny_mlp": lambda: flows.problems.mlp(
        flows.problems.synthetic_regression(n=16, d_in=3, d_out=1), [6], activation="tanh"
    ),
}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(result))
    return result, time.perf_counter() - start


def compare_loop_and_sweep(problem, method, lrs, steps, repeats):
    """Wall times of the three ways to run ``lrs``; run times are the best of ``repeats``."""
    singles, loop_total = timed(
        lambda: [flows.simulate(problem, method, lr=lr, steps=steps) for lr in lrs]
    )
    loop_run = sum(t.wall_time for t in singles)

    def one_member_sweeps():
        return [flows.sweep(problem, method, lrs=[lr], steps=steps) for lr in lrs]

    members, reused_total = timed(one_member_sweeps)
    reused_run = min(
        [sum(t.wall_time for t in members)]
        + [sum(t.wall_time for t in one_member_sweeps()) for _ in range(repeats - 1)]
    )
    swept, sweep_total = timed(lambda: flows.sweep(problem, method, lrs=lrs, steps=steps))
    sweep_run = min(
        [swept.wall_time]
        + [flows.sweep(problem, method, lrs=lrs, steps=steps).wall_time for _ in range(repeats - 1)]
    )
    # The sweep's members are the single runs (the point of the comparison). At the edge of
    # stability GD is chaotic: rounding differences (batched vs single matmuls) grow
    # exponentially, so the deviation is reported over the first 10 steps and over the run.
    stacked = np.stack([np.asarray(t.params) for t in singles])
    swept_params = np.asarray(swept.params)
    both = np.isfinite(stacked) & np.isfinite(swept_params)
    gap = np.where(both, np.abs(stacked - swept_params), 0.0)
    same_status = bool(
        np.array_equal([int(t.status_code) for t in singles], np.asarray(swept.status_code))
        and np.array_equal([int(t.stopped_at) for t in singles], np.asarray(swept.stopped_at))
    )
    return {
        "method": method,
        "loop_total_s": loop_total,
        "loop_run_s": loop_run,
        "reused_total_s": reused_total,
        "reused_run_s": reused_run,
        "sweep_total_s": sweep_total,
        "sweep_compile_s": swept.compile_time,
        "sweep_run_s": sweep_run,
        "total_ratio": loop_total / sweep_total,
        "run_ratio": loop_run / sweep_run,
        "reused_run_ratio": reused_run / sweep_run,
        "deviation_first_10_steps": float(gap[:, :11].max()),
        "deviation_whole_run": float(gap.max()),
        "same_status": same_status,
        "diverged": int(np.sum(np.asarray(swept.status_code) != 0)),
    }


def accepted_steps(problem, lrs, steps):
    """The adaptive integrator's accepted steps for gradient flow at each η (one vmapped solve
    with `run_flow`'s default solver and tolerances)."""
    rtol, atol = default_tolerances(problem.w0.dtype)

    @eqx.filter_jit
    def count(lr):
        field = flows.make_method(problem, "gradient_flow", lr)
        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), t0=0.0, t1=float(steps), dt0=None,
            y0=field.initial_state(),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=int(1000 + 200 * steps), throw=False,
        )
        return solution.stats["num_accepted_steps"]

    return np.asarray(jax.vmap(count)(jnp.asarray(lrs)))


def stiffness(problem, lrs, steps, repeats):
    """Gradient flow over ``lrs``: one chunk vs sorted chunks of 4 vs unsorted chunks of 4."""
    def run(chunk_size, groups):
        total = 0.0
        for group in groups:
            total += flows.sweep(
                problem, "gradient_flow", lrs=group, steps=steps, chunk_size=chunk_size
            ).wall_time
        return total

    def best(chunk_size, groups):
        run(chunk_size, groups)  # compile
        return min(run(chunk_size, groups) for _ in range(repeats))

    one = best(len(lrs), [lrs])
    interleaved = [lrs[i::4] for i in range(4)]  # each chunk spans the whole range of η
    unsorted = best(4, interleaved)
    sorted_chunks = best(4, [lrs])
    singles = best(1, [lrs])
    counts = accepted_steps(problem, lrs, steps)
    # Work model: a vmapped chunk costs (its members) × (its slowest member's steps).
    work_one = len(lrs) * counts.max()
    work_sorted = sum(4 * counts[i : i + 4].max() for i in range(0, len(lrs), 4))
    work_unsorted = sum(4 * counts[i::4].max() for i in range(4))
    work_singles = counts.sum()
    return {
        "lrs": [float(x) for x in lrs],
        "accepted_steps": [int(c) for c in counts],
        "one_chunk_s": one,
        "sorted_chunks_s": sorted_chunks,
        "unsorted_chunks_s": unsorted,
        "single_chunks_s": singles,
        "gain_sorted": one / sorted_chunks,
        "gain_unsorted": one / unsorted,
        "gain_singles": one / singles,
        "work_gain_sorted": float(work_one / work_sorted),
        "work_gain_unsorted": float(work_one / work_unsorted),
        "work_gain_singles": float(work_one / work_singles),
    }


def markdown(rows, stiff, args, problem) -> str:
    lines = [
        f"Problem: {problem.name} ({problem.num_params} parameters), {args.steps} steps, "
        f"16 learning rates geomspace({args.lr_min}, {args.lr_max}); float64; "
        f"{platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.default_backend()} device(s).",
        "",
        "| method | 16 × simulate: total / run (s) | 16 one-member sweeps: total / run (s) "
        "| one sweep: total / compile / run (s) | ratio total | ratio run "
        "| ratio run vs one-member sweeps | max ‖Δw‖ steps ≤ 10 / all | diverged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['loop_total_s']:.1f} / {r['loop_run_s']:.2f} "
            f"| {r['reused_total_s']:.1f} / {r['reused_run_s']:.2f} "
            f"| {r['sweep_total_s']:.1f} / {r['sweep_compile_s']:.1f} / {r['sweep_run_s']:.2f} "
            f"| {r['total_ratio']:.1f}× | {r['run_ratio']:.1f}× | {r['reused_run_ratio']:.1f}× "
            f"| {r['deviation_first_10_steps']:.0e} / {r['deviation_whole_run']:.0e} "
            f"| {r['diverged']}{'' if r['same_status'] else ' (status differs!)'} |"
        )
    if stiff is None:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Gradient flow, accepted steps per η: "
        + ", ".join(f"{lr:.3g}: {c}" for lr, c in zip(stiff["lrs"], stiff["accepted_steps"])),
        "",
        "| gradient flow, 16 η | run (s) | gain | work-model gain |",
        "|---|---|---|---|",
        f"| one vmapped chunk of 16 | {stiff['one_chunk_s']:.2f} | 1× | 1× |",
        f"| 4 chunks of 4, sorted by η (`sweep`) | {stiff['sorted_chunks_s']:.2f} "
        f"| {stiff['gain_sorted']:.1f}× | {stiff['work_gain_sorted']:.1f}× |",
        f"| 4 chunks of 4, interleaved η | {stiff['unsorted_chunks_s']:.2f} "
        f"| {stiff['gain_unsorted']:.1f}× | {stiff['work_gain_unsorted']:.1f}× |",
        f"| 16 chunks of 1 (a loop, one compilation) | {stiff['single_chunks_s']:.2f} "
        f"| {stiff['gain_singles']:.1f}× | {stiff['work_gain_singles']:.1f}× |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep_vs_loop"))
    parser.add_argument("--steps", type=int, default=None, help="steps (default 100, quick 10)")
    parser.add_argument("--lr-min", type=float, default=0.01)
    parser.add_argument("--lr-max", type=float, default=1.0)
    parser.add_argument(
        "--problem", choices=sorted(PROBLEMS), default="reference_mlp",
        help="reference_mlp (433 parameters) or tiny_mlp (a 3-6-1 tanh MLP on 16 points)",
    )
    parser.add_argument(
        "--methods", nargs="*", default=["gd", "gradient_flow", "central_flow"],
        help="methods to compare (central_flow is skipped if not registered)",
    )
    parser.add_argument("--skip-stiffness", action="store_true")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 10 if args.quick else 100
    repeats = 1 if args.quick else 2
    problem = PROBLEMS[args.problem]()
    lrs = [float(x) for x in np.geomspace(args.lr_min, args.lr_max, 16)]
    methods = [m for m in args.methods if m in flows.OPTIMIZERS or m in flows.FLOWS]
    for skipped in sorted(set(args.methods) - set(methods)):
        print(f"{skipped} is not a registered method: skipped")

    rows = []
    for method in methods:
        rows.append(compare_loop_and_sweep(problem, method, lrs, args.steps, repeats))
        print(json.dumps(rows[-1]), flush=True)
    stiff = None if args.skip_stiffness else stiffness(problem, lrs, args.steps, repeats)
    print(json.dumps(stiff), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, stiff, args, problem)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(
        json.dumps({"rows": rows, "stiffness": stiff, "steps": args.steps}, indent=2)
    )
    print(text)


if __name__ == "__main__":
    main()
