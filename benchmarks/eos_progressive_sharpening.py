"""Progressive sharpening and the edge of stability on a digits MLP (Cohen, Kaur, Li, Kolter,
Talwalkar, ICLR 2021): full-batch GD at several learning rates; the sharpness rises until
it reaches 2/η, then hovers there while the loss keeps decreasing non-monotonically.

Two panels in ``progressive_sharpening.png``:

- MSE (``½‖f(x) − y‖²`` with one-hot targets, averaged): a tanh 64-64 network on 1000
  digits (pixels in [0, 1]); the sharpness hovers at 2/η for the rest of training.
- Cross-entropy: a tanh 32-32 network on 1000 digits with 30 % of the labels redrawn at
  random (clean digits are fitted so fast that the loss, and with it the sharpness,
  collapses before any edge phase); the sharpness reaches 2/η, hovers while the network
  memorizes the noisy labels, then falls as the loss goes to 0 (the late cross-entropy
  phase). Here the iterates bounce chaotically across the valley and λ₁ at the iterates
  is noisy and above 2/η; it is tracked at the midpoints ``(w_{k−1} + 2w_k + w_{k+1})/4``.

``summary.md`` gives, per run, the entry step into the edge (`flows.eos.edge_entry_step`,
5 % tolerance) and the mean and spread of ηS after it (`flows.eos.sharpening_summary`).
The top Hessian eigenvalue is tracked every 50 (MSE) or 25 (cross-entropy) steps with
warm-started Lanczos (30 Krylov vectors).

Run: ``python benchmarks/eos_progressive_sharpening.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import flows
from flows.eigen_tracking import track
from flows.eos import sharpening_summary
from flows.plots.eos import plot_progressive_sharpening
from flows.problems import digits, mlp

run_discrete = eqx.filter_jit(flows.run_discrete)


def noisy_labels(data, fraction: float, seed: int = 0):
    """The same inputs with ``fraction`` of the labels redrawn uniformly at random."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(data.labels).copy()
    redraw = rng.random(labels.size) < fraction
    labels[redraw] = rng.integers(0, data.num_classes, int(redraw.sum()))
    one_hot = np.eye(data.num_classes)[labels]
    return eqx.tree_at(lambda d: d.y, data, jnp.asarray(one_hot, dtype=data.y.dtype))


def experiments(quick: bool) -> dict[str, dict]:
    if quick:
        return {
            "MSE": dict(data=digits(n=200, standardize=False), widths=[32, 32], loss="mse",
                        lrs=[0.12, 0.08], steps=600, every=20),
            "cross-entropy": dict(data=noisy_labels(digits(n=200, standardize=False), 0.3),
                                  widths=[32, 32], loss="cross_entropy", lrs=[1.0],
                                  steps=400, every=20, midpoint=True),
        }
    return {
        "MSE": dict(data=digits(n=1000, standardize=False), widths=[64, 64], loss="mse",
                    lrs=[0.07, 0.06, 0.05], steps=6000, every=50),
        "cross-entropy": dict(data=noisy_labels(digits(n=1000, standardize=False), 0.3),
                              widths=[32, 32], loss="cross_entropy", lrs=[1.0, 0.75, 0.5],
                              steps=3000, every=25, midpoint=True),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (seconds)")
    parser.add_argument("--out", type=Path, default=Path("runs/eos_progressive_sharpening"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    lines = [
        "# Progressive sharpening and the edge of stability (digits MLP, full-batch GD)",
        "",
        "| loss | η | 2/η | S after 1st track | entry step | mean ηS after entry "
        "| std ηS after entry | fraction within 10 % of 2 | final loss | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    panels = {}
    eigensolver = flows.Lanczos(30)
    for title, spec in experiments(args.quick).items():
        problem = mlp(spec["data"], spec["widths"], activation="tanh", loss=spec["loss"])
        runs = []
        for lr in spec["lrs"]:
            start = time.perf_counter()
            rule = flows.make_method(problem, "gd", lr)
            midpoint = spec.get("midpoint", False)
            # Midpoints need every iterate; otherwise save only the tracked ones.
            save_every = 1 if midpoint else spec["every"]
            output = run_discrete(problem, rule, spec["steps"], save_every)
            tracked = track(
                problem, output["params"], 1, steps=output["steps"], eigensolver=eigensolver,
                every=spec["every"] // save_every, midpoint=midpoint,
            )
            steps, sharpness = np.asarray(tracked.steps), np.asarray(tracked.sharpness)
            summary = sharpening_summary(steps, sharpness, lr)
            seconds = time.perf_counter() - start
            lines.append(
                f"| {title} | {lr:g} | {2 / lr:.2f} | {sharpness[1]:.2f} "
                f"| {int(summary.entry_step)} | {float(summary.mean_after):.3f} "
                f"| {float(summary.spread_after):.3f} | {float(summary.fraction_near_edge):.2f} "
                f"| {float(output['loss'][-1]):.2e} | {seconds:.0f} |"
            )
            print(lines[-1], flush=True)
            runs.append({"lr": lr, "steps": steps, "sharpness": sharpness,
                         "loss_steps": np.asarray(output["steps"]),
                         "loss": np.asarray(output["loss"])})
        where = "midpoints" if spec.get("midpoint") else "iterates"
        name = f"{title}, tanh {'-'.join(map(str, spec['widths']))}, λ₁ at the {where}"
        panels[name] = runs
    plot_progressive_sharpening(panels, args.out / "progressive_sharpening.png")
    lines += ["", f"Total {time.perf_counter() - begin:.0f} s (2-core CPU, no GPU, float32)."]
    text = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
