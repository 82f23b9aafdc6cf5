"""Where the time of a central-flow step at the edge goes, piece by piece, at each model size.

The problems of ``scale.py`` (200 digits, ½‖f − y‖², tanh; ``10k``, ``100k``, ``100k-cnn``,
``1M``), GD's central flow at η = 2.2/λ₁(w₀) with the default options, at w₀ with the top
``--active`` eigenvalues at the edge. Each piece is jitted alone on the same inputs and
timed as the best of ``--repeats`` calls after its compilation:

- ``gradient``: one gradient (a GD step's work);
- ``hvp``: one Hessian-vector product;
- ``refinement``: the warm-started block Rayleigh–Ritz refinement of the eigenvectors
  (``refine_iterations`` iterations, a block of HVPs each, plus the first block);
- ``third derivatives``: ``g_ij = ∇(u_iᵀHu_j)`` for the r(r+1)/2 pairs at the edge;
- ``evaluation``: the rates at a point with the basis and ``g_ij`` given (gradient, edge
  system, complementarity problem, rates), done four times per step (RK4);
- ``held geometry``: the eigenvalues of the held basis (`refresh_interval` > 1).

A refreshed step is refinement + third derivatives + 4 evaluations; a held step
4 evaluations + held geometry (compare ``scale.py``'s measured ms/step).

    python benchmarks/step_profile.py --sizes 10k 100k-cnn

writes ``profile.json`` and ``profile.md`` to ``--out`` (default ``runs/scale/``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scale import ROOT, SIZES, build, machine, save

PIECES = ("gradient", "hvp", "refinement", "third derivatives", "evaluation", "held geometry")


def best_time(fn, *args, repeats: int) -> float:
    """Best wall seconds of ``fn(*args)`` over ``repeats`` calls, after a compiling call."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def profile(size: str, dtype: str, active: int, repeats: int) -> dict:
    problem, top, _ = build(size, dtype)
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import flows
    from flows.linalg import Lanczos, hvp
    from flows.vector_fields.base import VectorField
    from flows.vector_fields.central_flow import _active_third_derivatives

    lr = 2.2 / top
    # A short Lanczos for the starting basis: the pieces' cost does not depend on how well
    # it is converged, and a full one costs minutes at 100k parameters on a CPU.
    field = flows.CentralFlow(problem, flows.optimizers.GD(jnp.asarray(lr, problem.w0.dtype)),
                               eigensolver=Lanczos(num_matvecs=20))
    w, state = VectorField.initial_state(field)
    t = jnp.zeros((), w.dtype)
    # Every piece takes the field (hence the data) as an argument, not as a constant.
    jit = eqx.filter_jit
    geometry = jit(lambda field, w: field._exact_geometry(t, w, state))(field, w)
    geometry = eqx.tree_at(lambda g: g.num_active, geometry, jnp.asarray(active))

    def third_derivatives(field, w, u):
        return _active_third_derivatives(field.problem.flat_loss, w, u, active)

    third = jit(third_derivatives)(field, w, geometry.u)
    curvature = jnp.diag(geometry.values[: field.edge_size])
    pieces = {
        "gradient": (jit(lambda field, w: jax.grad(field.problem.flat_loss)(w)), field, w),
        "hvp": (jit(lambda field, w, v: hvp(field.problem.flat_loss, w, v)), field, w,
                geometry.vectors[:, 0]),
        "refinement": (jit(lambda field, w, v: field._refined_geometry(t, w, state, v)),
                       field, w, geometry.vectors),
        "third derivatives": (jit(third_derivatives), field, w, geometry.u),
        "evaluation": (
            jit(lambda field, w, g, c, third: field._evaluate(t, w, state, g, c, third)[0]),
            field, w, geometry, curvature, third,
        ),
        "held geometry": (
            jit(lambda field, w, g, c: field._held_geometry(t, w, state, g, c)),
            field, w, geometry, curvature,
        ),
    }
    ms = {name: 1e3 * best_time(fn, *args, repeats=repeats) for name, (fn, *args) in
          pieces.items()}
    ms["refreshed step"] = ms["refinement"] + ms["third derivatives"] + 4 * ms["evaluation"]
    ms["held step"] = 4 * ms["evaluation"] + ms["held geometry"]
    record = {"size": size, "params": problem.num_params, "dtype": dtype, "active": active,
              "device": str(jax.devices()[0].device_kind), "ms": ms}
    print(json.dumps(record), flush=True)
    return record


def table(records: list[dict]) -> str:
    names = PIECES + ("refreshed step", "held step")
    lines = ["| size | parameters | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]
    for r in records:
        gradient = r["ms"]["gradient"]
        cells = [f"{r['ms'][n]:.3g} ({r['ms'][n] / gradient:.1f})" for n in names]
        lines.append(f"| {r['size']} | {r['params']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--active", type=int, default=2,
                        help="eigenvalues at the edge (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scale")
    args = parser.parse_args()
    if not 1 <= args.active <= 5:
        parser.error(f"--active must be between 1 and 5 (the tracked eigenvalues), "
                     f"got {args.active}")
    records = [profile(size, args.dtype, args.active, args.repeats) for size in args.sizes]
    where = machine(records[0]["device"])
    text = (f"Machine: {where}; dtype {args.dtype}; {args.active} at the edge; ms (÷ a "
            f"gradient)\n\n{table(records)}\n")
    save(args.out, "profile", "profile", text, {"machine": where, "records": records})
    print(text)


if __name__ == "__main__":
    main()
