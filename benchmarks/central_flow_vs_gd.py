"""The central flow against discrete GD: accuracy and speed.

Central flow of GD (Cohen, Damian, Talwalkar, Kolter and Lee, ICLR 2025), integrated by
the library's default `CentralFlowSolver` (classic RK4, one step per GD step, warm-started
eigenvectors refined every 1 to 8 steps, adaptively), against GD from the same start, in
float64.

1. Reference case: `flows.problems.reference_mlp()` (8-16-16-1 swish MLP, 128 standard-
   normal inputs and targets, plain mean squared error), η = 0.1, 1000 steps, 5 tracked
   eigenvalues.
   - ‖w_GD − w_CF‖ / ‖w_GD − w₀‖ at the last step and its maximum after the edge is reached
     (the first step where Σ ≠ 0), against GD in float64 and in float32 (whose rounding
     noise starts the edge-of-stability oscillation earlier, as in the reference
     implementations, which run in float32); gradient flow for contrast.
   - the predicted time-averaged loss ``L + tr(Σ)/η`` against GD's loss smoothed by a
     Gaussian of σ = 50 steps (`flows.diagnostics.gaussian_smooth`): median relative
     error over the steps after the edge (and ≥ 2σ); the same for ``‖g‖² + (4/η²)tr Σ``.
   - numerics: the default run against a tightly integrated run of the same flow
     (dt = 1/8, the eigenvectors refined at each of those steps by three Rayleigh–Ritz
     iterations, third derivatives at every stage, two guard vectors); this is the error
     the integrator and the held eigen-basis add.
   - speed: run time of 1000 steps (compilation reported separately) and its ratio to
     the run time of 1000 GD steps in the same process, float64 and float32.
2. Digits MLP (11,260 parameters: 64-150-10 tanh, ½‖f − y‖², 200 digits, pixels in
   [0, 1]), η = 0.062, 1500 steps: two eigenvalues reach 2/η (a third approaches); the
   same accuracy figures, gradient flow's distance to GD for contrast, and the time
   per step.

Outputs (``--out``, default ``runs/central_flow_vs_gd/``): ``results.json``, ``table.md``
and, per case, ``<case>.png`` with the loss (GD raw and smoothed, central flow, its
prediction, gradient flow), the top eigenvalues against 2/η, and the distances GD–CF and
GD–GF over time. No GPU in this environment: the time per step is the CPU's.

Run: ``python benchmarks/central_flow_vs_gd.py [--quick] [--case CASE] [--options JSON]
[--out DIR]`` (``--options`` passes central-flow options, e.g. ``'{"refresh_interval": 1}'``;
``--data-chunk`` sets the CNN cases' examples per chunk of the loss).
"""

from __future__ import annotations

import argparse
import json
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
from flows.eigen_tracking import track  # noqa: E402
from flows.linalg import gradient, sharpness  # noqa: E402
from flows.problems import cifar10, cnn, digits, mlp, reference_mlp  # noqa: E402
from flows.results import atomic_write_bytes, save_json  # noqa: E402

SIGMA = 50
CNN_DIGITS_LR = 0.12


def digits_case():
    """The digits MLP (64-150-10 tanh, ½‖f − y‖², 200 digits) and its learning rate."""
    return mlp(digits(n=200, standardize=False), [150], activation="tanh", loss="mse"), 0.062


def gradient_norms_sq(problem, params):
    grad = jax.jit(jax.vmap(gradient(problem.flat_loss)))
    return np.asarray(jnp.sum(grad(jnp.asarray(params)) ** 2, axis=-1))


def accuracy(cf, gd, problem, lr):
    """The accuracy figures of a central-flow run against a GD run (same steps)."""
    extras = {k: np.asarray(v) for k, v in cf.extras.items()}
    params = np.asarray(gd.params, dtype=np.float64)
    relative = np.asarray(relative_distance(np.asarray(cf.params), params))
    edge = first_at_edge(extras["sigma_trace"])
    if edge < 0:
        raise RuntimeError("the central flow never reached the edge: no figures after it")
    after = np.arange(max(edge, 2 * SIGMA), len(relative))
    smooth_loss = np.asarray(gaussian_smooth(np.asarray(gd.loss, dtype=np.float64), SIGMA))
    gd_grad_sq = gradient_norms_sq(problem, params)
    smooth_grad_sq = np.asarray(gaussian_smooth(gd_grad_sq, SIGMA))
    loss_error = np.abs(extras["predicted_loss"] - smooth_loss) / smooth_loss
    grad_error = np.abs(extras["predicted_grad_norm_sq"] - smooth_grad_sq) / smooth_grad_sq
    return {
        "edge_step": edge,
        "final_distance": float(relative[-1]),
        "max_distance_after_edge": float(np.max(relative[edge:])),
        "argmax_distance_after_edge": int(edge + np.argmax(relative[edge:])),
        "max_distance_last_half": float(np.max(relative[len(relative) // 2 :])),
        "predicted_loss_median_error": float(np.median(loss_error[after])),
        "predicted_grad_norm_sq_median_error": float(np.median(grad_error[after])),
        "max_top_eigenvalue_after_edge": float(
            np.max(extras["effective_eigenvalues"][edge:, 0])
        ),
        "max_at_edge": int(np.max(extras["num_at_edge"])),
        "_relative": relative,
        "_smooth_loss": smooth_loss,
    }


def tight_difference(cf, tight, gd, edge):
    """‖w_CF − w_tight‖ / ‖w_GD − w₀‖: over all steps (the first few divide by GD's
    tiny displacement, and RK4 at dt = 1 damps modes with ηλ ≈ 2 less than the exact
    flow does) and from the edge on."""
    reference = np.asarray(gd.params, dtype=np.float64)
    travelled = np.linalg.norm(reference - reference[0], axis=1)
    difference = np.linalg.norm(np.asarray(cf.params) - np.asarray(tight.params), axis=1)
    ratio = difference / np.where(travelled > 0, travelled, np.nan)
    return {
        "final": float(ratio[-1]),
        "max": float(np.nanmax(ratio[1:])),
        "max_after_edge": float(np.max(ratio[edge:])),
    }


def plot(path, title, lr, gd, gf, cf, figures, gd_eigenvalues):
    steps = np.asarray(gd.steps)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), constrained_layout=True)
    ax = axes[0]
    ax.plot(steps, gd.loss, c="C0", alpha=0.25, label="GD")
    smooth = figures["_smooth_loss"]
    ax.plot(
        steps[2 * SIGMA :], smooth[2 * SIGMA :], c="C0", lw=3, label=f"GD (smoothed, σ={SIGMA})"
    )
    ax.plot(steps, gf.loss, c="r", ls="--", label="gradient flow")
    ax.plot(steps, cf.loss, c="k", label="central flow")
    ax.plot(steps, cf.extras["predicted_loss"], c="k", ls="--", label="CF prediction L + tr(Σ)/η")
    ax.set_ylim(0, float(np.max(smooth)) * 1.2)
    ax.set_xlabel("step")
    ax.set_title(f"{title}: loss")
    ax.legend(fontsize=8)
    ax = axes[1]
    if gd_eigenvalues is not None:
        track_steps, values = gd_eigenvalues
        ax.plot(track_steps, values[:, 0], c="C0", alpha=0.5, label="GD (midpoints)")
        ax.plot(track_steps, values[:, 1:], c="C0", alpha=0.25)
    ax.plot(steps, cf.eigenvalues, c="k", lw=1)
    ax.plot([], [], c="k", label="central flow")
    ax.axhline(2 / lr, c="k", ls=":", label="2/η")
    ax.set_xlabel("step")
    ax.set_title("top Hessian eigenvalues")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(steps, figures["_relative"], c="k", label="‖w_GD − w_CF‖ / ‖w_GD − w₀‖")
    ax.plot(steps, figures["_gf_relative"], c="r", ls="--", label="‖w_GD − w_GF‖ / ‖w_GD − w₀‖")
    ax.axvline(figures["edge_step"], c="gray", ls=":", label="edge reached (CF)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("distance to GD")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_case(name, problem, lr, steps, *, tight_check, out, timing_float32=False, options=None):
    options = {"num_eigenvalues": 5, **(options or {})}
    print(f"== {name}: {problem.num_params} parameters, η = {lr}, {steps} steps", flush=True)
    gd = flows.simulate(problem, "gd", lr=lr, steps=steps)
    gf = flows.simulate(problem, "gradient_flow", lr=lr, steps=steps)
    cf = flows.simulate(problem, "central_flow", lr=lr, steps=steps, **options)
    gd_again = flows.simulate(problem, "gd", lr=lr, steps=steps)
    gd_time = min(gd.wall_time, gd_again.wall_time)
    result = {
        "parameters": problem.num_params,
        "central_flow_options": options,
        "lr": lr,
        "steps": steps,
        "status": cf.status,
        "timing_float64": {
            "central_flow_run_s": cf.wall_time,
            "central_flow_compile_s": cf.compile_time,
            "gd_run_s": gd_time,
            "ratio": cf.wall_time / gd_time,
            "central_flow_ms_per_step": 1e3 * cf.wall_time / steps,
            "gd_ms_per_step": 1e3 * gd_time / steps,
        },
    }
    # Steps where the eigen-basis was refined (`refresh_interval`), after the edge too.
    age = np.rint(np.asarray(cf.extras["basis_age"]))
    edge = first_at_edge(cf.extras["sigma_trace"])
    result["refreshed_steps"] = {
        "all": float(np.mean(age == 0)),
        "after_edge": float(np.mean(age[edge:] == 0)) if edge >= 0 else float("nan"),
    }
    print(f"   central flow {cf.wall_time:.2f} s (compile {cf.compile_time:.1f} s), "
          f"GD {gd_time:.3f} s, ratio {cf.wall_time / gd_time:.1f}; basis refined at "
          f"{100 * result['refreshed_steps']['after_edge']:.0f}% of the steps after the edge",
          flush=True)
    problem32 = problem.astype(jnp.float32)
    # GD in float32: the accuracy reference below, and timed twice when asked.
    repeats = 2 if timing_float32 else 1
    gd32_runs = [flows.simulate(problem32, "gd", lr=lr, steps=steps) for _ in range(repeats)]
    if timing_float32:
        cf32 = flows.simulate(problem32, "central_flow", lr=lr, steps=steps, **options)
        gd32_time = min(r.wall_time for r in gd32_runs)
        result["timing_float32"] = {
            "central_flow_run_s": cf32.wall_time,
            "central_flow_compile_s": cf32.compile_time,
            "gd_run_s": gd32_time,
            "ratio": cf32.wall_time / gd32_time,
        }
        print(f"   float32: central flow {cf32.wall_time:.2f} s, GD {gd32_time:.3f} s", flush=True)
    figures = accuracy(cf, gd, problem, lr)
    figures["_gf_relative"] = np.asarray(
        relative_distance(np.asarray(gf.params), np.asarray(gd.params))
    )
    result["gd_float64"] = {k: v for k, v in figures.items() if not k.startswith("_")}
    result["gradient_flow_final_distance"] = float(figures["_gf_relative"][-1])
    gd32 = gd32_runs[0]
    result["gd_float32"] = {
        k: v for k, v in accuracy(cf, gd32, problem, lr).items() if not k.startswith("_")
    }
    gf32 = relative_distance(np.asarray(gf.params), np.asarray(gd32.params, dtype=np.float64))
    result["gradient_flow_final_distance_vs_float32"] = float(np.asarray(gf32)[-1])
    if tight_check:
        tight = flows.simulate(
            problem, "central_flow", lr=lr, steps=steps, num_eigenvalues=5,
            integrator=flows.Integrator(dt0=0.125),
            refine_iterations=3, stage_third_derivatives=True, guard=2, refresh_interval=1,
        )
        result["numerics_vs_tight"] = tight_difference(cf, tight, gd, figures["edge_step"])
        print(f"   vs tight run of itself: {result['numerics_vs_tight']}", flush=True)
    every = max(steps // 100, 1)
    values = track(problem, gd.params, 5, every=every, midpoint=True)
    plot(out / f"{name}.png", name, lr, gd, gf, cf, figures,
         (np.asarray(values.steps), np.asarray(values.values)))
    for key in ("gd_float64", "gd_float32"):
        print(f"   {key}: {result[key]}", flush=True)
    return result


def table(results) -> str:
    lines = [
        "| case | GD dtype | edge step | final ‖w_GD−w_CF‖/‖w_GD−w₀‖ | max after edge | "
        "max, 2nd half | GF final | pred. loss median err | pred. ‖g‖² median err | "
        "max ηλ₁ after edge | eigenvalues at edge |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for dtype, gf_key in (("float64", "gradient_flow_final_distance"),
                              ("float32", "gradient_flow_final_distance_vs_float32")):
            a = r[f"gd_{dtype}"]
            lines.append(
                f"| {name} | {dtype} | {a['edge_step']} | {a['final_distance']:.2%} | "
                f"{a['max_distance_after_edge']:.2%} (step {a['argmax_distance_after_edge']}) | "
                f"{a['max_distance_last_half']:.2%} | {r[gf_key]:.2%} | "
                f"{a['predicted_loss_median_error']:.2%} | "
                f"{a['predicted_grad_norm_sq_median_error']:.2%} | "
                f"{a['max_top_eigenvalue_after_edge']:.5f} | {a['max_at_edge']} |"
            )
    lines += [
        "",
        "| case | dtype | CF run (s) | CF compile (s) | GD run (s) | ratio | CF ms/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for dtype in ("float64", "float32"):
            t = r.get(f"timing_{dtype}")
            if t is None:
                continue
            lines.append(
                f"| {name} | {dtype} | {t['central_flow_run_s']:.2f} | "
                f"{t['central_flow_compile_s']:.1f} | {t['gd_run_s']:.3f} | {t['ratio']:.1f} | "
                f"{1e3 * t['central_flow_run_s'] / r['steps']:.2f} |"
            )
    numerics = [
        (n, r["numerics_vs_tight"]) for n, r in results.items() if "numerics_vs_tight" in r
    ]
    if numerics:
        lines += [
            "",
            "| case | ‖w_CF − w_tight‖/‖w_GD − w₀‖ final | max after the edge | max |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {n} | {d['final']:.1e} | {d['max_after_edge']:.1e} | {d['max']:.1e} |"
            for n, d in numerics
        ]
    return "\n".join(lines) + "\n"


def cnn_case(args):
    """The CNN reproductions: the zoo's CNN (3×3 convolutions, tanh, 2×2 average pooling,
    dense head, ½‖f − y‖²) on 500 digits (shipped; channels 8 and 16, 1,898 parameters,
    initial sharpness 13.7, GD reaches 2/η ≈ 16.7 near step 350) or on the first 1000
    CIFAR-10 images of a local copy (the papers' subset size; channels 32, 64, 64)."""
    if args.case == "cnn-digits":
        data = digits(n=500, flatten=False, standardize=False)
        problem = cnn(data, channels=(8, 16), activation="tanh", data_chunk=args.data_chunk)
        lr, steps = args.lr or CNN_DIGITS_LR, args.steps or 1000
    else:
        if args.cifar10 is None:
            raise SystemExit("cnn-cifar10 needs --cifar10 PATH (a CIFAR-10 batch, folder or .npz)")
        data = cifar10(args.cifar10, n=1000, flatten=False)
        # The whole batch's float64 central flow asks for a 44.5 GB buffer; in chunks of 100
        # images it peaks at 2.8 GB (benchmarks/README.md).
        chunk = args.data_chunk or 100
        problem = cnn(data, channels=(32, 64, 64), activation="tanh", data_chunk=chunk)
        if args.lr is None:
            # 2/η = 2 λ₁(w₀): GD has to double its sharpness to reach the edge.
            top = float(jax.jit(lambda p: sharpness(p.flat_loss, p.w0))(problem))
            print(f"   initial sharpness {top:.4g}: η = 1/λ₁ = {1 / top:.4g}", flush=True)
        lr, steps = args.lr or 1.0 / top, args.steps or 1000
    return args.case, problem, lr, steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/central_flow_vs_gd"))
    parser.add_argument("--quick", action="store_true", help="short runs, no tight check")
    parser.add_argument(
        "--case", choices=("reference", "digits", "both", "cnn-digits", "cnn-cifar10"),
        default="both", help="which cases ('both': reference and digits)",
    )
    parser.add_argument("--cifar10", type=Path, help="CIFAR-10 file or folder (cnn-cifar10)")
    parser.add_argument("--lr", type=float, help="learning rate of the CNN cases")
    parser.add_argument("--steps", type=int, help="steps of the CNN cases")
    parser.add_argument(
        "--data-chunk", type=int,
        help="examples per chunk of the CNN cases' loss (default: cnn-digits all at once, "
             "cnn-cifar10 100)",
    )
    parser.add_argument(
        "--options", type=json.loads, default={},
        help='central-flow options as JSON, e.g. \'{"refresh_interval": 1}\'',
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.case.startswith("cnn-"):
        name, problem, lr, steps = cnn_case(args)
        results[name] = run_case(
            name, problem, lr, steps, tight_check=False, out=args.out, options=args.options
        )
    elif args.case != "digits":
        results["reference"] = run_case(
            "reference", reference_mlp(), 0.1, 500 if args.quick else 1000,
            tight_check=not args.quick, out=args.out, timing_float32=True, options=args.options,
        )
    if not args.quick and args.case in ("digits", "both"):
        problem, lr = digits_case()
        results["digits"] = run_case(
            "digits", problem, lr, 1500, tight_check=True, out=args.out, options=args.options
        )
    results["machine"] = {"platform": platform.platform(), "devices": str(jax.devices())}
    text = table({k: v for k, v in results.items() if k != "machine"})
    print(text)
    atomic_write_bytes(args.out / "table.md", text.encode())
    save_json(args.out / "results.json", results)


if __name__ == "__main__":
    main()
