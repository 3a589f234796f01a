"""SliME's gated mixture: zero-initialised gate (0.5 / 0.5), the three noise rules, the expert
modes, the shared projector and observable weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hires_vlm.connectors import GatedMixture, NoisyGate, build_projector


def _mixture(noise="official", dv=16, dl=24, g=4):
    torch.manual_seed(0)
    return GatedMixture(dv, g * g, heads=2, noise=noise), build_projector("mlp2x_gelu", dv, dl)


@pytest.mark.parametrize("noise", ["paper", "official", "none"])
def test_zero_init_weighs_the_experts_half_and_half(noise):
    mix, proj = _mixture(noise)
    mix.eval()
    x = torch.randn(2, 16, 16)
    out, w = mix(x, proj, "mix")
    assert w.shape == (2, 16, 2)
    torch.testing.assert_close(w, torch.full_like(w, 0.5))
    ref = 0.5 * proj(x) + 0.5 * proj(mix.resampler(x))
    torch.testing.assert_close(out, ref)
    assert out.shape == (2, 16, 24)


def test_gate_is_per_token_from_the_raw_feature():
    gate = NoisyGate(4, 2, "none")
    with torch.no_grad():
        gate.w_gate.copy_(torch.tensor([[1.0, -1.0], [0, 0], [0, 0], [0, 0]]))
    x = torch.tensor([[2.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    torch.testing.assert_close(gate(x), torch.softmax(torch.tensor([[2.0, -2.0], [-1.0, 1.0]]), -1))


def _noisy_reference(x, gate, rule, seed):
    logits = x @ gate.w_gate
    torch.manual_seed(seed)
    eps = torch.randn_like(logits)
    std = F.softplus(x @ gate.w_noise) if rule == "paper" else F.softplus(logits) + 0.01
    return torch.softmax(logits + eps * std, -1)


@pytest.mark.parametrize("rule", ["paper", "official"])
def test_training_noise_rule(rule):
    torch.manual_seed(1)
    gate = NoisyGate(8, 2, rule).train()
    with torch.no_grad():
        gate.w_gate.normal_()
        gate.w_noise.normal_()
    x = torch.randn(5, 8)
    torch.manual_seed(7)
    got = gate(x)
    torch.testing.assert_close(got, _noisy_reference(x, gate, rule, 7))
    other = "official" if rule == "paper" else "paper"
    assert not torch.allclose(got, _noisy_reference(x, gate, other, 7))
    gate.eval()
    torch.testing.assert_close(gate(x), torch.softmax(x @ gate.w_gate, -1))  # no noise in eval


def test_official_noise_ignores_w_noise_and_paper_noise_uses_it():
    x = torch.randn(6, 8)
    off = NoisyGate(8, 2, "official").train()
    with torch.no_grad():
        off.w_noise.fill_(100.0)
    torch.manual_seed(3)
    a = off(x)
    with torch.no_grad():
        off.w_noise.zero_()
    torch.manual_seed(3)
    torch.testing.assert_close(a, off(x))
    pap = NoisyGate(8, 2, "paper").train()
    with torch.no_grad():
        pap.w_noise.fill_(-50.0)  # softplus → 0: no noise at all
    torch.testing.assert_close(pap(x.abs() + 0.1), torch.full((6, 2), 0.5))  # x·W_noise ≪ 0


def test_no_noise_rule_is_deterministic_in_training():
    gate = NoisyGate(8, 2, "none").train()
    x = torch.randn(4, 8)
    torch.testing.assert_close(gate(x), torch.full((4, 2), 0.5))


def test_noise_moves_the_zero_init_gate_in_training():
    torch.manual_seed(0)
    gate = NoisyGate(8, 2, "official").train()
    w = gate(torch.randn(64, 8))
    assert w.std() > 0.05 and torch.allclose(w.sum(-1), torch.ones(64))


def test_bad_noise_rule_is_refused():
    with pytest.raises(ValueError, match="gate noise"):
        NoisyGate(4, 2, "gumbel")


def test_single_expert_modes():
    mix, proj = _mixture()
    x = torch.randn(2, 16, 16)
    out, w = mix(x, proj, "mlp")
    torch.testing.assert_close(out, proj(x))
    assert torch.all(w[..., 0] == 1) and torch.all(w[..., 1] == 0)
    out, w = mix(x, proj, "resampler")
    torch.testing.assert_close(out, proj(mix.resampler(x)))
    assert torch.all(w[..., 1] == 1)
    with pytest.raises(ValueError, match="gate mode"):
        mix(x, proj, "both")


@pytest.mark.parametrize("mode,expect", [
    ("mix", {"projector", "resampler", "gate.w_gate", "gate.w_noise"}),
    ("mlp", {"projector"}),
    ("resampler", {"projector", "resampler"}),
])
def test_gradients_per_mode(mode, expect):
    mix, proj = _mixture("paper")
    mix.train()
    mix(torch.randn(2, 16, 16), proj, mode)[0].square().mean().backward()
    got = set()
    if any(p.grad is not None for p in proj.parameters()):
        got.add("projector")
    if any(p.grad is not None for p in mix.resampler.parameters()):
        got.add("resampler")
    for n in ("w_gate", "w_noise"):
        if getattr(mix.gate, n).grad is not None:
            got.add(f"gate.{n}")
    assert got == expect


def test_zero_init_through_the_model_init_hook():
    """transformers' init would give W_g a normal init; the hook keeps it zero, and leaves loaded ones alone."""
    from transformers import initialization as init

    gate = NoisyGate(8, 2)
    with torch.no_grad():
        gate.w_gate.fill_(1.0)
        gate.w_noise.fill_(1.0)
    gate.init_parameters(init)
    assert torch.all(gate.w_gate == 0) and torch.all(gate.w_noise == 0)
    with torch.no_grad():
        gate.w_gate.fill_(2.0)
    gate.w_gate._is_hf_initialized = True
    gate.init_parameters(init)
    assert torch.all(gate.w_gate == 2.0)
