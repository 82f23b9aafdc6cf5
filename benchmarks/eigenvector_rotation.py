"""Eigenvector rotation during instabilities (Wang & Roberts, "Can stability be detrimental?
Better generalization through gradient descent instabilities", 2024).

Full-batch GD at learning rates from well below to beyond the edge (``η λ₁(w₀)`` from 0.5
to 3), on

- the two-parameter model ``L = z(θ₁θ₂)``, ``z(u) = ½(u − 1)²`` from the unbalanced start
  (2.5, 0.3),
- a depth-3 linear network (4-8-8-1, no biases) on 32 synthetic regression points,
- the 8-16-16-1 swish MLP of the central-flow reference case,
- and, as the control, a depth-1 (linear) model on the same data: its loss is quadratic,
  so its Hessian, and the eigenvectors, cannot move (rotation exactly 0).

The top Hessian eigenvector u₁ is tracked at every step (dense ``eigh`` up to 200
parameters, Lanczos with 60 Krylov vectors above; sign-aligned). Two
summaries per run: the total rotation ``Σ_k arccos|⟨u₁(k), u₁(k − 1)⟩|`` (the path length
of u₁ on the sphere) and the net angle between u₁ at the first and last step; rows after a
divergence are dropped. At the edge the iterates alternate between the two sides of a
valley, so the total also counts u₁ swinging back and forth; the net angle does not.
``rotation.png``: ηλ₁ and the per-step overlap against the step for three learning rates
per model; ``rotation_vs_lr.png``: the net angle against ηλ₁(w₀).

Run: ``python benchmarks/eigenvector_rotation.py [--quick] [--out DIR]``.
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
from flows.eigen_tracking import track  # noqa: E402
from flows.eos import eigenvector_overlap, subspace_overlap  # noqa: E402
from flows.plots.eos import plot_rotation, plot_rotation_vs_lr  # noqa: E402
from flows.problems import (  # noqa: E402
    deep_linear,
    reference_mlp,
    synthetic_regression,
    two_layer_scalar,
)

run_discrete = eqx.filter_jit(flows.run_discrete)


def models() -> dict[str, flows.Problem]:
    data = synthetic_regression(n=32, d_in=4, d_out=1, seed=0)
    return {
        "z(θ₁θ₂)": two_layer_scalar(theta1=2.5, theta2=0.3),
        "deep linear, depth 3": deep_linear(data, depth=3, width=8),
        "swish MLP 8-16-16-1": reference_mlp(draw="numpy"),  # as recorded
        "linear, depth 1 (control)": deep_linear(data, depth=1),
    }


def rotation_run(problem: flows.Problem, lr: float, steps: int, k: int = 2) -> dict:
    output = run_discrete(problem, flows.make_method(problem, "gd", lr), steps, 1)
    # Dense eigh is exact but costs n HVPs and an O(n³) solve per step; Lanczos with a
    # generous Krylov space gives the same top pair for the MLP at a fraction of that.
    eigensolver = flows.DenseEigh() if problem.num_params <= 200 else flows.Lanczos(60)
    tracked = track(problem, output["params"], k, eigensolver=eigensolver)
    vectors = np.asarray(tracked.vectors)
    finite = np.flatnonzero(np.all(np.isfinite(vectors), axis=(1, 2)))
    last = int(finite[-1]) if finite.size else 0
    overlap = np.asarray(eigenvector_overlap(tracked.vectors))[:, 0]
    angles = np.arccos(np.clip(overlap[:last], 0.0, 1.0))
    net = abs(float(vectors[last, :, 0] @ vectors[0, :, 0]))
    return {
        "lr": lr,
        "steps": np.asarray(tracked.steps),
        "sharpness": np.asarray(tracked.sharpness),
        "overlap_steps": np.asarray(tracked.steps[1:]),
        "overlap": overlap,
        "subspace": np.asarray(subspace_overlap(tracked.vectors)),
        "total": float(np.sum(angles)),
        "net": float(np.arccos(min(net, 1.0))),
        "stopped": int(output["stopped_at"]),
        "min_overlap": float(np.min(overlap[:last])) if last else 1.0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=Path("runs/eigenvector_rotation"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    scales = [0.5, 1.5, 2.5] if args.quick else [0.5, 1.0, 1.5, 1.9, 2.1, 2.5, 3.0]
    shown = {0.5, 1.5, 2.5}
    steps = 60 if args.quick else 400
    lines = [
        "# Eigenvector rotation against the learning rate (full-batch GD)",
        "",
        f"{steps} steps; u₁ tracked at every iterate. Total = Σ arccos overlap (path length, "
        "rad), net = angle between u₁ at the first and the last step, min = the smallest "
        "per-step overlap, subspace = mean top-2 subspace overlap.",
        "",
        "| model | η λ₁(w₀) | total (rad) | net (rad) | min overlap | mean subspace overlap "
        "| final η λ₁ | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    panels, curves = {}, {}
    for name, problem in models().items():
        s0 = float(flows.sharpness(problem.flat_loss, problem.w0))
        runs, nets = [], []
        for scale in scales:
            run = rotation_run(problem, scale / s0, steps)
            finite = np.isfinite(run["sharpness"])
            final = scale / s0 * run["sharpness"][finite][-1]
            status = "ok" if run["stopped"] < 0 else f"diverged at {run['stopped']}"
            lines.append(
                f"| {name} | {scale:g} | {run['total']:.3g} | {run['net']:.3g} "
                f"| {run['min_overlap']:.6f} | {np.nanmean(run['subspace']):.6f} "
                f"| {final:.3f} | {status} |"
            )
            nets.append(run["net"])
            if scale in shown:
                runs.append(run | {"label": f"η λ₁(w₀) = {scale:g}"})
        panels[name] = runs
        curves[name] = (np.array(scales), np.array(nets))
        print("\n".join(lines[-len(scales):]), flush=True)
    plot_rotation(panels, args.out / "rotation.png")
    plot_rotation_vs_lr(curves, args.out / "rotation_vs_lr.png",
                        ylabel=f"net rotation of u₁ over {steps} steps (rad)")
    lines += ["", f"Total {time.perf_counter() - begin:.0f} s (2-core CPU, no GPU, float64)."]
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
