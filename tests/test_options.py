"""Option values: checked when made, one name per concept, renamed keys still accepted."""

import diffrax
import pytest

import flows
from flows.options import RENAMED_OPTIONS


def test_integrator_values_are_checked_and_solvers_named():
    assert isinstance(flows.Integrator(solver="heun").solver, diffrax.Heun)
    assert flows.Integrator(rtol=1e-6) == flows.Integrator(rtol=1e-6)
    for kwargs, name in [({"rtol": -1.0}, "rtol"), ({"dt0": 0}, "dt0"),
                         ({"max_steps": 2.5}, "max_steps"), ({"solver": "rk99"}, "solver"),
                         ({"adjoint": "forward"}, "adjoint")]:
        with pytest.raises(ValueError, match=name):
            flows.Integrator(**kwargs)


def test_tracking_values_are_checked():
    assert isinstance(flows.Tracking(1, eigensolver="dense").eigensolver, flows.DenseEigh)
    for kwargs, name in [({"num_eigenvalues": -1}, "num_eigenvalues"),
                         ({"num_eigenvalues": 1, "every": 0}, "eigen_every"),
                         ({"num_eigenvalues": 1, "eigensolver": "qr"}, "eigensolver"),
                         ({"num_eigenvalues": 1, "midpoint": 1}, "midpoint")]:
        with pytest.raises(ValueError, match=name):
            flows.Tracking(**kwargs)


def test_methods_refuse_what_they_cannot_use():
    with pytest.raises(ValueError, match="unknown method"):
        flows.Method("lion")
    with pytest.raises(ValueError, match="bogus"):
        flows.Method("gd", options={"bogus": 1})
    with pytest.raises(ValueError, match="flows only"):
        flows.Method("gd", integrator=flows.Integrator(rtol=1e-3))
    with pytest.raises(ValueError, match="optimizer itself"):
        flows.Method("gd", optimizer="rmsprop")


def test_renamed_options_are_accepted_with_a_warning():
    assert RENAMED_OPTIONS == {"num_tracked": "num_eigenvalues"}
    with pytest.warns(DeprecationWarning, match="num_eigenvalues"):
        method = flows.Method.of("central_flow", num_tracked=3)
    assert method.options == {"num_eigenvalues": 3}
    with pytest.raises(ValueError, match="one option"):
        flows.Method.of("central_flow", num_tracked=3, num_eigenvalues=2)


def test_run_specs_are_checked():
    methods = {"gd": flows.Method("gd")}
    flows.RunSpec(methods=methods, lr=(0.1, 0.2), steps=10, save_every=5)
    for kwargs, name in [({"steps": 10, "save_every": 3}, "divide"),
                         ({"steps": 10, "checkpoint_every": 3, "save_every": 2}, "multiple"),
                         ({"steps": 10, "lr": ()}, "lr"),
                         ({"steps": 10, "references": {"gd": "gf"}}, "references")]:
        with pytest.raises(ValueError, match=name):
            flows.RunSpec(**{"methods": methods, "lr": 0.1, **kwargs})
