"""Text-guided router: the score (cosine, aggregated over text, softmax over tokens), the three
cumulative cut-off rules, γ = 1, spatial order, eval determinism vs training noise, hard selection."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from hires_vlm.connectors.router import RouterSettings, cumulative_count, route, text_similarity


def _data(n=40, L=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(L, d, generator=g)


def _reference_k(probs, gamma, cutoff):
    """Exact arithmetic on the float values: the prefix lengths each rule defines."""
    ps = sorted((Fraction(float(p)) for p in probs), reverse=True)
    csum, c = [], Fraction(0)
    for p in ps:
        c += p
        csum.append(c)
    g = Fraction(gamma)
    below = sum(1 for c in csum if c <= g)
    if cutoff == "official":
        return min(len(ps), below + 1)
    if cutoff == "within":
        return max(1, below)
    return next((i + 1 for i, c in enumerate(csum) if c >= g), len(ps))


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_score_is_softmax_of_aggregated_cosine(aggregate):
    local, text = _data()
    sim = F.cosine_similarity(local[:, None], text[None], dim=-1)
    agg = sim.sum(-1) if aggregate == "sum" else sim.mean(-1)
    torch.testing.assert_close(text_similarity(local, text, aggregate), agg)
    res = route(local, text, RouterSettings(gamma=0.5, aggregate=aggregate, temperature=0.7))
    torch.testing.assert_close(res.probs, torch.softmax(agg / 0.7, -1))


def test_sum_and_mean_select_differently_sharp():
    local, text = _data(n=64, L=20)
    s = route(local, text, RouterSettings(gamma=0.9, aggregate="sum")).indices.numel()
    m = route(local, text, RouterSettings(gamma=0.9, aggregate="mean")).indices.numel()
    assert s < m  # the sum over 20 text tokens is a 20× sharper softmax


@pytest.mark.parametrize("cutoff", ["reach", "official", "within"])
@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.75, 0.95])
def test_keeps_the_prefix_each_cutoff_defines(cutoff, gamma):
    local, text = _data(n=50, L=9, seed=3)
    res = route(local, text, RouterSettings(gamma=gamma, cutoff=cutoff, aggregate="sum"))
    k = _reference_k(res.probs.tolist(), gamma, cutoff)
    assert res.indices.numel() == k
    top = torch.argsort(res.probs, descending=True, stable=True)[:k]
    assert set(res.indices.tolist()) == set(top.tolist())
    if cutoff == "reach":  # the shortest prefix whose mass reaches γ
        mass = res.probs[res.indices].sum().item()
        assert mass >= gamma - 1e-6
        assert mass - res.probs[res.indices].min().item() < gamma


@pytest.mark.parametrize("gamma,expect", [
    (0.75, {"reach": 2, "official": 3, "within": 2}),  # a cumulative sum equals γ exactly
    (0.70, {"reach": 2, "official": 2, "within": 1}),  # the usual case: official == reach
    (0.50, {"reach": 1, "official": 2, "within": 1}),
    (0.99, {"reach": 4, "official": 4, "within": 3}),
])
def test_cutoff_rules_on_exact_masses(gamma, expect):
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
    for cutoff, k in expect.items():
        assert cumulative_count(probs, gamma, cutoff) == k, cutoff


@pytest.mark.parametrize("cutoff", ["reach", "official", "within"])
@pytest.mark.parametrize("training", [False, True])
def test_gamma_one_keeps_everything(cutoff, training):
    local, text = _data(n=100)
    res = route(local, text, RouterSettings(gamma=1.0, cutoff=cutoff), training=training)
    assert torch.equal(res.indices, torch.arange(100))


def test_spatial_order_is_restored():
    local, text = _data(n=80)
    res = route(local, text, RouterSettings(gamma=0.6))
    idx = res.indices
    assert 0 < idx.numel() < 80
    assert torch.all(idx[1:] > idx[:-1])


def test_deterministic_in_eval_noisy_in_training():
    local, text = _data(n=60, L=5)
    s = RouterSettings(gamma=0.8, aggregate="mean")
    a, b = route(local, text, s), route(local, text, s)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.probs, b.probs)
    torch.manual_seed(0)
    t1 = route(local, text, s, training=True)
    t2 = route(local, text, s, training=True)
    assert not torch.equal(t1.probs, t2.probs)
    assert not torch.equal(t1.indices, t2.indices)
    quiet = RouterSettings(gamma=0.8, aggregate="mean", noise_std=0.0)
    assert torch.equal(route(local, text, quiet, training=True).indices, a.indices)


def test_training_noise_is_gaussian_std_before_the_softmax():
    local, text = _data(n=30)
    s = RouterSettings(gamma=0.9, aggregate="sum", noise_std=0.1, temperature=2.0)
    torch.manual_seed(5)
    got = route(local, text, s, training=True).probs
    torch.manual_seed(5)
    noise = torch.randn(30) * 0.1
    ref = torch.softmax((text_similarity(local, text, "sum") + noise) / 2.0, -1)
    torch.testing.assert_close(got, ref)


def test_older_official_pre_softmax_flattens_the_scores():
    local, text = _data(n=200, L=30)
    head = route(local, text, RouterSettings(gamma=0.95, aggregate="sum"))
    old = route(local, text, RouterSettings(gamma=0.95, aggregate="sum", pre_softmax=0.5))
    agg = text_similarity(local, text, "sum")
    torch.testing.assert_close(old.probs, torch.softmax(torch.softmax(agg / 0.5, -1), -1))
    assert old.indices.numel() >= 0.9 * 200 > head.indices.numel()


def test_selection_is_hard_and_kept_tokens_carry_gradient():
    local, text = _data()
    local.requires_grad_(True)
    res = route(local, text, RouterSettings(gamma=0.5))
    assert not res.probs.requires_grad
    local[res.indices].sum().backward()
    assert local.grad[res.indices].abs().sum() > 0
    dropped = torch.ones(local.shape[0], dtype=torch.bool)
    dropped[res.indices] = False
    assert local.grad[dropped].abs().sum() == 0


def test_no_text_gives_uniform_scores():
    local, _ = _data(n=10)
    res = route(local, torch.zeros(0, 16), RouterSettings(gamma=0.5, cutoff="reach"))
    torch.testing.assert_close(res.probs, torch.full((10,), 0.1))
    assert res.indices.numel() == 5
    assert route(local, None, RouterSettings(gamma=1.0)).indices.numel() == 10


@pytest.mark.parametrize("kwargs", [{"gamma": 0.0}, {"gamma": 1.5}, {"aggregate": "max"}, {"cutoff": "top"},
                                    {"temperature": 0.0}, {"noise_std": -1.0}, {"pre_softmax": 0.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        RouterSettings(**kwargs)
