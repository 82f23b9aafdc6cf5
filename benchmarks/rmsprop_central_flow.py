"""The central flows of scalar RMSProp and RMSProp against the discrete optimizers.

Central flow of a preconditioned rule (Cohen, Damian, Talwalkar, Kolter and Lee, ICLR 2025,
section on RMSProp), ``simulate(problem, "central_flow", optimizer="scalar_rmsprop" |
"rmsprop", ...)``: the generic `flows.CentralFlow` with the rule's P⁻¹ = η/(√ν + ε) and
dν/dτ = −log β₂ (E[g ⊙ g] − ν), where E[g ⊙ g] = g ⊙ g + (4ν/η²) ⊙ diag Σ (‖g‖² + σ²S² for
scalar RMSProp) and ν(τ) models the discrete ν_{τ−½} (benchmarks/README.md, "RMSProp flows:
time alignment"). β₂ = 0.99, ν_{−1} = g₀ ⊙ g₀ (the default), no bias correction, float64,
integrated by the default `CentralFlowSolver` (RK4, one step per optimizer step), 5 tracked
eigenvalues. Each case's η is one where the effective sharpness λ_max(P⁻¹H) of the discrete
run rises from well below 2 and reaches 2 by progressive sharpening, after a few hundred
steps (no catapult at the start).

Cases (1000 steps each): `reference_mlp()` (the published instance, 433 parameters) and a 64-32-10
tanh MLP on 100 digits (pixels in [0, 1], ½‖f − y‖², 2,410 parameters), each with scalar
RMSProp and with diagonal RMSProp (ε > 0: the digits have dead pixels whose ν stays 0).

Per case:

- the effective sharpness along the central flow: its own report (`effective_eigenvalues`)
  and, independently, the top eigenvalue of P⁻¹(τ)H at its saved points every 10 steps
  (`flows.eigen_tracking.track` with the flow's P⁻¹ series); the largest |μ − 2| / 2 after
  the edge (the first step where Σ ≠ 0);
- ‖w_disc − w_CF‖ / ‖w_disc − w₀‖ at the end and its maximum after the edge, against the
  discrete run in float32 (as the reference implementations and the GD benchmark run it:
  its rounding noise starts the oscillation soon after the edge) and in float64 (where the
  oscillation grows from 1e-16, so the run first overshoots the edge along the stable flow;
  also the maximum from 100 steps after the edge on); the stable flow (``"gradient_flow"``
  with the same optimizer) at the end, and the step from which the central flow stays closer
  to the run than the stable flow;
- ν along the flow against the discrete ν: ‖ν(k) − ν̄_k‖ / ‖ν̄_k‖ with ν̄_k = ½(ν_{k−1} + ν_k)
  (the discrete ν the flow's ν(k) models), and the same between the time averages of both
  (each Gaussian-smoothed with σ = 50 steps, per coordinate: the discrete ν comes in bursts
  at the edge, the flow models its average); median and max after the edge;
- the predicted time-averaged loss ``L + ½⟨Σ, H⟩`` against the discrete loss smoothed by a
  Gaussian of σ = 50 steps: median relative error after the edge (and ≥ 2σ); also with the
  prediction smoothed alike (which cancels the smoothing's own bias on a curved loss);
- cost: run time of the 1000 steps (compilation separate) against the GD central flow on the
  same problem and the same number of steps, in the same process (GD at η = 0.1 on both: on
  the reference MLP it reaches the edge by progressive sharpening at step 347; on the digits
  MLP GD does not sharpen — at η ≤ 0.08 it never reaches the edge — so η = 0.1 is at the edge
  from the start, with 2 eigenvalues there), and against the discrete run.

Outputs (``--out``, default ``runs/rmsprop_central_flow/``): ``results.json``, ``table.md`` and
``<case>.png`` (loss raw/smoothed/central flow/prediction/stable flow; effective sharpness of
the discrete run (midpoints) and of the central flow against 2; distances disc–CF (float32
and float64 runs) and disc–stable flow; ν's relative error).

Run: ``python benchmarks/rmsprop_central_flow.py [--quick] [--out DIR]`` (``--quick``: the
scalar reference case, 500 steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import flows  # noqa: E402
from flows.diagnostics import first_at_edge, gaussian_smooth, relative_distance  # noqa: E402
from flows.eigen_tracking import p_inv_series, track  # noqa: E402
from flows.problems import digits, mlp, reference_mlp  # noqa: E402

SIGMA = 50
BETA2 = 0.99
EVERY = 10  # eigenvalue tracking interval (steps)


def digits_mlp():
    return mlp(digits(n=100, standardize=False), [32], activation="tanh", loss="mse")


# name: (problem factory, optimizer, η, options, GD central flow's η)
CASES = {
    "reference, scalar": (reference_mlp, "scalar_rmsprop", 0.02, {}, 0.1),
    "reference, diagonal": (reference_mlp, "rmsprop", 0.001, {"eps": 5e-4}, 0.1),
    "digits, scalar": (digits_mlp, "scalar_rmsprop", 0.04, {}, 0.1),
    "digits, diagonal": (digits_mlp, "rmsprop", 0.001, {"eps": 1e-3}, 0.1),
}


def smooth_columns(series: np.ndarray) -> np.ndarray:
    """`gaussian_smooth` along the steps of a (T,) or (T, n) series."""
    series = jnp.asarray(series).reshape(series.shape[0], -1)
    smoothed = jax.vmap(lambda column: gaussian_smooth(column, SIGMA), in_axes=1, out_axes=1)
    return np.asarray(smoothed(series))


def nu_error(nu_flow: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """‖ν_flow(k) − ν_ref(k)‖ / ‖ν_ref(k)‖ per step."""
    a = np.asarray(nu_flow).reshape(len(nu_flow), -1)
    b = np.asarray(reference).reshape(len(reference), -1)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def midpoint_nu(nu: np.ndarray) -> np.ndarray:
    """½(ν_{k−1} + ν_k) (ν_0 at k = 0): the discrete ν that the flow's ν(k) models."""
    nu = np.asarray(nu)
    return 0.5 * (nu + np.concatenate([nu[:1], nu[:-1]]))


def distances(params, reference, edge):
    rel = np.asarray(relative_distance(np.asarray(params), np.asarray(reference, np.float64)))
    later = min(edge + 100, len(rel) - 1)
    return rel, {
        "final": float(rel[-1]),
        "max_after_edge": float(np.nanmax(rel[edge:])),
        "argmax_after_edge": int(edge + np.nanargmax(rel[edge:])),
        "max_from_edge_plus_100": float(np.nanmax(rel[later:])),
    }


def closer_from(rel_cf, rel_sf, edge) -> int:
    """The first step after the edge from which the central flow stays closer to the run
    than the stable flow (the two flows coincide at the edge and part slowly)."""
    farther = np.nonzero(rel_cf[edge + 1 :] >= rel_sf[edge + 1 :])[0]
    return int(edge + 1 + (farther[-1] + 1 if farther.size else 0))


def run_case(name, make_problem, optimizer, lr, options, gd_lr, steps, out):
    problem = make_problem()
    print(f"== {name}: {problem.num_params} parameters, {optimizer}, η = {lr}, {options}",
          flush=True)
    common = dict(lr=lr, steps=steps, beta2=BETA2, **options)
    disc = flows.simulate(
        problem, optimizer, tracking=flows.Tracking(1, every=EVERY, midpoint=True, effective=True),
        **common,
    )
    stable = flows.simulate(problem, "gradient_flow", optimizer=optimizer, **common)
    cf = flows.simulate(problem, "central_flow", optimizer=optimizer, num_eigenvalues=5, **common)
    gd_cf = flows.simulate(problem, "central_flow", lr=gd_lr, steps=steps, num_eigenvalues=5)
    # The discrete run's time without its midpoint eigensolves (``tracking``).
    plain = flows.simulate(problem, optimizer, **common)
    extras = {k: np.asarray(v) for k, v in cf.extras.items()}
    edge = first_at_edge(extras["sigma_trace"])
    if edge < 0:
        raise RuntimeError(f"{name}: the central flow never reached the edge")
    print(f"   central flow {cf.status}, edge at step {edge}; run {cf.wall_time:.2f} s "
          f"(compile {cf.compile_time:.1f} s); GD CF {gd_cf.wall_time:.2f} s", flush=True)

    # Effective sharpness: the flow's report and an independent eigensolve at its points.
    mu = extras["effective_eigenvalues"]
    rule = flows.make_method(problem, optimizer, lr, options={"beta2": BETA2, **options})
    p_inv = p_inv_series(problem, rule, cf.steps, cf.params, cf.extras, discrete=False)
    check = track(problem, cf.params, 1, steps=cf.steps, every=EVERY, p_inv=p_inv)
    check_steps, check_mu = np.asarray(check.steps), np.asarray(check.values[:, 0])
    after = check_steps >= edge + 1
    sharpness = {
        "max_rel_deviation_report": float(np.max(np.abs(mu[edge + 1 :, 0] - 2)) / 2),
        "max_rel_deviation_eigensolve": float(np.max(np.abs(check_mu[after] - 2)) / 2),
        "max_at_edge": int(np.max(extras["num_at_edge"])),
    }

    rel_cf, cf_dist = distances(cf.params, disc.params, edge)
    rel_sf, sf_dist = distances(stable.params, disc.params, edge)
    result = {
        "parameters": problem.num_params, "optimizer": optimizer, "lr": lr,
        "options": options, "steps": steps, "status": cf.status, "edge_step": edge,
        "sharpness": sharpness, "cf_vs_disc": cf_dist, "stable_vs_disc": sf_dist,
    }
    # The run in float32, as the reference implementations run it: its rounding noise
    # starts the oscillation soon after the edge, where the float64 run first overshoots the
    # edge along the stable flow until an oscillation grown from 1e-16 catapults it back.
    disc32 = flows.simulate(problem.astype(jnp.float32), optimizer, **common)
    rel_cf32, result["cf_vs_disc32"] = distances(cf.params, disc32.params, edge)
    rel_sf32, result["stable_vs_disc32"] = distances(stable.params, disc32.params, edge)
    result["cf_closer_from"] = {
        "float32": closer_from(rel_cf32, rel_sf32, edge),
        "float64": closer_from(rel_cf, rel_sf, edge),
    }

    # ν: against the midpoint of the discrete ν and against its Gaussian smoothing.
    nu_disc = np.asarray(disc.extras["nu"])
    err_mid = nu_error(extras["nu"], midpoint_nu(nu_disc))
    err_smooth = nu_error(smooth_columns(extras["nu"]), smooth_columns(midpoint_nu(nu_disc)))
    err_stable = nu_error(np.asarray(stable.extras["nu"]), midpoint_nu(nu_disc))
    window = np.arange(max(edge, 2 * SIGMA), steps + 1)
    before = np.arange(1, edge)
    result["nu"] = {
        "before_edge_max": float(np.max(err_mid[before])) if edge > 1 else float("nan"),
        "midpoint_median": float(np.median(err_mid[edge:])),
        "midpoint_max": float(np.max(err_mid[edge:])),
        "smoothed_median": float(np.median(err_smooth[window])),
        "smoothed_max": float(np.max(err_smooth[window])),
        "stable_midpoint_final": float(err_stable[-1]),
    }

    smooth_loss = np.asarray(gaussian_smooth(np.asarray(disc.loss, np.float64), SIGMA))
    loss_error = np.abs(extras["predicted_loss"] - smooth_loss) / smooth_loss
    cf_loss_error = np.abs(np.asarray(cf.loss) - smooth_loss) / smooth_loss
    # Smoothing a curved loss biases it (by ≈ σ²L''/2, a few % here); smoothing the
    # prediction too cancels that bias to first order.
    smooth_prediction = np.asarray(gaussian_smooth(jnp.asarray(extras["predicted_loss"]), SIGMA))
    both_error = np.abs(smooth_prediction - smooth_loss) / smooth_loss
    result["predicted_loss_median_error"] = float(np.median(loss_error[window]))
    result["predicted_loss_both_smoothed_median_error"] = float(np.median(both_error[window]))
    result["cf_loss_median_error"] = float(np.median(cf_loss_error[window]))
    result["timing"] = {
        "cf_run_s": cf.wall_time, "cf_compile_s": cf.compile_time,
        "gd_cf_run_s": gd_cf.wall_time, "gd_cf_lr": gd_lr,
        "gd_cf_max_at_edge": int(np.max(np.asarray(gd_cf.extras["num_at_edge"]))),
        "gd_cf_edge_step": first_at_edge(np.asarray(gd_cf.extras["sigma_trace"])),
        "disc_run_s": plain.wall_time,
        "ratio_to_gd_cf": cf.wall_time / gd_cf.wall_time,
        "ratio_to_disc": cf.wall_time / plain.wall_time,
    }
    plot(out / f"{name.replace(', ', '_')}.png", name, disc, stable, cf, edge, smooth_loss,
         (check_steps, check_mu), (rel_cf32, rel_cf, rel_sf), (err_mid, err_smooth, err_stable))
    print("   " + json.dumps({k: v for k, v in result.items() if k not in ("options",)}),
          flush=True)
    return result


def plot(path, title, disc, stable, cf, edge, smooth_loss, check, rel, nu_errors):
    steps = np.asarray(disc.steps)
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2), constrained_layout=True)
    ax = axes[0]
    ax.plot(steps, disc.loss, c="C0", alpha=0.25, label="discrete")
    ax.plot(steps[2 * SIGMA :], smooth_loss[2 * SIGMA :], c="C0", lw=3,
            label=f"discrete (smoothed, σ={SIGMA})")
    ax.plot(steps, stable.loss, c="r", ls="--", label="stable flow")
    ax.plot(steps, cf.loss, c="k", label="central flow")
    ax.plot(steps, cf.extras["predicted_loss"], c="k", ls="--", label="CF prediction L + ½⟨Σ,H⟩")
    ax.set_ylim(0, float(np.max(smooth_loss[edge:])) * 2)
    ax.set_title(f"{title}: loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    eig = np.asarray(disc.eigenvalues[:, 0])
    ok = ~np.isnan(eig)
    ax.plot(steps[ok], eig[ok], c="C0", alpha=0.6, label="discrete (midpoints)")
    ax.plot(steps, cf.extras["effective_eigenvalues"], c="k", lw=1)
    ax.plot([], [], c="k", label="central flow (top 5)")
    ax.plot(*check, "k.", ms=3, label="central flow, eigensolve")
    ax.axhline(2, c="gray", ls=":", label="2")
    ax.set_title("effective sharpness λ(P⁻¹H)")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(steps, rel[0], c="k", label="‖w_disc − w_CF‖ / ‖w_disc − w₀‖, float32 run")
    ax.plot(steps, rel[1], c="C1", label="… float64 run")
    ax.plot(steps, rel[2], c="r", ls="--", label="‖w_disc − w_SF‖ / ‖w_disc − w₀‖")
    ax.axvline(edge, c="gray", ls=":", label="edge (CF)")
    ax.axhline(0.05, c="gray", lw=0.5)
    ax.set_yscale("log")
    ax.set_title("distance to the discrete run")
    ax.legend(fontsize=8)
    ax = axes[3]
    ax.plot(steps[1:], nu_errors[0][1:], c="k", label="CF vs ½(ν_{k−1}+ν_k)")
    ax.plot(steps[1:], nu_errors[1][1:], c="C2", label=f"both smoothed (σ={SIGMA})")
    ax.plot(steps[1:], nu_errors[2][1:], c="r", ls="--", label="stable flow vs ½(ν_{k−1}+ν_k)")
    ax.axvline(edge, c="gray", ls=":")
    ax.set_yscale("log")
    ax.set_title("ν: relative error")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results) -> str:
    lines = [
        "| case | η | edge step | max \\|μ−2\\|/2 after edge (report / eigensolve) | "
        "CF vs float32 run: max after edge (step) / final | stable flow final (float32) | "
        "CF closer than stable flow from step (float32 / float64 run) | "
        "CF vs float64 run: max after edge (step) / from edge+100 / final | "
        "ν err. vs ½(ν_{k−1}+ν_k): before edge max, after: median / max | "
        "ν err., both smoothed: median / max | "
        "pred. loss median err (vs smoothed / both smoothed) | eigenvalues at edge |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s, c, c32, n = r["sharpness"], r["cf_vs_disc"], r["cf_vs_disc32"], r["nu"]
        eps = f", ε={r['options']['eps']:g}" if "eps" in r["options"] else ""
        lines.append(
            f"| {name} | {r['lr']:g}{eps} | {r['edge_step']} | "
            f"{s['max_rel_deviation_report']:.2e} / "
            f"{s['max_rel_deviation_eigensolve']:.2e} | "
            f"{c32['max_after_edge']:.2%} ({c32['argmax_after_edge']}) / {c32['final']:.2%} | "
            f"{r['stable_vs_disc32']['final']:.1%} | "
            f"{r['cf_closer_from']['float32']} / {r['cf_closer_from']['float64']} | "
            f"{c['max_after_edge']:.2%} ({c['argmax_after_edge']}) / "
            f"{c['max_from_edge_plus_100']:.2%} / {c['final']:.2%} | "
            f"{n['before_edge_max']:.2%}; {n['midpoint_median']:.1%} / {n['midpoint_max']:.0%} | "
            f"{n['smoothed_median']:.1%} / {n['smoothed_max']:.1%} | "
            f"{r['predicted_loss_median_error']:.2%} / "
            f"{r['predicted_loss_both_smoothed_median_error']:.2%} | {s['max_at_edge']} |"
        )
    lines += [
        "",
        "| case | CF run (s) | CF compile (s) | CF ms/step | GD CF run (s) (η, edge step, at edge) "
        "| ratio to GD CF | ratio to discrete |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t = r["timing"]
        lines.append(
            f"| {name} | {t['cf_run_s']:.2f} | {t['cf_compile_s']:.1f} | "
            f"{1e3 * t['cf_run_s'] / r['steps']:.2f} | {t['gd_cf_run_s']:.2f} "
            f"({t['gd_cf_lr']:g}, {t['gd_cf_edge_step']}, {t['gd_cf_max_at_edge']}) | "
            f"{t['ratio_to_gd_cf']:.2f} | {t['ratio_to_disc']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/rmsprop_central_flow"))
    parser.add_argument("--quick", action="store_true", help="one case, 500 steps")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cases = dict(list(CASES.items())[:1]) if args.quick else CASES
    steps = 500 if args.quick else 1000
    results = {
        name: run_case(name, *case, steps=steps, out=args.out)
        for name, case in cases.items()
    }
    text = table(results)
    print(text)
    machine = {
        "platform": platform.platform(), "devices": str(jax.devices()),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
    }
    (args.out / "table.md").write_text(text)
    (args.out / "results.json").write_text(
        json.dumps({"cases": results, "machine": machine}, indent=2)
    )


if __name__ == "__main__":
    main()
