"""Dense against matrix-free (Lanczos) principal flow: agreement and cost.

The principal flow ``dw/dτ = η φ(ηH) g``, ``φ(x) = log(1 − x)/x`` (Rosca, Wu, Qin and
Dherin, TMLR 2023), evaluated either densely (the Hessian from n HVPs, then ``eigh`` while
the state is real and ``eig`` of the complex-symmetric Hessian once it is complex) or by
Lanczos on HVPs (``num_matvecs`` = 64 by default). tanh MLPs on 64 synthetic regression
points in R¹⁶, float64.

1. Agreement over 50 steps, both paths integrated with the same fixed-step Heun (dt = 1,
   two field evaluations per step) so the only difference is the matrix function:
   max_k ‖w_L(k) − w_D(k)‖ / ‖w_D(k)‖. An MLP of about 2k parameters (16-64-16-1) at
   ηλ_max(w₀) = 0.4, where progressive sharpening keeps ηλ_max below 1 (about 0.72 at step
   50) so the state stays real (``eigh``); at ηλ_max(w₀) = 0.8 it passes 1 near step 15 and
   3 by step 50, and the dense path's complex ``eig`` of a 2145 × 2145 matrix (about a
   minute per evaluation here) would take hours. The complex regime (ηλ_max(w₀) = 1.5)
   is checked on a 217-parameter MLP (16-8-8-1) started after 100 GD steps, with adaptive
   Tsit5 (fixed steps of 1 are unstable there).
2. Cost per evaluation of the vector field, dense (real state: ``eigh``; complex state:
   ``eig``) and Lanczos, at 217 to 2145 parameters; then at about 10k parameters
   (16-128-64-1, ηλ_max = 0.8): GD's seconds per step, one Lanczos evaluation, and the
   principal flow's seconds per unit of step time (adaptive Tsit5, rtol 1e-8, atol 1e-10,
   the library default; compilation excluded). The dense path is not run at 10k (a
   10⁴ × 10⁴ eigendecomposition per evaluation): its cost per evaluation is extrapolated
   as c·n³ from the largest measured size, labelled as such.
3. A 50k+ parameter MLP (16-256-192-1): the Lanczos path runs (2 units of step time) where
   the dense path refuses (``path='dense'`` raises above 5000 parameters).
4. Not in the default run (``--parts dense``, a few minutes): one dense evaluation at the
   10k size of part 2, measured, through the dense path's own calls (the flow itself
   refuses ``path='dense'`` there), and the principal flow's cost per unit of step time
   that follows from it.

Run: ``python benchmarks/principal_flow_cost.py [--quick] [--out DIR] [--parts ...]`` (the
full run takes about half an hour on a 2-core CPU, most of it the dense path of part 1). On a
shared machine, single-threaded BLAS (``OPENBLAS_NUM_THREADS=1``) makes the dense timings
several times faster and far less erratic.
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
import numpy as np  # noqa: E402

import flows  # noqa: E402
from flows.integrate import default_tolerances  # noqa: E402
from flows.optimizers import GD  # noqa: E402
from flows.problems import mlp, synthetic_regression  # noqa: E402
from flows.vector_fields import PrincipalFlow  # noqa: E402
from flows.vector_fields.principal_flow import DENSE_MAX_PARAMS, dense_direction  # noqa: E402

run_flow = eqx.filter_jit(flows.run_flow)
run_discrete = eqx.filter_jit(flows.run_discrete)


@eqx.filter_jit
def evaluate(field, y):
    return field(jnp.zeros(()), y, None)


def network(widths) -> flows.Problem:
    data = synthetic_regression(n=64, d_in=16, d_out=1, seed=0)
    return mlp(data, widths=widths, activation="tanh", seed=0)


def learning_rate(problem, c) -> float:
    eigensolver = flows.DenseEigh() if problem.num_params <= 1500 else flows.Lanczos(80)
    return c / float(flows.sharpness(problem.flat_loss, problem.w0, eigensolver=eigensolver))


def timed(fn, *args, repeat=3):
    """Seconds per call after a warm-up call (compilation excluded): the fastest of
    ``repeat`` calls, the least disturbed by other processes on a shared machine."""
    jax.block_until_ready(fn(*args))
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds.append(time.perf_counter() - start)
    return min(seconds)


def complex_state(field):
    """A complex state near w₀ (Im ~ 1e-3), so the dense path takes its ``eig`` branch."""
    w0, state = field.initial_state()
    noise = jax.random.normal(jax.random.key(1), w0.shape)
    return w0 + 1e-3j * noise, state


def trained(problem, steps) -> flows.Problem:
    """``problem`` restarted after ``steps`` GD steps at ηλ_max(w₀) = 0.4."""
    if steps == 0:
        return problem
    rule = GD(lr=jnp.asarray(learning_rate(problem, 0.4)))
    start = run_discrete(problem, rule, steps)["params"][-1]
    return flows.Problem(problem.loss, problem.unravel(start), name=f"{problem.name}, trained")


def agreement(cases, steps) -> list[str]:
    """Dense against Lanczos over ``steps`` steps, one row per ``(widths, ηλ_max(w₀),
    GD steps before w₀)``: fixed-step Heun (dt = 1) from the initialisation, where the
    state stays real; adaptive Tsit5 (rtol 1e-8) from a trained point at ηλ_max > 1,
    where fixed steps of 1 would be unstable (the top mode's rate log(1 − ηλ) is complex,
    about −0.7 + 3.1i at ηλ = 1.5, outside Heun's stability region)."""
    lines = [
        "| MLP | n | w₀ | ηλ_max(w₀) | integrator | max_k ‖Im w(k)‖_∞ | "
        "max_k ‖w_L − w_D‖ / ‖w_D‖ | max_k ‖w_L − w_D‖ / ‖w_D − w₀‖ | loss, step 0 → last | "
        "status D / L | wall s (incl. compile) D / L |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for widths, c, pretrain in cases:
        problem = trained(network(widths), pretrain)
        rule = GD(lr=jnp.asarray(learning_rate(problem, c)))
        if pretrain:
            start_label, integrator = f"after {pretrain} GD steps", "Tsit5, rtol 1e-8"
            options = flows.Integrator(rtol=1e-8, atol=1e-10, max_steps=200 * steps)
        else:
            start_label, integrator = "initialisation", "Heun, dt = 1"
            options = flows.Integrator(solver=diffrax.Heun(), dt0=1.0)
        runs, seconds = {}, {}
        for path in ["lanczos", "dense"]:
            field = PrincipalFlow(problem=problem, rule=rule, path=path)
            start = time.perf_counter()
            runs[path] = jax.block_until_ready(run_flow(field, steps, integrator=options))
            seconds[path] = time.perf_counter() - start
        dense = np.asarray(runs["dense"]["params"])
        lanczos = np.asarray(runs["lanczos"]["params"])
        gap = np.linalg.norm(lanczos - dense, axis=1)
        relative = gap / np.linalg.norm(dense, axis=1)
        to_displacement = gap[1:] / np.linalg.norm(dense - dense[0], axis=1)[1:]
        imag = float(np.max(np.asarray(runs["dense"]["extras"]["imag_at_step"])))
        loss = np.asarray(runs["dense"]["loss"])
        lines.append(
            f"| 16-{'-'.join(map(str, widths))}-1 | {problem.num_params} | {start_label} | {c} | "
            f"{integrator} | {imag:.1e} | "
            f"{np.nanmax(relative):.2e} | {np.nanmax(to_displacement):.2e} | "
            f"{loss[0]:.4f} → {loss[-1]:.4f} | {int(runs['dense']['status_code'])} / "
            f"{int(runs['lanczos']['status_code'])} | {seconds['dense']:.0f} / "
            f"{seconds['lanczos']:.0f} |"
        )
    return [
        f"### Agreement, dense against Lanczos (64 HVPs), {steps} steps",
        "",
        *lines,
    ]


def dense_scaling(sizes) -> tuple[list[str], dict[str, float]]:
    """Seconds per dense evaluation (real and complex state) at a few sizes; c in c·n³."""
    lines = [
        "| n | dense, real state (eigh) | dense, complex state (eig) | Lanczos (64 HVPs) |",
        "|---|---|---|---|",
    ]
    fits = {"real": [], "complex": []}
    for widths in sizes:
        problem = network(widths)
        rule = GD(lr=jnp.asarray(learning_rate(problem, 1.5)))
        dense = PrincipalFlow(problem=problem, rule=rule, path="dense")
        lanczos = PrincipalFlow(problem=problem, rule=rule, path="lanczos")
        real_y, complex_y = dense.initial_state(), complex_state(dense)
        t_real = timed(evaluate, dense, real_y, repeat=2)
        t_complex = timed(evaluate, dense, complex_y, repeat=1)
        t_lanczos = timed(evaluate, lanczos, complex_y)
        n = problem.num_params
        fits["real"].append(t_real / n**3)
        fits["complex"].append(t_complex / n**3)
        lines.append(f"| {n} | {t_real:.3f} s | {t_complex:.3f} s | {t_lanczos:.4f} s |")
    # The largest size is the least dominated by overheads: use it for the constant.
    return lines, {k: v[-1] for k, v in fits.items()}


@eqx.filter_jit
def solver_steps(field, t1):
    """Tsit5 steps (accepted and rejected) over [0, t1] at the library's default
    tolerances: each costs 6 field evaluations (7 stages, first same as last)."""
    rtol, atol = default_tolerances(field.problem.w0.dtype)
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), 0.0, t1, None, field.initial_state(),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=int(200 * t1), throw=False,
    )
    return solution.stats["num_steps"]


def gd_step_seconds(problem, rule, steps=200) -> float:
    jax.block_until_ready(run_discrete(problem, rule, steps))
    start = time.perf_counter()
    jax.block_until_ready(run_discrete(problem, rule, steps))
    return (time.perf_counter() - start) / steps


@eqx.filter_jit
def dense_evaluation(problem, lr, y):
    """The dense path's evaluation at state ``y`` (the Hessian at the complex state from n
    HVPs, then ``eigh`` of its real part while the imaginary part is zero), called
    directly: ``path="dense"`` refuses models above `DENSE_MAX_PARAMS` parameters."""
    return lr * dense_direction(problem.flat_loss, y[0], lr)


def dense_measured(widths, steps) -> list[str]:
    """One dense real-state evaluation at the size of `cost`, measured (minutes)."""
    problem = network(widths)
    n = problem.num_params
    lr = learning_rate(problem, 0.8)
    rule = GD(lr=jnp.asarray(lr))
    gd = gd_step_seconds(problem, rule)
    field = PrincipalFlow(problem=problem, rule=rule, path="lanczos")
    y = field.initial_state()
    compiled = dense_evaluation.lower(problem, jnp.asarray(lr), y).compile()
    start = time.perf_counter()
    jax.block_until_ready(compiled(problem, jnp.asarray(lr), y))
    seconds = time.perf_counter() - start
    evals_per_unit = (6 * int(solver_steps(field, float(steps))) + 1) / steps
    return [
        f"### Dense path measured, MLP 16-{'-'.join(map(str, widths))}-1 ({n} parameters), "
        "real state",
        "",
        "| | seconds | × GD step |",
        "|---|---|---|",
        f"| GD, one step | {gd:.2e} | 1 |",
        f"| dense path, one evaluation, real state (measured once) | {seconds:.2e} | "
        f"{seconds / gd:.2e} |",
        f"| principal flow (dense, real), one unit of step time ({evals_per_unit:.1f} "
        f"evaluations) | {evals_per_unit * seconds:.2e} | {evals_per_unit * seconds / gd:.2e} |",
    ]


def cost(widths, steps, cubic) -> list[str]:
    problem = network(widths)
    n = problem.num_params
    lr = learning_rate(problem, 0.8)
    rule = GD(lr=jnp.asarray(lr))
    gd = gd_step_seconds(problem, rule)

    field = PrincipalFlow(problem=problem, rule=rule, path="lanczos")
    per_eval = timed(evaluate, field, field.initial_state())
    compiled = run_flow.lower(field, steps, max_steps=200 * steps).compile()
    start = time.perf_counter()
    run = jax.block_until_ready(compiled(field, steps, max_steps=200 * steps))
    per_unit = (time.perf_counter() - start) / steps
    evals_per_unit = (6 * int(solver_steps(field, float(steps))) + 1) / steps
    dense_eval = {k: c * n**3 for k, c in cubic.items()}
    return [
        f"### Cost, MLP 16-{'-'.join(map(str, widths))}-1 ({n} parameters), "
        f"ηλ_max(w₀) = 0.8 (real state), {steps} units of step time",
        "",
        "| | seconds | × GD step |",
        "|---|---|---|",
        f"| GD, one step | {gd:.2e} | 1 |",
        f"| Lanczos path, one evaluation of φ(ηH)g | {per_eval:.2e} | {per_eval / gd:.0f} |",
        f"| principal flow (Lanczos), one unit of step time | {per_unit:.2e} | "
        f"{per_unit / gd:.0f} |",
        f"| dense path, one evaluation, real state (extrapolated c·n³) | "
        f"{dense_eval['real']:.2e} | {dense_eval['real'] / gd:.0f} |",
        f"| dense path, one evaluation, complex state (extrapolated c·n³) | "
        f"{dense_eval['complex']:.2e} | {dense_eval['complex'] / gd:.0f} |",
        f"| principal flow (dense, real), one unit of step time (extrapolated, "
        f"{evals_per_unit:.0f} evaluations) | {evals_per_unit * dense_eval['real']:.2e} | "
        f"{evals_per_unit * dense_eval['real'] / gd:.0f} |",
        "",
        f"Field evaluations per unit of step time (adaptive Tsit5, counted from the solver's "
        f"steps): {evals_per_unit:.1f}, i.e. {per_unit / evals_per_unit:.2e} s each "
        f"in the solve; status {int(run['status_code'])}.",
    ]


def large(widths, steps) -> list[str]:
    problem = network(widths)
    n = problem.num_params
    rule = GD(lr=jnp.asarray(learning_rate(problem, 0.8)))
    try:
        PrincipalFlow(problem=problem, rule=rule, path="dense")
        refused = f"no ({n} ≤ {DENSE_MAX_PARAMS} parameters)"
    except ValueError as error:
        refused = f"yes: {error}"
    field = PrincipalFlow(problem=problem, rule=rule)
    start = time.perf_counter()
    integrator = flows.Integrator(max_steps=200 * steps)
    run = jax.block_until_ready(run_flow(field, steps, integrator=integrator))
    seconds = time.perf_counter() - start
    finite = bool(np.all(np.isfinite(np.asarray(run["params"]))))
    return [
        f"### MLP 16-{'-'.join(map(str, widths))}-1 ({n} parameters), ηλ_max(w₀) = 0.8",
        "",
        f"- path='auto' resolves to {field.resolved_path!r}; {steps} units of step time in "
        f"{seconds:.0f} s (incl. compilation), status {int(run['status_code'])}, loss "
        f"{float(run['loss'][0]):.4f} → {float(run['loss'][-1]):.4f}, all saved parameters "
        f"finite: {finite}, max ‖Im w‖_∞ {float(np.max(run['extras']['max_imag'])):.1e}",
        f"- path='dense' refused: {refused}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/principal_flow_cost"))
    parser.add_argument("--quick", action="store_true", help="small models, few steps")
    parser.add_argument(
        "--parts", nargs="+", default=["agreement", "scaling", "cost", "large"],
        choices=["agreement", "scaling", "cost", "large", "dense"],
        help="sections to run ('cost' also runs 'scaling', whose c·n³ fit it extrapolates; "
        "'dense', not in the default, times one dense evaluation at the size of 'cost')",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.quick:
        plan = [
            lambda: agreement([([8, 8], 0.4, 0), ([8, 8], 1.5, 100)], 10),
            lambda: dense_scaling([[8, 8], [16, 12]]),
            lambda cubic: cost([32, 16], 2, cubic),
            lambda: large([64, 32], 1),
            lambda: dense_measured([32, 16], 2),
        ]
    else:
        plan = [
            lambda: agreement([([64, 16], 0.4, 0), ([8, 8], 1.5, 100)], 50),
            lambda: dense_scaling([[8, 8], [16, 12], [32, 16], [64, 16]]),
            lambda cubic: cost([128, 64], 5, cubic),
            lambda: large([256, 192], 2),
            lambda: dense_measured([128, 64], 5),
        ]
    lines: list[str] = []

    def report(new_lines):
        lines.extend(new_lines + [""])
        print("\n".join(new_lines) + f"\n({time.perf_counter() - start:.0f} s)\n", flush=True)
        (args.out / "table.md").write_text("\n".join(lines) + "\n")

    if "agreement" in args.parts:
        report(plan[0]())
    if "scaling" in args.parts or "cost" in args.parts:
        scaling, cubic = plan[1]()
        report(["### Seconds per evaluation of the vector field", ""] + scaling)
    if "cost" in args.parts:
        report(plan[2](cubic))
    if "large" in args.parts:
        report(plan[3]())
    if "dense" in args.parts:
        report(plan[4]())
    (args.out / "table.md").write_text(
        "\n".join(lines) + f"({time.perf_counter() - start:.0f} s in all)\n"
    )


if __name__ == "__main__":
    main()
