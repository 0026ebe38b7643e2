"""The rules: deconvnet, guided backpropagation and the gradient as mirrors of the ReLU, each against
its own autograd oracle at every layer of the chain architectures and torchvision's VGG and AlexNet;
rules chosen per mirror and per call; rules registered by users."""

from __future__ import annotations

import oracle
import pytest
import torch
import torchvision
from builders.test_torchvision import TAPS, real
from torch import nn

import deconv

ARCHS = ["zfnet", "vgg_bn", "tiny_vgg", "odd_convs"]
RULES = ["deconvnet", "guided", "gradient"]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_layer_matches_the_rules_oracle(
    arch: str, rule: str, request: pytest.FixtureRequest, gen: torch.Generator
) -> None:
    model, images, taps = request.getfixturevalue(arch)
    mirror = deconv.build_mirror(model, rule=rule)
    selections = oracle.selections_at(model, images, mirror.layer_names, 4, gen, taps)
    expected = oracle.project(model, images, selections, taps, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections), expected, min_nonzero=0.8)
    cropped = dict(mirror.projections(images, selections, crop=True))  # the cone path agrees with itself cut out
    assert cropped


@pytest.mark.parametrize("rule", ["guided", "gradient"])
@pytest.mark.parametrize("name", ["vgg11_bn", "alexnet"])
def test_torchvision_chains_under_each_rule(name: str, rule: str, gen: torch.Generator) -> None:
    model = real(getattr(torchvision.models, name))
    size = 64 if name == "alexnet" else 32
    images = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
    mirror = deconv.build_mirror(model)
    selections = oracle.selections_at(model, images, mirror.layer_names, 1, gen, TAPS)
    expected = oracle.project(model, images, selections, TAPS, rule=rule)
    oracle.assert_matches(mirror.project_many(images, selections, rule=rule), expected, min_nonzero=0.9)


def test_the_rules_differ_and_a_call_overrides_the_mirrors_rule(zfnet) -> None:
    model, images, _ = zfnet
    guided = deconv.build_mirror(model, rule="guided")
    plain = deconv.build_mirror(model)
    assert guided.rule == "guided" and plain.rule == "deconvnet"
    results = {rule: plain.project(images, layer="8", channel=3, rule=rule) for rule in RULES}
    assert torch.equal(guided.project(images, layer="8", channel=3), results["guided"])
    assert torch.equal(guided.project(images, layer="8", channel=3, rule="deconvnet"), results["deconvnet"])
    assert not torch.allclose(results["deconvnet"], results["guided"]) and not torch.allclose(
        results["guided"], results["gradient"]
    )
    assert isinstance(guided.stack[-2], deconv.layers.GuidedRectify)  # the explicit stack shows the default rule


def test_a_trace_serves_every_rule_without_another_forward_pass(zfnet) -> None:
    model, images, _ = zfnet
    mirror = deconv.build_mirror(model)
    trace = mirror.trace(images)
    selections = [(0, "4", 2, 3, 3), (2, "9", 1, 1, 1), (1, "12", 5)]
    expected = {rule: mirror.project_many(images, selections, rule=rule) for rule in RULES}
    calls: list[int] = []
    handle = model[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        for rule in RULES:
            assert torch.equal(mirror.project_many(images, selections, rule=rule, trace=trace), expected[rule])
    finally:
        handle.remove()
    assert calls == []  # no forward walk
    with pytest.raises(deconv.SelectionError, match="trace="):
        mirror.project_many(images[:2], selections[:1], trace=trace)


def test_users_register_rules_of_their_own(zfnet) -> None:
    model, images, _ = zfnet

    class Halved(deconv.layers.MirrorModule):
        def forward(self, signal: torch.Tensor) -> torch.Tensor:
            return 0.5 * torch.relu(signal)

    deconv.register_mirror(nn.ReLU, rule="halved")(lambda relu: Halved())
    try:
        assert "halved" in deconv.rules() and deconv.rules()[0] == "deconvnet"
        mirror = deconv.build_mirror(model, rule="halved")
        assert mirror.rules == deconv.rules()
        rec = mirror.project(images, layer="0", channel=1, position=(5, 5))
        assert torch.allclose(
            rec, mirror.project(images, layer="0", channel=1, position=(5, 5), rule="deconvnet")
        )  # no ReLU below
        deep = mirror.project(images, layer="4", channel=1)
        assert not torch.allclose(deep, mirror.project(images, layer="4", channel=1, rule="deconvnet"))
    finally:
        deconv.unregister_mirror(nn.ReLU, rule="halved")
    with pytest.raises(deconv.SelectionError, match="unknown rule 'halved'.*deconvnet, guided, gradient"):
        deconv.build_mirror(model, rule="halved")
    with pytest.raises(deconv.SelectionError, match="unknown rule"):
        deconv.build_mirror(model).project(images, layer="0", channel=0, rule="Guided")


def test_a_rule_is_a_registry_entry_and_names_work_wherever_a_rule_goes(zfnet) -> None:
    model, images, _ = zfnet
    guided = deconv.resolve_rule("guided")
    assert isinstance(guided, deconv.Rule) and str(guided) == "guided" and guided.description
    assert deconv.resolve_rule(guided) is guided and [str(deconv.resolve_rule(r)) for r in RULES] == RULES
    assert deconv.rules()[0] == "deconvnet" and all(isinstance(r, str) for r in deconv.rules())
    mirror = deconv.build_mirror(model, rule=guided)
    assert mirror.rule == "guided"
    by_name = mirror.project(images, layer="8", channel=3, rule="deconvnet")
    assert torch.equal(mirror.project(images, layer="8", channel=3, rule=deconv.resolve_rule("deconvnet")), by_name)
    for wrong in ("Guided", "", None, 3):
        with pytest.raises(deconv.SelectionError, match=r"unknown rule .*; valid rules: deconvnet, guided, gradient"):
            deconv.resolve_rule(wrong)  # type: ignore[arg-type]


def test_only_the_rules_a_call_uses_are_built(zfnet) -> None:
    model, images, _ = zfnet
    mirror = deconv.build_mirror(model)
    assert all(set(step.mirrors) == {"deconvnet"} for step in mirror.steps)  # the default rule's, at build time
    mirror.graph.run(images, (), None, ("guided",), False)
    assert all(set(step.mirrors) == {"deconvnet", "guided"} for step in mirror.steps)
    relu, conv = (next(s for s in mirror.steps if isinstance(s.layer, kind)) for kind in (nn.ReLU, nn.Conv2d))
    assert isinstance(relu.mirror_for("guided"), deconv.layers.GuidedRectify)
    assert conv.mirror_for("guided") is conv.mirror  # a rule with nothing of its own shares the default's mirror
