"""Time alignment of the RMSProp stable flows with the discrete optimizer.

The stable flow of (scalar) RMSProp is

    dw/dτ = −η g / (√ν̂ + ε),    dν/dτ = c (g ⊙ g − ν),

and three choices fix how ν(τ) lines up with the discrete ν_k: the rate c
(``(1−β₂)/β₂``, ``−log β₂`` or ``1−β₂``), which discrete ν the flow's ν(τ) models
(ν_τ or ν_{τ−½}, the *lag*, which also sets the flow's initial state and the
bias-correction count), and the discrete initial state ν_{−1} (g₀ ⊙ g₀ by default, or
zeros with or without bias correction). For each variant this script measures the
distance between the discrete run and its stable flow, relative to the distance the
discrete run travels, over ``--steps`` steps at a learning rate set so that the
largest effective sharpness ``λ_max(P⁻¹H)`` along the run is ``--sharpness`` (below
the edge, 2). It compares it with gradient flow vs GD at the same largest and at the
same mean effective sharpness, and does the same for the first-order modified flow
(`flows.ModifiedFlow`, which removes the O(η) error of gradient flow: what remains of
a misaligned ν shows there). It also reports the relative error of ν along the flow
against the discrete ν it models. Diagonal RMSProp uses ε = 0.1 · median |∂L/∂w_i(w₀)|
(else a coordinate whose initial gradient is near zero sets the effective sharpness,
hence η, alone).

    python benchmarks/rmsprop_alignment.py [--quick] [--problems P,...] [--out DIR]

Problems: a 4-8-2 tanh MLP on synthetic data, `reference_mlp()` and the digits MLP of
``rmsprop_central_flow.py`` (``--quick``: the tanh MLP, β₂ = 0.9, g₀², 60 steps).

writes ``alignment.csv``, ``alignment.md``, ``distance.png`` and ``nu_error.png`` to
``--out`` (default ``runs/rmsprop_alignment/``).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from flows.integrate import run_discrete, run_flow
from flows.linalg.eigen import DenseEigh, Lanczos, top_eigenpairs
from flows.linalg.hvp import gradient
from flows.optimizers import GD, RMSProp, ScalarRMSProp
from flows.problems import digits, mlp, reference_mlp, synthetic_regression
from flows.vector_fields import GradientFlow, ModifiedFlow

RATES = {
    "(1-b)/b": lambda beta2: (1 - beta2) / beta2,
    "-log b": lambda beta2: -math.log(beta2),
    "1-b": lambda beta2: 1 - beta2,
}


class _Aligned(eqx.Module):
    """Mixin: the flow's ν(τ) models ν_{τ−lag} and relaxes at ``rate`` (arrays, so that
    the variants share one compiled flow)."""

    rate: Array = eqx.field(default=1.0, converter=jnp.asarray)
    lag: Array = eqx.field(default=0.0, converter=jnp.asarray)

    def derivative(self, t, state, f, w, g, grad_sq=None):
        grad_sq = g * g if grad_sq is None else grad_sq
        dnu = self.rate * (self._second_moment(grad_sq) - state)
        return self._p_inv(state, t + 1 - self.lag), dnu

    def initial_flow_state(self, f, w, state):
        # ν_{k−lag}: the recursion from ν_{k−1} (`init` at the start) with the forcing
        # g_k ⊙ g_k frozen.
        forcing = self._second_moment(gradient(f)(w) ** 2)
        return forcing + (state - forcing) * self.beta2 ** (1 - self.lag)


class AlignedScalarRMSProp(_Aligned, ScalarRMSProp):
    pass


class AlignedRMSProp(_Aligned, RMSProp):
    pass


# (name, rate, lag): the flow's ν(τ) models ν_{τ−lag} and relaxes at this rate. A flow
# that models ν_{τ−1} (the step taken before the ν update) starts from ν_{−1}: it is the
# "nu_k, 1-b" row for the default ν_{−1} = g₀ ⊙ g₀, and has P⁻¹ = ∞ from zeros.
VARIANTS = [
    ("nu_k, (1-b)/b", "(1-b)/b", 0.0),
    ("nu_k, -log b", "-log b", 0.0),
    ("nu_k, 1-b", "1-b", 0.0),
]
# The library's own flow: ν(τ) models ν_{τ−½}, rate −log β₂, ν(0) = ν_{−½}.
LIBRARY = "nu_(k-1/2), -log b (flows)"

# Discrete initial states: ν_{−1} and bias correction.
INITS = {
    "g0^2": dict(initial_nu=None, bias_correction=False),
    "zeros+bc": dict(initial_nu=0.0, bias_correction=True),
    "zeros": dict(initial_nu=0.0, bias_correction=False),
}


def small_tanh_mlp():
    data = synthetic_regression(n=32, d_in=4, d_out=2, seed=1)
    return mlp(data, [8], activation="tanh", loss="mse", seed=1)


PROBLEMS = {
    "tanh_mlp": small_tanh_mlp,
    "reference_mlp": reference_mlp,
    # The digits MLP of rmsprop_central_flow.py.
    "digits_mlp": lambda: mlp(
        digits(n=100, standardize=False), [32], activation="tanh", loss="mse"
    ),
}


@eqx.filter_jit
def effective_sharpness(problem, rule, params, nus, every: int):
    """``λ_max(p^{½} H p^{½})`` with p = P⁻¹ of the discrete step, at every ``every``-th row
    (dense below 100 parameters, Lanczos above)."""
    f = problem.flat_loss
    ks = jnp.arange(0, params.shape[0], every)
    eigensolver = DenseEigh() if params.shape[1] <= 100 else Lanczos(num_matvecs=30)

    def one(k, w, nu):
        p = rule.lr if nu is None else rule.step_p_inv(k, nu, f, w, jnp.zeros_like(w))
        return top_eigenpairs(f, w, 1, eigensolver=eigensolver, p_inv=p).values[0]

    if nus is None:  # GD
        return jax.vmap(lambda k, w: one(k, w, None))(ks, params[ks])
    return jax.vmap(one)(ks, params[ks], nus[ks])


@eqx.filter_jit
def _discrete(problem, rule, steps):
    return run_discrete(problem, rule, steps)


@eqx.filter_jit
def _flow(field, steps):
    return run_flow(field, steps)


def sharpness_along(problem, rule, steps, every):
    run = _discrete(problem, rule, steps)
    return np.asarray(
        effective_sharpness(problem, rule, run["params"], run["extras"].get("nu"), every)
    )


def tune_lr(problem, make_rule, target, steps, lr, every, statistic=np.max, iterations=20):
    """A learning rate whose discrete run has ``statistic``(effective sharpness) = ``target``:
    bracket by doubling or halving, then bisect in log lr (it can jump steeply with lr)."""
    value = statistic(sharpness_along(problem, make_rule(lr), steps, every))
    low = high = None
    for _ in range(iterations):
        if abs(value / target - 1) < 0.01:
            break
        if value < target:
            low = lr
        else:
            high = lr
        lr = math.sqrt(low * high) if low and high else (lr * 2 if high is None else lr / 2)
        value = statistic(sharpness_along(problem, make_rule(lr), steps, every))
    return lr


def relative_distance(a, b, w0):
    """‖a_k − b_k‖ / ‖a_K − w₀‖ over k."""
    gap = np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1)
    return gap / np.linalg.norm(np.asarray(a)[-1] - np.asarray(w0))


def nu_error(nu_disc, nu_flow, nu_before, lag=0.0):
    """Relative error of ν along the flow against the discrete ν_{k−lag} (linear
    interpolation between ν_{k−1} and ν_k; ν_{−1} is ``nu_before``), for k ≥ 1."""
    nu_disc, nu_flow = np.asarray(nu_disc), np.asarray(nu_flow)
    previous = np.concatenate([np.asarray(nu_before)[None], nu_disc[:-1]])
    target = (1 - lag) * nu_disc + lag * previous
    if nu_disc.ndim == 1:
        return (np.abs(nu_flow - target) / target)[1:]
    return (np.linalg.norm(nu_flow - target, axis=1) / np.linalg.norm(target, axis=1))[1:]


def gd_reference(problem, target, statistic, steps, every, lr=0.1):
    """Gradient flow and the modified flow vs GD, at the GD learning rate whose
    ``statistic`` of ``η S(w_k)`` is ``target`` (searched from ``lr``)."""
    lr = tune_lr(problem, lambda lr: GD(lr=jnp.asarray(lr)), target, steps, lr, every, statistic)
    rule = GD(lr=jnp.asarray(lr))
    gd = _discrete(problem, rule, steps)["params"]
    stable, modified = (
        relative_distance(gd, _flow(field(problem, rule), steps)["params"], problem.w0)
        for field in (GradientFlow, ModifiedFlow)
    )
    return lr, stable, modified


def main():
    jax.config.update("jax_enable_x64", True)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small case, 60 steps")
    parser.add_argument("--out", default="runs/rmsprop_alignment")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sharpness", type=float, default=1.0)
    parser.add_argument(
        "--problems", default=",".join(PROBLEMS), help=f"comma-separated, from {sorted(PROBLEMS)}"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps or (60 if args.quick else 300)
    every = 5  # steps between effective-sharpness evaluations
    names = ["tanh_mlp"] if args.quick else args.problems.split(",")
    unknown = sorted(set(names) - set(PROBLEMS))
    if unknown:
        parser.error(f"unknown problem(s) {unknown}; choose from {sorted(PROBLEMS)}")
    problems = {name: PROBLEMS[name] for name in names}
    betas = [0.9] if args.quick else [0.9, 0.99]
    optimizers = {
        "scalar_rmsprop": (AlignedScalarRMSProp, ScalarRMSProp),
        "rmsprop": (AlignedRMSProp, RMSProp),
    }
    inits = ["g0^2"] if args.quick else list(INITS)

    rows, distances, nu_errors = [], {}, {}
    start = time.perf_counter()

    def add_row(config, lr, peak, mean, variant, stable, modified, nu=None, nu_k=None, gd=None):
        row = dict(zip(["problem", "optimizer", "beta2", "init"], config))
        row.update(
            eps=f"{eps:.2g}" if config[1] == "rmsprop" else "0",
            lr=f"{lr:.4g}",
            peak_sharpness=f"{peak:.3f}",
            mean_sharpness=f"{mean:.3f}",
            variant=variant,
            stable_final=f"{stable[-1]:.5g}",
            stable_worst=f"{stable.max():.5g}",
            over_gd_peak="",
            over_gd_mean="",
            modified_final=f"{modified[-1]:.5g}",
            nu_err_max="",
            nu_err_final="",
            nu_k_err_max="",
        )
        if gd is not None:
            row.update(
                over_gd_peak=f"{stable[-1] / gd[0][-1]:.2f}",
                over_gd_mean=f"{stable[-1] / gd[1][-1]:.2f}",
            )
        if nu is not None:
            row.update(
                nu_err_max=f"{nu.max():.4f}",
                nu_err_final=f"{nu[-1]:.4f}",
                nu_k_err_max=f"{nu_k.max():.4f}",
            )
        rows.append(row)
        print(" | ".join(str(v) for v in row.values()), flush=True)

    for pname, build in problems.items():
        problem = build()
        w0 = problem.w0
        gd_cache, gd_lrs = {}, {}
        # Diagonal RMSProp: ε = 0.1 · median |∂L/∂w_i(w₀)|, so that coordinates whose
        # gradient is near zero do not set the effective sharpness (and η) alone.
        eps = 0.1 * float(jnp.median(jnp.abs(gradient(problem.flat_loss)(w0))))
        for oname, (cls, library_cls) in optimizers.items():
            for beta2 in betas:
                for iname in inits:
                    config = (pname, oname, beta2, iname)
                    options = dict(
                        beta2=beta2, eps=eps if oname == "rmsprop" else 0.0, **INITS[iname]
                    )

                    def make(lr, rate="(1-b)/b", lag=0.0, cls=cls, options=options):
                        rate = RATES[rate](options["beta2"])
                        return cls(lr=jnp.asarray(lr), rate=rate, lag=lag, **options)

                    lr = tune_lr(problem, make, args.sharpness, steps, 0.01, every)
                    sharp = sharpness_along(problem, make(lr), steps, every)
                    peak, mean = float(sharp.max()), float(sharp.mean())
                    gd = []
                    for name, target, statistic in [
                        ("GD vs gradient flow, same peak", peak, np.max),
                        ("GD vs gradient flow, same mean", mean, np.mean),
                    ]:
                        key = (name, round(target, 2))
                        if key not in gd_cache:
                            gd_cache[key] = gd_reference(
                                problem, target, statistic, steps, every, gd_lrs.get(name, 0.1)
                            )
                        gd_lr, stable, modified = gd_cache[key]
                        gd_lrs[name] = gd_lr
                        gd.append(stable)
                        distances[config + (name,)] = stable
                        add_row(config, gd_lr, peak, mean, name, stable, modified)

                    disc = _discrete(problem, make(lr), steps)
                    nu_disc = disc["extras"]["nu"]
                    nu_before = make(lr).init(problem.flat_loss, w0)
                    library = library_cls(lr=jnp.asarray(lr), **options)
                    rules = [(name, make(lr, rate, lag), lag) for name, rate, lag in VARIANTS]
                    rules.append((LIBRARY, library, 0.5))
                    for vname, rule, lag in rules:
                        flow = _flow(GradientFlow(problem, rule), steps)
                        stable = relative_distance(disc["params"], flow["params"], w0)
                        modified = relative_distance(
                            disc["params"], _flow(ModifiedFlow(problem, rule), steps)["params"], w0
                        )
                        nu_flow = flow["extras"]["nu"]
                        nu = nu_error(nu_disc, nu_flow, nu_before, lag)
                        nu_k = nu_error(nu_disc, nu_flow, nu_before)
                        distances[config + (vname,)] = stable
                        nu_errors[config + (vname,)] = nu
                        add_row(config, lr, peak, mean, vname, stable, modified, nu, nu_k, gd)
                    write_tables(rows, out, f"{steps} steps, {time.perf_counter() - start:.0f} s")
    elapsed = time.perf_counter() - start
    plot(distances, out / "distance.png", "‖w_disc − w_flow‖ / ‖w_disc,K − w₀‖")
    plot(nu_errors, out / "nu_error.png", "relative error of ν")
    print(f"wrote {out}/alignment.csv, alignment.md, distance.png, nu_error.png ({elapsed:.0f} s)")


def write_tables(rows, out, note):
    """The rows so far as CSV and as a markdown table (rewritten after every case)."""
    with open(out / "alignment.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(out / "alignment.md", "w") as file:
        file.write("| " + " | ".join(rows[0]) + " |\n")
        file.write("|" + "---|" * len(rows[0]) + "\n")
        for row in rows:
            file.write("| " + " | ".join(str(v) for v in row.values()) + " |\n")
        file.write(f"\n{note}\n")


def plot(curves, path, ylabel):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({key[:-1] for key in curves}, key=str)
    columns = min(3, len(configs))
    rows = math.ceil(len(configs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.2 * rows), squeeze=False)
    for ax, config in zip(axes.flat, configs):
        for key, curve in curves.items():
            if key[:-1] == config:
                ax.plot(curve, "--" if key[-1].startswith("GD") else "-", label=key[-1])
        ax.set_title(" ".join(str(c) for c in config), fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel, fontsize=7)
    for ax in list(axes.flat)[len(configs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
