"""The central flows of heavy-ball momentum and Adam against the discrete optimizers.

``simulate(problem, "central_flow", optimizer="momentum" | "adam", ...)``: the generic
`flows.CentralFlow` with the rule's own velocity (E[g] = g + ½∇⟨Σ, H⟩ drives the momentum,
E[g⊙g] = g⊙g + c²P² diag Σ drives Adam's ν), its threshold c (2(1 + β) = 3.8 for heavy ball
at β = 0.9, 2(1 + β₁)/(1 − β₁) = 38 for Adam at β₁ = 0.9) and the second-order stability
condition ``(d/dτ + κ)² A ⪰ 0`` (`flows.vector_fields.central_flow.momentum_edge_system`).
float64, default `CentralFlowSolver` (RK4, one step per optimizer step), 3 tracked
eigenvalues, against the discrete run from the same start in float32 and float64, and
against the stable flow (``"gradient_flow"`` with the same optimizer).

Per case: the step where Σ first becomes non-zero ("edge"); the effective sharpness
λ_max(P⁻¹H) along the flow (its own report, and an independent eigensolve at its saved
points every 10 steps) against c; the discrete run's effective sharpness after the edge
(midpoints, every 10 steps: mean, min and max over c); ‖w_disc − w‖ / ‖w_disc − w₀‖ of the
central and stable flows (final, worst after the edge) and their ratio; the predicted loss
``L + ½⟨Σ, H⟩`` against the run's loss smoothed by a Gaussian of σ = 50 steps (median
relative error after the edge, also with the prediction smoothed alike), and, for the
flows that take over, the error of its mean after the edge against the run's mean loss
(a run that holds its edge in bursts far apart is averaged over them only so); run time.

Outputs (``--out``, default ``runs/momentum_central_flow/``): ``results.json``, ``table.md``
and ``<case>.png`` (loss; effective sharpness against c; distances to the run).

Both flows also take over each run at step ``--take-over`` K (100 by default;
`simulate`'s ``start_from``: the run's w_K and optimizer state), past the first steps that
no flow follows, and are compared with the rest of the run (a second table).
``--beta-scan``: heavy ball on the reference MLP at η = 0.1 for β from 0.1 to 0.9.

Run: ``python benchmarks/momentum_central_flow.py [--quick | --beta-scan] [--out DIR]``
(``--quick``: the Adam reference case, 600 steps).
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
from rmsprop_central_flow import closer_from, distances  # noqa: E402

import flows  # noqa: E402
from flows.diagnostics import first_at_edge, gaussian_smooth  # noqa: E402
from flows.eigen_tracking import p_inv_series, track  # noqa: E402
from flows.problems import digits, mlp, reference_mlp  # noqa: E402
from flows.results import atomic_write_bytes, save_json  # noqa: E402

SIGMA = 50
EVERY = 10


def digits_mlp(n=100, width=32):
    return mlp(digits(n=n, standardize=False), [width], activation="tanh", loss="mse")


def wide_digits_mlp():
    """300 digits, [64] tanh, 4,810 parameters: heavy ball at β = 0.9 reaches its edge from
    η = 0.08; at 0.09 it rests there, at 0.1 it catapults (benchmarks/README.md)."""
    return digits_mlp(n=300, width=64)


ADAM = {"beta1": 0.9, "beta2": 0.999}
# name: (problem factory, optimizer, η, options, steps)
CASES = {
    "reference, heavy ball": (reference_mlp, "momentum", 0.05, {"beta": 0.9}, 1000),
    "reference, Adam": (reference_mlp, "adam", 0.002, ADAM, 1000),
    "reference, heavy ball, η = 0.08": (reference_mlp, "momentum", 0.08, {"beta": 0.9}, 2000),
    "digits, heavy ball": (digits_mlp, "momentum", 0.16, {"beta": 0.9}, 2000),
    "digits, Adam": (digits_mlp, "adam", 0.004, ADAM, 2300),
    "digits 300×64, heavy ball": (wide_digits_mlp, "momentum", 0.1, {"beta": 0.9}, 3000),
    "digits 300×64, heavy ball, η = 0.09": (
        wide_digits_mlp, "momentum", 0.09, {"beta": 0.9}, 5000),
    "digits 200×64, heavy ball, η = 0.12": (
        lambda: digits_mlp(n=200, width=64), "momentum", 0.12, {"beta": 0.9}, 5000),
}
# Heavy ball on the reference MLP at η = 0.1 (GD's reference rate) as β grows (`--beta-scan`).
BETA_SCAN = {
    f"reference, heavy ball, η = 0.1, β = {beta}": (
        reference_mlp, "momentum", 0.1, {"beta": beta}, 1000)
    for beta in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
}


def run_case(name, make_problem, optimizer, lr, options, steps, out, take_over=0):
    problem = make_problem()
    print(f"== {name}: {problem.num_params} parameters, {optimizer}, η = {lr}, {options}",
          flush=True)
    common = dict(lr=lr, steps=steps, **options)
    tracking = flows.Tracking(1, every=EVERY, midpoint=True, effective=True)
    disc = flows.simulate(problem, optimizer, tracking=tracking, **common)
    disc32 = flows.simulate(problem.astype(jnp.float32), optimizer, **common)
    stable = flows.simulate(problem, "gradient_flow", optimizer=optimizer, **common)
    cf = flows.simulate(problem, "central_flow", optimizer=optimizer, num_eigenvalues=3,
                        **common)
    rule = flows.make_method(problem, optimizer, lr, options=options)
    threshold = float(rule.stability_threshold)
    extras = {k: np.asarray(v) for k, v in cf.extras.items()}
    edge = first_at_edge(extras["sigma_trace"])
    print(f"   central flow {cf.status}, edge at step {edge}; run {cf.wall_time:.1f} s "
          f"(compile {cf.compile_time:.1f} s)", flush=True)
    result = {"parameters": problem.num_params, "optimizer": optimizer, "lr": lr,
              "options": options, "steps": steps, "threshold": threshold,
              "status": cf.status, "edge_step": edge}

    disc_mu = np.asarray(disc.eigenvalues[:, 0])
    tracked = ~np.isnan(disc_mu)
    disc_steps = np.asarray(disc.steps)[tracked]
    disc_mu = disc_mu[tracked]
    result["discrete_sharpness_max_over_c"] = float(np.max(disc_mu) / threshold)
    if edge < 0:
        result["note"] = "the central flow never reached the edge"
        print("   " + json.dumps(result), flush=True)
        return result

    mu = extras["effective_eigenvalues"][:, 0]
    p_inv = p_inv_series(problem, rule, cf.steps, cf.params, cf.extras, discrete=False)
    check = track(problem, cf.params, 1, steps=cf.steps, every=EVERY, p_inv=p_inv)
    check_steps, check_mu = np.asarray(check.steps), np.asarray(check.values[:, 0])
    after = disc_steps > edge
    result["sharpness"] = {
        "cf_max_rel_deviation_report": float(np.max(np.abs(mu[edge + 1:] - threshold))
                                             / threshold),
        "cf_max_rel_deviation_eigensolve": float(
            np.max(np.abs(check_mu[check_steps > edge] - threshold)) / threshold),
        "discrete_after_edge_over_c": [float(np.mean(disc_mu[after]) / threshold),
                                       float(np.min(disc_mu[after]) / threshold),
                                       float(np.max(disc_mu[after]) / threshold)],
        "max_at_edge": int(np.max(extras["num_at_edge"])),
    }
    rel = {}
    for key, run in (("float64", disc), ("float32", disc32)):
        rel[key] = compare(cf.params, stable.params, run.params, edge, key, result)
        result[f"cf_closer_from_{key}"] = closer_from(*rel[key], edge)
    if take_over:
        result["taken_over"] = taken_over(problem, optimizer, common, take_over,
                                          {"float64": disc, "float32": disc32})
        rel["taken_over"] = result["taken_over"].pop("series")

    result.update(loss_errors(extras["predicted_loss"], stable.loss, disc32.loss, edge))
    smooth_loss = np.asarray(gaussian_smooth(np.asarray(disc32.loss, np.float64), SIGMA))
    result["timing"] = {"cf_run_s": cf.wall_time, "cf_compile_s": cf.compile_time,
                        "disc_run_s": disc32.wall_time, "stable_run_s": stable.wall_time}
    plot(out / f"{name.replace(', ', '_').replace(' ', '_')}.png", name, threshold, disc32,
         stable, cf, edge, smooth_loss, (disc_steps, disc_mu), (check_steps, check_mu), rel)
    print("   " + json.dumps({k: v for k, v in result.items() if k != "options"}), flush=True)
    return result


def compare(cf_params, stable_params, run_params, edge, key, out):
    """Both flows' distances to one run (``out``: final and worst after the edge, their
    ratio at the end); returns the two series."""
    rel_cf, out[f"cf_vs_disc_{key}"] = distances(cf_params, run_params, edge)
    rel_sf, out[f"stable_vs_disc_{key}"] = distances(stable_params, run_params, edge)
    out[f"stable_over_cf_final_{key}"] = (
        out[f"stable_vs_disc_{key}"]["final"] / out[f"cf_vs_disc_{key}"]["final"])
    return rel_cf, rel_sf


def loss_errors(prediction, stable_loss, run_loss, edge):
    """Median relative errors, after the edge and away from the smoothing's ends, of the
    central flow's predicted loss (as it is, and smoothed like the run's) and of the stable
    flow's loss against the run's loss smoothed by a Gaussian of σ = SIGMA steps; and the
    relative errors of their means over that window against the run's mean loss (a run
    that holds its edge in bursts, catapults far apart, is averaged over them only so).
    The series are aligned at their ends (a flow taken over at step K covers the run's
    steps K…)."""
    prediction = np.asarray(prediction, np.float64)
    run_loss = np.asarray(run_loss, np.float64)
    smooth_loss = np.asarray(gaussian_smooth(jnp.asarray(run_loss), SIGMA))
    offset = len(run_loss) - len(prediction)
    window = np.arange(max(edge, offset + 2 * SIGMA), len(run_loss) - 2 * SIGMA)
    target = smooth_loss[window]

    def median_error(series):
        return float(np.median(np.abs(np.asarray(series)[window - offset] - target) / target))

    def mean_error(series):
        mean = np.mean(run_loss[window])
        return float(abs(np.mean(np.asarray(series)[window - offset]) - mean) / mean)

    return {"predicted_loss_median_error": median_error(prediction),
            "predicted_loss_both_smoothed_median_error": median_error(
                gaussian_smooth(jnp.asarray(prediction), SIGMA)),
            "stable_loss_median_error": median_error(stable_loss),
            "predicted_mean_loss_error": mean_error(prediction),
            "stable_mean_loss_error": mean_error(stable_loss)}


def taken_over(problem, optimizer, common, start, runs):
    """Both flows taking over each run at step ``start`` (`simulate`'s ``start_from``:
    w_k and the optimizer state as the rule aligns it, the step count going on), against
    the rest of that run: distances on the whole run's scale ‖w_disc − w₀‖, and (float32)
    the predicted loss against the run's smoothed loss."""
    out, series = {"step": start}, None
    steps = common["steps"] - start
    for key, run in runs.items():
        taken = {
            name: flows.simulate(problem, method, optimizer=optimizer, start_from=(run, start),
                                 **{**common, "steps": steps}, **options)
            for name, method, options in (("stable", "gradient_flow", {}),
                                          ("cf", "central_flow", {"num_eigenvalues": 3}))
        }
        sigma = np.asarray(taken["cf"].extras["sigma_trace"])
        edge = start + max(first_at_edge(sigma), 0)
        head = np.asarray(run.params[:start], np.float64)
        padded = {name: np.concatenate([head, np.asarray(flow.params)])
                  for name, flow in taken.items()}
        rel = compare(padded["cf"], padded["stable"], run.params, edge, key, out)
        out[f"edge_{key}"] = edge
        if key == "float32":
            series = (*rel, start, taken["cf"].extras["predicted_loss"], taken["stable"].loss)
            out["loss"] = loss_errors(taken["cf"].extras["predicted_loss"],
                                      taken["stable"].loss, run.loss, edge)
    out["series"] = series
    return out


def plot(path, title, threshold, disc, stable, cf, edge, smooth_loss, disc_mu, check, rel):
    steps = np.asarray(disc.steps)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2), constrained_layout=True)
    ax = axes[0]
    ax.plot(steps, disc.loss, c="C0", alpha=0.3, label="discrete (float32)")
    ax.plot(steps, smooth_loss, c="C0", lw=3, label=f"discrete, smoothed (σ={SIGMA})")
    ax.plot(steps, stable.loss, c="r", ls="--", label="stable flow")
    ax.plot(steps, cf.loss, c="k", label="central flow")
    ax.plot(steps, cf.extras["predicted_loss"], c="k", ls=":", label="prediction L + ½⟨Σ,H⟩")
    if "taken_over" in rel:
        start, predicted, stable_loss = rel["taken_over"][2:]
        ax.plot(steps[start:], predicted, c="g", label=f"prediction, taken over at {start}")
        ax.plot(steps[start:], stable_loss, c="g", ls="--", label="stable flow from there")
    ax.set_yscale("log")
    ax.set_title(f"{title}: loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(*disc_mu, c="C0", label="discrete (midpoints, float64)")
    ax.plot(steps, cf.extras["effective_eigenvalues"][:, 0], c="k", label="central flow")
    ax.plot(*check, "k.", ms=3, label="central flow, eigensolve")
    ax.axhline(threshold, c="gray", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_title("effective sharpness λ_max(P⁻¹H)")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(steps, rel["float32"][0], c="k", label="central flow vs float32 run")
    ax.plot(steps, rel["float64"][0], c="C1", label="central flow vs float64 run")
    ax.plot(steps, rel["float32"][1], c="r", ls="--", label="stable flow vs float32 run")
    if "taken_over" in rel:
        ax.plot(steps, rel["taken_over"][0], c="g", label="central flow from the run's step "
                f"{rel['taken_over'][2]} (float32)")
        ax.plot(steps, rel["taken_over"][1], c="g", ls="--", label="stable flow from there")
    ax.axvline(edge, c="gray", ls=":", label="edge (CF)")
    ax.set_yscale("log")
    ax.set_title("‖w_disc − w‖ / ‖w_disc − w₀‖")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_columns(errors, means=False) -> str:
    text = (f"{errors['predicted_loss_median_error']:.1%} / "
            f"{errors['predicted_loss_both_smoothed_median_error']:.1%}; "
            f"{errors['stable_loss_median_error']:.1%}")
    if means:
        text += (f" | {errors['predicted_mean_loss_error']:.1%}; "
                 f"{errors['stable_mean_loss_error']:.1%}")
    return text


def take_over_table(results) -> str:
    lines = [
        "| case | taken over at step | CF edge | CF vs run (float32): final / worst after "
        "edge | stable flow final (float32) | stable ÷ CF (float32 / float64) | pred. loss "
        "median err (vs smoothed / both smoothed; stable flow's loss) | mean loss after the "
        "edge, err (prediction; stable flow) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "taken_over" not in r:
            continue
        t = r["taken_over"]
        lines.append(
            f"| {name} | {t['step']} | {t['edge_float32']} | "
            f"{t['cf_vs_disc_float32']['final']:.2%} / "
            f"{t['cf_vs_disc_float32']['max_after_edge']:.2%} | "
            f"{t['stable_vs_disc_float32']['final']:.2%} | "
            f"{t['stable_over_cf_final_float32']:.1f}× / "
            f"{t['stable_over_cf_final_float64']:.1f}× | "
            f"{loss_columns(t['loss'], means=True)} |"
        )
    return "\n".join(lines) + "\n"


def table(results) -> str:
    lines = [
        "| case | η | c | edge step | CF: max \\|μ−c\\|/c after edge (report / eigensolve) | "
        "run's μ/c after edge: mean [min, max] | CF vs run (float32): final / worst after "
        "edge | stable flow final | stable ÷ CF (float32 / float64) | pred. loss median err "
        "(vs smoothed / both smoothed; stable flow's loss) | CF ms/step (compile s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "sharpness" not in r:
            lines.append(f"| {name} | {r['lr']:g} | {r['threshold']:.3g} | — | {r['note']}; "
                         f"run's max μ/c {r['discrete_sharpness_max_over_c']:.2f} | | | | | | |")
            continue
        s, c32, t = r["sharpness"], r["cf_vs_disc_float32"], r["timing"]
        mean, low, high = s["discrete_after_edge_over_c"]
        lines.append(
            f"| {name} | {r['lr']:g} | {r['threshold']:.3g} | {r['edge_step']} | "
            f"{s['cf_max_rel_deviation_report']:.1e} / {s['cf_max_rel_deviation_eigensolve']:.1e}"
            f" | {mean:.2f} [{low:.2f}, {high:.2f}] | {c32['final']:.2%} / "
            f"{c32['max_after_edge']:.2%} | {r['stable_vs_disc_float32']['final']:.2%} | "
            f"{r['stable_over_cf_final_float32']:.1f}× / {r['stable_over_cf_final_float64']:.1f}×"
            f" | {loss_columns(r)} | "
            f"{1e3 * t['cf_run_s'] / r['steps']:.1f} ({t['cf_compile_s']:.0f}) |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/momentum_central_flow"))
    parser.add_argument("--quick", action="store_true", help="the Adam reference case, 600 steps")
    parser.add_argument("--cases", nargs="*", help="names of cases to run (default: all)")
    parser.add_argument(
        "--beta-scan", action="store_true",
        help="heavy ball on the reference MLP at η = 0.1 for β from 0.1 to 0.9 (no take-over)")
    parser.add_argument(
        "--take-over", type=int, default=100, metavar="K",
        help="also start both flows from each run's state at step K (0: not)")
    args = parser.parse_args()
    unknown = sorted(set(args.cases or ()) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; the cases are {sorted(CASES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    cases = {k: v for k, v in CASES.items() if not args.cases or k in args.cases}
    if args.beta_scan:
        cases, args.take_over = BETA_SCAN, 0
    if args.quick:
        make, optimizer, lr, options, _ = CASES["reference, Adam"]
        cases = {"reference, Adam": (make, optimizer, lr, options, 600)}
    results = {name: run_case(name, *case, out=args.out, take_over=args.take_over)
               for name, case in cases.items()}
    text = table(results)
    if args.take_over:
        text += "\n" + take_over_table(results)
    print(text)
    machine = {"platform": platform.platform(), "devices": str(jax.devices()),
               "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    atomic_write_bytes(args.out / "table.md", text.encode())
    save_json(args.out / "results.json", {"cases": results, "machine": machine})


if __name__ == "__main__":
    main()
