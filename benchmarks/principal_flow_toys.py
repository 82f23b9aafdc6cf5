"""The principal flow on the toys of Rosca, Wu, Qin and Dherin, "On a continuous time model
of gradient descent dynamics and instability in deep learning" (TMLR 2023), with DAL-p.

1. The paper's quadratic ``L(θ) = θᵀ diag(1, 0.01) θ`` (Hessian diag(2, 0.02)) from
   (−0.35, −0.2) at h ∈ {0.5, 0.9, 1.0, 1.05}, i.e. ηλ₁ = 1 (GD zeroes θ₁ in one step),
   1.8 (oscillating convergence), 2 (a period-2 orbit) and 2.1 (divergence): GD, gradient
   flow, the modified flow and the principal flow (real part, as a continuous curve) in the
   θ plane (``quadratic.png``), and a table of ‖w_flow(k) − w_GD(k)‖ (max over the steps, and
   at the last step).
2. Non-quadratic toys, ½(ab − 1)² from (0.5, 3) and (1 + x²)y² from (1, 0.1), each also
   from starts nearer its minimizers (the distance d sets the amplitude of GD's oscillation,
   hence how far from quadratic the run is), and a tiny tanh MLP (30 parameters, after 50 GD
   steps) at ηλ_max(w₀) ∈ {0.5, 1.5, 1.9, 1.99}: the same distances over 20 steps; and the
   divergent case ηλ_max = 4 on (1 + x²)y² from (0.1, 0.1) (divergence threshold
   10·(1 + L₀)): the step where GD and the principal flow diverge.
3. DAL-p, the drift-adjusted learning rate the paper derives from the principal flow
   (``h = 2/(‖Hg‖/‖g‖)^p``): training loss of GD at fixed learning rates and of DAL-1 and
   DAL-0.5 (step size capped at 1) on the 8-16-16-1 swish MLP, and the step sizes DAL picks
   (``dal.png``).

Tables go to ``table.md`` in the output folder. Run:
``python benchmarks/principal_flow_toys.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import flows  # noqa: E402
from flows.linalg.hvp import gradient  # noqa: E402
from flows.optimizers import DAL, GD  # noqa: E402
from flows.problems import (  # noqa: E402
    diagonal_quadratic,
    mlp,
    reference_mlp,
    scalar_product,
    synthetic_regression,
    valley,
)
from flows.vector_fields import GradientFlow, ModifiedFlow, PrincipalFlow  # noqa: E402

run_flow = eqx.filter_jit(flows.run_flow)
run_discrete = eqx.filter_jit(flows.run_discrete)
FLOWS = {
    "gradient flow": GradientFlow,
    "modified flow": ModifiedFlow,
    "principal flow": PrincipalFlow,
}
TOLERANCES = {"rtol": 1e-10, "atol": 1e-12, "max_steps": 20_000}
DAL_CAP = 1.0  # h_max of DAL-p, about twice the 2/λ_max(w₀) of the swish MLP


@eqx.filter_jit
def continuous_path(field, t1, num):
    """The flow's (real) parameters at ``num`` equispaced times in [0, t1], for the plots."""
    ts = jnp.linspace(0.0, t1, num)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, t1, None, field.initial_state(),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
        max_steps=20_000, throw=False,
    )
    return jax.vmap(field.parameters)(solution.ys)


def distances(problem, lr, steps, divergence_factor=1e6):
    """max_k and last-step ‖w_flow(k) − w_GD(k)‖ for each flow, and the runs' statuses."""
    rule = GD(lr=jnp.asarray(lr))
    gd = run_discrete(problem, rule, steps, divergence_factor=divergence_factor)
    rows = {"gd": gd}
    for name, cls in FLOWS.items():
        run = run_flow(
            cls(problem=problem, rule=rule), steps, divergence_factor=divergence_factor,
            **TOLERANCES,
        )
        rows[name] = run
    return rows


def gap(run, gd):
    d = np.linalg.norm(np.asarray(run["params"]) - np.asarray(gd["params"]), axis=1)
    finite = d[np.isfinite(d)]
    return (float(finite.max()) if finite.size else np.nan), float(d[-1])


def status(run):
    code, stop = int(run["status_code"]), int(run["stopped_at"])
    return flows.trajectory.status_text(code, stop)


def quadratic_section(out: Path, steps: int) -> list[str]:
    problem = diagonal_quadratic()
    lrs = [0.5, 0.9, 1.0, 1.05]
    lines = [
        f"### θᵀdiag(1, 0.01)θ from (−0.35, −0.2), {steps} steps",
        "",
        "| h | ηλ₁ | flow | max_k ‖w(k) − w_GD(k)‖ | at step "
        f"{steps} | ‖w_GD({steps})‖ | status |",
        "|---|---|---|---|---|---|---|",
    ]
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.2 * len(lrs), 4))
    for ax, lr in zip(axes, lrs):
        rows = distances(problem, lr, steps)
        gd = np.asarray(rows["gd"]["params"])
        for name in FLOWS:
            worst, last = gap(rows[name], rows["gd"])
            lines.append(
                f"| {lr} | {2 * lr:.2f} | {name} | {worst:.2e} | {last:.2e} | "
                f"{np.linalg.norm(gd[-1]):.2e} | {status(rows[name])} |"
            )
            field = FLOWS[name](problem=problem, rule=GD(lr=jnp.asarray(lr)))
            path = np.asarray(continuous_path(field, steps, 40 * steps + 1))
            ax.plot(path[:, 0], path[:, 1], lw=1.2, label=name)
        ax.plot(gd[:, 0], gd[:, 1], "k.", ms=6, label="GD")
        pf = np.asarray(rows["principal flow"]["params"])
        ax.plot(pf[:, 0], pf[:, 1], "o", mfc="none", mec="C2", ms=9, label="PF at integer τ")
        ax.set_title(f"h = {lr} (ηλ₁ = {2 * lr:.2f})")
        ax.set_xlabel("θ₁")
        ax.set_ylabel("θ₂")
        lim = 1.2 * max(np.abs(gd[:, 0]).max(), 0.4)
        ax.set_xlim(-lim, lim)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quadratic.png", dpi=120)
    plt.close(fig)
    return lines


def trained_tiny_mlp() -> flows.Problem:
    data = synthetic_regression(n=10, d_in=3, d_out=2, seed=0)
    problem = mlp(data, widths=[6], activation="tanh", bias=False, seed=0)
    start = run_discrete(problem, GD(lr=jnp.asarray(0.4)), 50)["params"][-1]
    return flows.Problem(problem.loss, problem.unravel(start), name="tiny tanh MLP, trained")


@eqx.filter_jit
def sharpness_along(problem, params):
    return jax.vmap(lambda w: flows.sharpness(problem.flat_loss, w))(params)


def toy_starts(quick: bool) -> list[tuple[str, flows.Problem, str, float]]:
    """(label, problem, start, distance from the start to the minimizers) for the 2-D toys.

    The distance is |y₀| for (1 + x²)y² (minimizers y = 0) and |a₀b₀ − 1| for ½(ab − 1)²
    (starts on the ray b = 6a through (0.5, 3)): the amplitude of GD's oscillation across
    the minimizers, which sets how non-quadratic the run is.
    """
    offsets = [0.1, 0.01] if quick else [0.1, 0.03, 0.01, 0.003]
    residuals = [0.5, 0.03] if quick else [0.5, 0.1, 0.03, 0.01]
    starts = [("(1 + x²)y²", valley(x=1.0, y=y), f"(1, {y})", y) for y in offsets]
    for r in residuals:
        a = float(np.sqrt((1 + r) / 6))
        starts.append(
            ("½(ab − 1)²", scalar_product(a=a, b=6 * a), f"({a:.3g}, {6 * a:.3g})", r)
        )
    return starts


def nonlinear_section(steps: int, quick: bool) -> list[str]:
    lines = [
        f"### Non-quadratic toys, {steps} steps",
        "",
        "max_k ‖w_flow(k) − w_GD(k)‖ for gradient flow (GF), the modified flow (MF) and the",
        "principal flow (PF); d is the start's distance to the minimizers (|y₀|, |a₀b₀ − 1|).",
        "",
        "| problem | start | d | ηλ_max(w₀) | along GD | GF | MF | PF | GF / PF | d · GF / PF "
        "| PF status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    levels = [0.5, 1.5, 1.9] if quick else [0.5, 1.5, 1.9, 1.99]
    starts = toy_starts(quick)
    starts.append(("tiny tanh MLP (30 params)", trained_tiny_mlp(), "50 GD steps in", np.nan))
    for label, problem, start, distance in starts:
        sharp = float(flows.sharpness(problem.flat_loss, problem.w0))
        for c in levels:
            rows = distances(problem, c / sharp, steps)
            d = {name: gap(rows[name], rows["gd"])[0] for name in FLOWS}
            ratio = d["gradient flow"] / d["principal flow"]
            along = c / sharp * float(jnp.max(sharpness_along(problem, rows["gd"]["params"])))
            lines.append(
                f"| {label} | {start} | {distance:.3g} | {c} | {along:.3f} | "
                f"{d['gradient flow']:.2e} | "
                f"{d['modified flow']:.2e} | {d['principal flow']:.2e} | {ratio:.1f} | "
                f"{distance * ratio:.2f} | {status(rows['principal flow'])} |"
            )
    problem = valley(x=0.1, y=0.1)
    lr = 4.0 / float(flows.sharpness(problem.flat_loss, problem.w0))
    rows = distances(problem, lr, steps, divergence_factor=10.0)
    lines += [
        "",
        "Divergence, (1 + x²)y² from (0.1, 0.1) at ηλ_max = 4 (threshold 10·(1 + L₀)): "
        f"GD {status(rows['gd'])}, principal flow {status(rows['principal flow'])}, "
        f"gradient flow {status(rows['gradient flow'])}.",
    ]
    return lines


def dal_section(out: Path, steps: int) -> list[str]:
    problem = reference_mlp(draw="numpy")  # the draw of the recorded figures
    f = problem.flat_loss
    sharp = float(flows.sharpness(f, problem.w0))
    runs = {}
    for lr in [0.5 / sharp, 1.0 / sharp, 1.9 / sharp, 2.5 / sharp]:
        runs[f"GD η = {lr:.3f}"] = run_discrete(problem, GD(lr=jnp.asarray(lr)), steps)
    for p in [1.0, 0.5]:
        runs[f"DAL-{p:g}"] = run_discrete(problem, DAL(lr=jnp.asarray(DAL_CAP), p=p), steps)
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(10, 4))
    lines = [
        f"### DAL-p on the 8-16-16-1 swish MLP ({steps} steps, λ_max(w₀) = {sharp:.2f})",
        "",
        "| method | final loss | status |",
        "|---|---|---|",
    ]
    for name, run in runs.items():
        loss = np.asarray(run["loss"])
        ax_loss.semilogy(np.asarray(run["steps"]), loss, label=name)
        lines.append(f"| {name} | {loss[-1]:.3e} | {status(run)} |")
        if name.startswith("DAL"):
            p = float(name.split("-")[1])
            rule = DAL(lr=jnp.asarray(DAL_CAP), p=p)
            chosen = jax.vmap(lambda w, rule=rule: rule.step_size(f, w, gradient(f)(w)))(
                run["params"]
            )
            ax_lr.plot(np.asarray(run["steps"]), np.asarray(chosen), label=f"{name}: h_k")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.legend(fontsize=7)
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("step size chosen by DAL")
    ax_lr.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dal.png", dpi=120)
    plt.close(fig)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/principal_flow_toys"))
    parser.add_argument("--quick", action="store_true", help="fewer steps and cases")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    lines = quadratic_section(args.out, 10 if args.quick else 20)
    lines += [""] + nonlinear_section(10 if args.quick else 20, args.quick)
    lines += [""] + dal_section(args.out, 100 if args.quick else 500)
    lines += ["", f"({time.perf_counter() - start:.0f} s)"]
    text = "\n".join(lines)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
