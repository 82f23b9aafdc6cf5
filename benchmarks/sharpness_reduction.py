"""Normalized GD and GD on √L against their limiting flows (Arora, Li, Panigrahi, ICML 2022).

Three reproductions, each a figure in ``--out`` and a row block in ``summary.md``:

1. ``valley.png``: on ``L = (1 + x²)y²`` both optimizers oscillate across ``y = 0`` while
   x drifts to 0; in rescaled time ``τ' = η² · step`` x follows the flows
   ``dx/dτ' = −x/(2(1 + x²))`` (normalized GD) and ``dx/dτ' = −x/2`` (GD on √L), closer
   as η → 0. The flow starts where the optimizer reached the valley floor (the midpoint
   of its iterates at step k₀, projected onto y = 0).
2. ``quadratic_two_cycle.png``: on ``½ wᵀ diag(1, 0.4) w`` normalized GD ends in a
   2-cycle along u₁, ``±(η/2)u₁`` when started near it, and in general some
   ``(a, a − η)``; GD on √L in the cycle ``±(η/2)√(λ₁/2) u₁``.
3. ``overparameterized.png``: a 2-10-1 tanh network fitting 6 points (30 parameters, Γ of
   codimension 6): λ₁ along normalized GD (tracked at the midpoints of its iterates)
   against λ₁ along the flow started from the iterate where it reached the edge.

Run: ``python benchmarks/sharpness_reduction.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402

import flows  # noqa: E402
from flows.eigen_tracking import midpoints, track  # noqa: E402
from flows.plots.eos import plot_flow_comparison, plot_two_cycle  # noqa: E402
from flows.problems import mlp, quadratic_from_matrix, synthetic_regression, valley  # noqa: E402

OPTIMIZERS = {"normalized_gd": "normalized GD", "sqrt_gd": "GD on √L"}

# The pure cores, compiled once per method and number of steps (the learning rate and
# the starting point are traced arrays, so they never recompile).
run_discrete = eqx.filter_jit(flows.run_discrete)
run_flow = eqx.filter_jit(flows.run_flow)


def discrete_run(problem, method, lr, steps, save_every=1):
    return run_discrete(problem, flows.make_method(problem, method, lr), steps, save_every)


def flow_run(problem, method, lr, steps, save_every=1, **options):
    field = flows.make_method(problem, method, lr, options=options)
    return run_flow(field, steps, save_every, integrator=flows.Integrator(max_steps=20000))


def restart_at(problem: flows.Problem, w) -> flows.Problem:
    """The same loss, starting from the flat parameters ``w``."""
    return eqx.tree_at(lambda p: p.params0, problem, problem.unravel(w))


def valley_closed_form(method: str, x0: float, tau: np.ndarray) -> np.ndarray:
    if method == "sqrt_gd":
        return x0 * np.exp(-tau / 2)
    target = np.log(x0) + x0 * x0 / 2 - tau / 2  # ln x + x²/2 = const − τ'/2
    # Newton in s = ln x: s + e^{2s}/2 is convex and increasing, so from s₀ ≥ s it
    # converges monotonically.
    s = np.full_like(tau, np.log(x0))
    for _ in range(60):
        s = s - (s + np.exp(2 * s) / 2 - target) / (1 + np.exp(2 * s))
    return np.exp(s)


def valley_experiment(lrs, horizon, k0, out: Path, lines: list[str]) -> None:
    problem = valley(x=1.0, y=0.1)
    lines += [
        "## Valley (1 + x²)y²: discrete x against the limiting flow",
        "",
        f"x₀ = 1, y₀ = 0.1; flow started at the optimizer's midpoint after k₀ = {k0} steps; "
        f"window τ' ∈ [η²k₀, {horizon}].",
        "",
        "| optimizer | η | steps | max abs(x_discrete − x_flow) | final x discrete | final x flow "
        "| max abs(flow − closed form) | max abs(λ₁ flow − 2(1+x²)) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    panels = []
    for method, name in OPTIMIZERS.items():
        x_curves, lam_curves, gap_curves = [], [], []
        for lr in lrs:
            steps = int(round(horizon / lr**2))
            discrete = discrete_run(problem, method, lr, steps)
            start = midpoints(discrete["params"][k0 - 1 : k0 + 2])[1]
            flow = flow_run(restart_at(problem, start), method + "_flow", lr, steps - k0)
            tau = lr**2 * np.arange(steps + 1)
            x_d = np.asarray(discrete["params"][:, 0])
            x_f = np.asarray(flow["params"][:, 0])
            lam_f = np.asarray(flow["extras"]["eigenvalues"][:, 0])
            gap = np.max(np.abs(x_d[k0:] - x_f))
            closed = valley_closed_form(method, float(x_f[0]), tau[k0:] - tau[k0])
            lam_gap = np.max(np.abs(lam_f - 2 * (1 + x_f**2)))
            lines.append(
                f"| {name} | {lr:g} | {steps} | {gap:.2e} | {x_d[-1]:.5f} | {x_f[-1]:.5f} "
                f"| {np.max(np.abs(x_f - closed)):.1e} | {lam_gap:.1e} |"
            )
            x_curves += [
                {"label": f"{name}, η = {lr:g}", "x": tau, "y": x_d},
                {"label": f"flow, η = {lr:g}", "x": tau[k0:], "y": x_f, "flow": True},
            ]
            gap_curves.append(
                {"label": f"η = {lr:g}", "x": tau[k0:], "y": np.abs(x_d[k0:] - x_f)}
            )
            lam_d = track(problem, discrete["params"], 1, midpoint=True, every=max(1, steps // 200))
            lam_curves += [
                {"label": f"{name} (midpoints), η = {lr:g}",
                 "x": lr**2 * np.asarray(lam_d.steps), "y": np.asarray(lam_d.sharpness)},
                {"label": f"flow, η = {lr:g}", "x": tau[k0:], "y": lam_f, "flow": True},
            ]
        panels += [
            {"title": f"{name}: x", "ylabel": "x", "curves": x_curves},
            {"title": f"{name}: λ₁ (= 2(1 + x²) on Γ)", "ylabel": "λ₁", "curves": lam_curves},
            {"title": f"{name}: abs(x_discrete − x_flow)", "ylabel": "abs(Δx)",
             "curves": gap_curves, "log": True},
        ]
    plot_flow_comparison(panels, out / "valley.png", ncols=3)
    lines.append("")


def quadratic_experiment(lr, steps, out: Path, lines: list[str]) -> None:
    h = np.diag([1.0, 0.4])
    half_sqrt = lr / 2 * np.sqrt(0.5)
    starts = {
        "normalized GD from (η/2, 10⁻³)": ("normalized_gd", [lr / 2, 1e-3], lr / 2),
        "normalized GD from (0.7, −0.5)": ("normalized_gd", [0.7, -0.5], None),
        "GD on √L from ((η/2)√(1/2), 10⁻³)": ("sqrt_gd", [half_sqrt, 1e-3], half_sqrt),
    }
    lines += [
        "## Quadratic ½wᵀdiag(1, 0.4)w: the 2-cycle along u₁",
        "",
        f"η = {lr}, {steps} steps. Predicted: normalized GD steps by exactly η along u₁, so "
        "its 2-cycles are (a, a − η), symmetric ±η/2 when started there; GD on √L steps by "
        "η√(λ₁/2).",
        "",
        "| run | last two w₁ | predicted | abs(w₂) at the end |",
        "|---|---|---|---|",
    ]
    runs, cycles = {}, {}
    for label, (method, w0, half) in starts.items():
        params = np.asarray(discrete_run(quadratic_from_matrix(h, w0), method, lr, steps)["params"])
        runs[label] = params[: min(steps, 60)]
        last = np.sort(params[-2:, 0])
        predicted = "(a, a − η)" if half is None else f"±{half:.6f}"
        if half is not None:
            cycles[label] = np.array([[half, 0.0], [-half, 0.0]])
        lines.append(
            f"| {label} | {last[0]:.6f}, {last[1]:.6f} (gap {last[1] - last[0]:.6f}) "
            f"| {predicted} | {abs(params[-1, 1]):.1e} |"
        )
    plot_two_cycle(runs, cycles, out / "quadratic_two_cycle.png",
                   title=f"½wᵀdiag(1, 0.4)w, η = {lr}: first {min(steps, 60)} steps")
    lines.append("")


def overparameterized_experiment(lrs, horizon, out: Path, lines: list[str]) -> None:
    data = synthetic_regression(n=6, d_in=2, d_out=1, seed=0)
    problem = mlp(data, widths=[10], activation="tanh", bias=False, seed=0)
    lines += [
        "## Over-parameterized 2-10-1 tanh network on 6 points (30 parameters, codim Γ = 6)",
        "",
        "λ₁ along the optimizer (Hessian at the midpoints of its iterates) against λ₁ along "
        "the flow, started where the optimizer's λ₁ peaks (it has reached the edge).",
        "",
        "| optimizer | η | steps | start step k₀ | λ₁ at k₀ | λ₁ final discrete | λ₁ final flow "
        "| max relative gap | flow status | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    panels = []
    for method, name in OPTIMIZERS.items():
        curves = []
        for lr in lrs:
            begin = time.perf_counter()
            every = int(round(0.5 / lr**2))  # track every Δτ' = 0.5
            steps = every * int(round(horizon / 0.5))
            discrete = discrete_run(problem, method, lr, steps)
            tracked = track(problem, discrete["params"], 1, midpoint=True, every=every)
            # The optimizer first sharpens on its way to Γ, then reaches the edge and
            # λ₁ starts to fall: start the flow at the peak.
            k0 = max(int(tracked.steps[np.nanargmax(np.asarray(tracked.sharpness))]), 1)
            restarted = restart_at(problem, midpoints(discrete["params"][k0 - 1 : k0 + 2])[1])
            remaining = (steps - k0) // every * every
            flow = flow_run(
                restarted, method + "_flow", lr, remaining, every, codim=data.x.shape[0]
            )
            lam_d = np.asarray(tracked.sharpness)
            tau_d = lr**2 * np.asarray(tracked.steps)
            tau_f = lr**2 * (k0 + np.asarray(flow["steps"]))
            lam_f = np.asarray(flow["extras"]["eigenvalues"][:, 0])
            status = flows.trajectory.status_text(int(flow["status_code"]), int(flow["stopped_at"]))
            lam_d_at_flow = np.interp(tau_f, tau_d, lam_d)
            gap = np.nanmax(np.abs(lam_d_at_flow - lam_f) / lam_f)
            seconds = time.perf_counter() - begin
            lines.append(
                f"| {name} | {lr:g} | {steps} | {k0} | {lam_d_at_flow[0]:.3f} | {lam_d[-1]:.3f} "
                f"| {lam_f[np.isfinite(lam_f)][-1]:.3f} | {gap:.3f} | {status} "
                f"| {seconds:.0f} |"
            )
            curves += [
                {"label": f"{name}, η = {lr:g}", "x": tau_d, "y": lam_d},
                {"label": f"flow, η = {lr:g}", "x": tau_f, "y": lam_f, "flow": True},
            ]
        panels.append({"title": f"{name}: 2-10-1 tanh, 6 points", "ylabel": "λ₁", "curves": curves})
    plot_flow_comparison(panels, out / "overparameterized.png")
    lines.append("")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=Path("runs/sharpness_reduction"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    lines = ["# Normalized GD and GD on √L against their limiting flows", ""]
    if args.quick:
        valley_experiment([0.1], horizon=1.0, k0=20, out=args.out, lines=lines)
        quadratic_experiment(0.1, 200, args.out, lines)
        overparameterized_experiment([0.1], horizon=5.0, out=args.out, lines=lines)
    else:
        valley_experiment([0.1, 0.05, 0.025], horizon=4.0, k0=20, out=args.out, lines=lines)
        quadratic_experiment(0.1, 1000, args.out, lines)
        overparameterized_experiment([0.05, 0.025], horizon=50.0, out=args.out, lines=lines)
    lines.append(f"Total {time.perf_counter() - begin:.0f} s (2-core CPU, no GPU).")
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
