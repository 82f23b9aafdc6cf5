"""A method keeps one colour in every figure of a run and of a sweep."""

from pathlib import Path

import matplotlib.colors
import numpy as np

from flows.plots import runs as run_plots
from flows.plots import sweep as sweep_plots


def _line_colours(figure):
    return {
        line.get_label().split(" ")[0].rstrip(":"): matplotlib.colors.to_hex(line.get_color())
        for axes in figure.axes for line in axes.get_lines()
        if not line.get_label().startswith(("_", "2/η", "ηS"))
    }


def _capture(monkeypatch, module):
    figures = []

    def save(figure, path):
        figures.append(figure)
        return Path(path)

    monkeypatch.setattr(module, "save_figure", save)
    return figures


def test_a_method_has_one_colour_in_every_run_figure(monkeypatch, tmp_path):
    figures = _capture(monkeypatch, run_plots)
    steps = np.arange(5)
    runs = {
        "gd": {"steps": steps, "loss": np.ones(5), "eigenvalues": np.ones((5, 1))},
        "gradient_flow": {"steps": steps, "loss": np.ones(5), "eigenvalues": np.ones((5, 1)),
                          "distance": np.ones(5)},
        "central_flow": {"steps": steps, "loss": np.ones(5), "distance": np.ones(5),
                         "predicted_loss": np.full(5, 2.0)},
    }
    run_plots.plot_run(runs, 0.1, tmp_path, references={"gradient_flow": "gd"})
    assert len(figures) == 3
    predicted = [line for line in figures[0].axes[0].get_lines()
                 if line.get_label() == "central_flow: predicted L + ½⟨Σ,H⟩"]
    assert len(predicted) == 1 and np.all(predicted[0].get_ydata() == 2.0)
    seen = {}
    for figure in figures:
        for label, colour in _line_colours(figure).items():
            seen.setdefault(label, set()).add(colour)
    assert set(seen) == set(runs)
    assert all(len(colours) == 1 for colours in seen.values()), seen
    assert len({next(iter(c)) for c in seen.values()}) == 3  # and they differ


def test_a_method_has_one_colour_in_every_sweep_panel(monkeypatch, tmp_path):
    import flows

    figures = _capture(monkeypatch, sweep_plots)
    lrs = np.asarray([0.1, 0.2])

    def trajectory(name, eigenvalues):
        return flows.Trajectory(
            method=name, lr=lrs, steps=np.tile(np.arange(3), (2, 1)),
            params=np.ones((2, 3, 2)), loss=np.ones((2, 3)), eigenvalues=eigenvalues,
            status_code=np.zeros(2, int), stopped_at=-np.ones(2, int),
        )

    sweeps = {"gd": trajectory("gd", np.ones((2, 3, 1)) * 5),
              "gradient_flow": trajectory("gradient_flow", None)}
    sweep_plots.plot_sweep_summary(sweeps, tmp_path / "sweep.png", reference="gd")
    colours = {}
    for axes in figures[0].axes:
        for line in axes.get_lines():
            label = line.get_label()
            if label in sweeps:
                colours.setdefault(label, set()).add(matplotlib.colors.to_hex(line.get_color()))
    assert set(colours) == set(sweeps)
    assert all(len(c) == 1 for c in colours.values()), colours
