"""Method names → update rules and flows; a flow models only the rules it is derived for."""

import pytest

import flows
from flows.methods import default_optimizer, method_options
from flows.optimizers import GD, NormalizedGD, RMSProp, SqrtGD

from .helpers import quadratic_problem


@pytest.mark.parametrize(("flow", "optimizer"), [
    ("normalized_gd_flow", "rmsprop"), ("sqrt_gd_flow", "gd"), ("principal_flow", "rmsprop"),
    ("central_flow", "normalized_gd"), ("central_flow", "dal"),
])
def test_a_flow_refuses_an_optimizer_it_does_not_model(flow, optimizer):
    problem = quadratic_problem([1.0, 2.0, 3.0])[0]
    with pytest.raises(ValueError, match="does not model"):
        flows.make_method(problem, flow, 0.1, optimizer=optimizer)
    with pytest.raises(ValueError, match="does not model"):
        flows.simulate(problem, flow, lr=0.1, steps=2, optimizer=optimizer)


def test_each_flow_models_its_own_optimizer_by_default():
    problem = quadratic_problem([1.0, 2.0, 3.0])[0]
    expected = {"gradient_flow": ("gd", GD), "central_flow": ("gd", GD),
                "principal_flow": ("gd", GD),
                "normalized_gd_flow": ("normalized_gd", NormalizedGD),
                "sqrt_gd_flow": ("sqrt_gd", SqrtGD)}
    for flow, (name, rule) in expected.items():
        assert default_optimizer(flow) == name
        assert type(flows.make_method(problem, flow, 0.1).rule) is rule
    field = flows.make_method(problem, "gradient_flow", 0.1, optimizer="rmsprop")
    assert type(field.rule) is RMSProp
    assert "beta2" in method_options("central_flow", "rmsprop")
    assert "beta2" not in method_options("central_flow")
