"""Tests of the SliME §2.3 bilinear study (hires_vlm.theory.bilinear / .cli).

Every test compares against an independently computed number or a sharp threshold, so that a
wrong derivation (e.g. a stability limit of 2/sigma1 instead of 1/sigma1, the eigenvalue instead
of the singular pair, a missing factor in Theorem 2) makes it fail.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import pytest

from hires_vlm.theory import bilinear as B
from hires_vlm.theory import cli as C

# ------------------------------------------------------------------------------------ helpers


def _balanced_start(problem, seed, norm=0.8):
    """Random directions, equal norms (|u0|^2 - |v0|^2 = 0, lr(|u0|^2+|v0|^2) < 2)."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(problem.d)
    v = rng.standard_normal(problem.d)
    return norm * u / np.linalg.norm(u), norm * v / np.linalg.norm(v)


def _gap(problem, traj):
    return traj.final_loss - B.rank_one_optimum(problem).loss_opt


# ------------------------------------------------------------------------------------ optimum


@pytest.mark.parametrize(
    "kw",
    [
        dict(d=16, seed=0, overlap=0.5),
        dict(d=5, seed=1, overlap=-0.7),
        dict(d=8, seed=2, overlap=None),
        dict(d=2, seed=3, overlap=0.05),
    ],
)
def test_optimum_closed_form_matches_svd_and_brute_force(kw):
    p = B.make_problem(**kw)
    opt = B.rank_one_optimum(p)
    svd = B.svd_optimum(p)
    s = svd["singular_values"]
    c = p.overlap
    assert opt.sigma1 == pytest.approx(1 + abs(c), abs=1e-14)
    assert opt.sigma2 == pytest.approx(1 - abs(c), abs=1e-14)
    np.testing.assert_allclose(s[:2], [opt.sigma1, opt.sigma2], atol=1e-13)
    assert np.all(np.abs(s[2:]) < 1e-13)  # rank 2
    assert opt.loss_opt == pytest.approx(0.5 * (1 - abs(c)) ** 2, abs=1e-14)
    assert svd["loss_opt"] == pytest.approx(opt.loss_opt, abs=1e-13)
    assert B.brute_force_optimum(p, seed=kw["seed"]) == pytest.approx(opt.loss_opt, abs=1e-12)
    # the closed-form minimiser attains it, and is the top singular pair of the SVD
    u, v = opt.balanced_minimiser()
    assert p.loss(u, v) == pytest.approx(opt.loss_opt, abs=1e-13)
    np.testing.assert_allclose(np.outer(u, v), svd["uv_opt"], atol=1e-12)


def test_optimum_non_unit_vectors():
    rng = np.random.default_rng(7)
    a, b = 1.7 * rng.standard_normal(6), 0.4 * rng.standard_normal(6)
    p = B.make_problem(a, b, normalize=False)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    opt = B.rank_one_optimum(p)
    assert opt.sigma1 == pytest.approx(na * nb + abs(a @ b), rel=1e-13)
    assert opt.loss_opt == pytest.approx(0.5 * (na * nb - abs(a @ b)) ** 2, rel=1e-12, abs=1e-14)
    assert B.svd_optimum(p)["loss_opt"] == pytest.approx(opt.loss_opt, rel=1e-10, abs=1e-13)
    assert B.brute_force_optimum(p) == pytest.approx(opt.loss_opt, rel=1e-10, abs=1e-13)


def test_negative_overlap_optimum_is_antiparallel_not_top_eigenvalue():
    """For a^T b < 0 the eigenvalue of largest |.| is negative: the best u v^T has v = -u
    (along a - b), and the best *symmetric PSD* u u^T (algebraic top eigenvalue 1 + c) is worse."""
    p = B.make_problem(d=6, seed=4, overlap=-0.5)
    opt = B.rank_one_optimum(p)
    assert opt.lambda_top == pytest.approx(-1.5)
    u, v = opt.balanced_minimiser()
    np.testing.assert_allclose(v, -u, atol=1e-15)
    assert abs(opt.e1 @ (p.a - p.b)) == pytest.approx(np.linalg.norm(p.a - p.b))
    assert opt.loss_opt == pytest.approx(0.125)
    assert opt.psd_rank1_loss == pytest.approx(0.5 * (1 - (-0.5)) ** 2)  # 1.125
    # no u u^T does better than psd_rank1_loss: check along a grid of directions in span(a, b)
    Q, _ = np.linalg.qr(p.basis)
    best = min(
        0.5 * (p.x_norm_sq - max(x @ p.X @ x, 0.0) ** 2)
        for x in (math.cos(t) * Q[:, 0] + math.sin(t) * Q[:, 1] for t in np.linspace(0, np.pi, 2001))
    )
    assert best == pytest.approx(opt.psd_rank1_loss, abs=1e-6)
    assert best > opt.loss_opt + 0.9


def test_hessian_sharpness_at_minimisers_is_norm_sum():
    """The derivation of the 1/sigma1 threshold: lambda_max(Hessian) at the minimiser
    (s e1, sigma1/s e1) equals s^2 + sigma1^2/s^2 (2 sigma1 when balanced)."""
    p = B.make_problem(d=4, seed=5, overlap=0.4)
    opt = B.rank_one_optimum(p)
    d = p.d

    def grad(w):
        gu, gv = p.grads(w[:d], w[d:])
        return np.concatenate([gu, gv])

    for s in (math.sqrt(opt.sigma1), 0.7, 2.0):
        w0 = np.concatenate([s * opt.e1, opt.sign * opt.sigma1 / s * opt.e1])
        assert np.linalg.norm(grad(w0)) < 1e-12
        eps = 1e-6
        H = np.stack([(grad(w0 + eps * e) - grad(w0 - eps * e)) / (2 * eps) for e in np.eye(2 * d)])
        top = np.linalg.eigvalsh(0.5 * (H + H.T))[-1]
        assert top == pytest.approx(s * s + opt.sigma1**2 / (s * s), rel=1e-7)
    assert B.lr_thresholds(p)["sim_gd_converge"] == pytest.approx(1 / opt.sigma1)


# ------------------------------------------------------------------------- alternating methods


@pytest.mark.parametrize("seed,overlap,d", [(0, 0.5, 16), (1, -0.3, 7), (2, 0.2, 3)])
def test_alternating_ls_reaches_optimum_at_power_iteration_rate(seed, overlap, d):
    p = B.make_problem(d=d, seed=seed, overlap=overlap)
    opt = B.rank_one_optimum(p)
    u0, v0 = _balanced_start(p, 100 + seed)
    tr = B.alternating_ls(p, u0, 80, v0=v0)
    assert _gap(p, tr) < 1e-13
    # tan(angle(u_t, e1)) contracts by exactly (sigma2/sigma1)^2 per iteration (t >= 1: in span)
    tan = np.array([np.linalg.norm(u - opt.e1 * (opt.e1 @ u)) / abs(opt.e1 @ u) for u in tr.us[1:8]])
    ratio = tan[1:] / tan[:-1]
    np.testing.assert_allclose(ratio, (opt.sigma2 / opt.sigma1) ** 2, rtol=1e-6)


def test_theorem2_recursion_holds_and_needs_unit_vectors():
    p = B.make_problem(d=12, seed=3, overlap=0.6)
    u0, _ = _balanced_start(p, 9)  # generic: has a component outside span(a, b)
    chk = B.theorem2_check(p, u0, steps=25)
    for k in ("paper", "gram", "derived"):
        assert chk.max_rel_residual[k] < 1e-8, k
        assert chk.max_angle[k] < 1e-8, k
    assert np.max(chk.power_angle) < 1e-8  # z_t ∝ M^{2t} z_0
    assert chk.top_angle[-1] < 1e-10  # converged to the top eigenvector of M ...
    np.testing.assert_allclose(np.abs(chk.top_eigvec_M), [2**-0.5, 2**-0.5], atol=1e-15)  # (1,1)/sqrt2
    # ... which the scale factor does not change: without 1/(|u|^2|v|^2) the residual is O(1)
    u = chk.z[3]
    assert np.linalg.norm(chk.z[4] - B.paper_M(p) @ B.paper_M(p) @ u) / np.linalg.norm(chk.z[4]) > 1e-2
    # non-unit a, b: only the derived (PG)^2 holds
    q = B.BilinearProblem(1.7 * p.a, 0.6 * p.b)
    chk2 = B.theorem2_check(q, u0, steps=25)
    assert chk2.max_rel_residual["derived"] < 1e-8
    assert chk2.max_rel_residual["paper"] > 1e-2
    assert chk2.max_rel_residual["gram"] > 1e-2


def test_theorem3_dynamics_and_eta_typo():
    p = B.make_problem(d=10, seed=6, overlap=0.5)
    chk = B.theorem3_check(p, 0.7, -0.2, lr=0.5, steps=150)
    assert chk.max_norm_mismatch < 1e-12  # |u_t| = |v_t|
    assert chk.max_swap_residual < 1e-12  # v_t = beta_t a + alpha_t b
    assert chk.max_rel_residual["derived"] < 1e-12
    assert chk.max_rel_residual["as_printed"] > 1e-3  # the proof's b-coefficient misses eta
    assert chk.lemma1_max_rel_residual < 1e-12
    # tau0 != 0 and a^T b > 0: nu/tau -> 0, i.e. GD reaches the optimum (tau -> +-1)
    assert abs(chk.nu[-1]) < 1e-10 and abs(abs(chk.tau[-1]) - 1) < 1e-10


# ------------------------------------------------------------------ simultaneous GD thresholds


@pytest.mark.parametrize("overlap", [0.5, -0.4, 0.25])
def test_sim_gd_threshold_is_one_over_sigma1(overlap):
    p = B.make_problem(d=8, seed=11, overlap=overlap)
    s1 = B.rank_one_optimum(p).sigma1
    for seed in range(3):
        u0, v0 = _balanced_start(p, seed)
        below = B.simultaneous_gd(p, u0, v0, 0.95 / s1, 1500)
        assert not below.diverged and _gap(p, below) < 1e-12
        for h in (1.05, 1.5):
            above = B.simultaneous_gd(p, u0, v0, h / s1, 1500)
            assert above.diverged or _gap(p, above) > 1e-4, (h, seed)
        # alternating *gradient* steps still converge at 1.3/sigma1
        alt = B.alternating_gd(p, u0, v0, 1.3 / s1, 1500)
        assert not alt.diverged and _gap(p, alt) < 1e-12


def test_sim_gd_diverges_above_two_over_sigma1():
    p = B.make_problem(d=8, seed=12, overlap=0.5)
    opt = B.rank_one_optimum(p)
    s1 = opt.sigma1
    for seed in range(4):
        u0, v0 = _balanced_start(p, 50 + seed)
        for h in (2.05, 2.5):
            assert B.simultaneous_gd(p, u0, v0, h / s1, 2000).diverged, (seed, h)
    # the balanced invariant family u = s v along e1 is the cubic map tau -> tau(1 + r(1 - tau^2)):
    # bounded (chaotic) for r = 1.95, escapes for r = 2.05
    u0 = 0.5 * opt.e1
    tr = B.simultaneous_gd(p, u0, opt.sign * u0, 1.95 / s1, 4000)
    assert not tr.diverged and _gap(p, tr) > 1e-3
    assert np.max(np.sum(tr.us**2, axis=1)) <= s1 * (2 + 1.95) / 1.95 + 1e-9  # invariant interval
    assert B.simultaneous_gd(p, u0, opt.sign * u0, 2.05 / s1, 4000).diverged


# ------------------------------------------------------------------------- degenerate starts


def test_gd_stuck_on_wrong_orientation_and_origin_but_not_on_partial_degeneracy():
    p = B.make_problem(d=10, seed=13, overlap=0.5)
    opt = B.rank_one_optimum(p)
    s1 = opt.sigma1
    rng = np.random.default_rng(0)
    w = 0.8 * rng.standard_normal(p.d) / math.sqrt(p.d)
    for h in (0.25, 0.9, 1.5):  # exact invariance of u = -s v, in floating point too
        tr = B.simultaneous_gd(p, w, -opt.sign * w, h / s1, 800)
        assert np.min(tr.losses) >= opt.saddle_loss - 1e-12
    tr = B.simultaneous_gd(p, w, -opt.sign * w, 0.9 / s1, 800)
    assert tr.final_loss == pytest.approx(opt.saddle_loss, abs=1e-12)
    # ... while alternating LS (which ignores v0) converges from the same start
    assert _gap(p, B.alternating_ls(p, w, 60, v0=-opt.sign * w)) < 1e-13
    # origin: gradient zero, stays
    z = np.zeros(p.d)
    tr = B.simultaneous_gd(p, z, z, 0.9 / s1, 50)
    assert np.all(tr.us == 0) and tr.final_loss == pytest.approx(opt.origin_loss)
    # u0 = 0 alone is NOT a trap for GD: u_1 = lr X v0
    tr = B.simultaneous_gd(p, z, w, 0.9 / s1, 800)
    assert _gap(p, tr) < 1e-12
    # ... but it is for alternating LS (v = argmin L(0, v) = 0: breakdown)
    tr = B.alternating_ls(p, z, 10, v0=w)
    assert tr.extras["breakdown"] == 0 and tr.final_loss == pytest.approx(opt.origin_loss)


def test_perp_top_direction_exact_arithmetic_on_aligned_problem():
    p = B.make_problem(d=6, overlap=0.5, aligned=True)
    opt = B.rank_one_optimum(p)
    assert opt.e1[0] == 1.0 and np.all(opt.e1[1:] == 0.0)  # e1 is a coordinate axis exactly
    s1 = opt.sigma1
    rng = np.random.default_rng(1)
    u0 = 0.4 * rng.standard_normal(p.d)
    v0 = 0.4 * rng.standard_normal(p.d)
    u0[0] = 0.0
    vp = v0.copy()
    vp[0] = 0.0
    # both _|_ e1: GD never gets below the saddle value and converges to the saddle
    tr = B.simultaneous_gd(p, u0, vp, 0.9 / s1, 600)
    assert np.min(tr.losses) >= opt.saddle_loss - 1e-12
    assert tr.final_loss == pytest.approx(opt.saddle_loss, abs=1e-10)
    assert np.all(tr.us[:, 0] == 0.0) and np.all(tr.vs[:, 0] == 0.0)
    # only u0 _|_ e1: GD escapes ...
    assert _gap(p, B.simultaneous_gd(p, u0, v0, 0.9 / s1, 600)) < 1e-12
    # ... but alternating LS (depends on u0 only) is stuck at the saddle
    tr = B.alternating_ls(p, u0, 60, v0=v0)
    assert tr.final_loss == pytest.approx(opt.saddle_loss, abs=1e-12)
    # paper's family, tau0 = 0 (alpha0 = -beta0): both methods stuck; tau0 != 0: both converge
    u_bad = 0.6 * (p.a - p.b)
    assert B.simultaneous_gd(p, u_bad, -u_bad, 0.9 / s1, 600).final_loss == pytest.approx(opt.saddle_loss)
    assert B.alternating_ls(p, u_bad, 60).final_loss == pytest.approx(opt.saddle_loss)
    u_ok = 0.6 * p.a - 0.5 * p.b
    v_ok = -0.5 * p.a + 0.6 * p.b
    assert _gap(p, B.simultaneous_gd(p, u_ok, v_ok, 0.9 / s1, 600)) < 1e-12
    assert _gap(p, B.alternating_ls(p, u_ok, 60)) < 1e-12


def test_rounding_breaks_non_exact_invariance_on_random_basis():
    """Same start type on a random basis: e1-components ~1e-17 grow and GD leaves the saddle."""
    p = B.make_problem(d=10, seed=14, overlap=0.5)
    opt = B.rank_one_optimum(p)
    rng = np.random.default_rng(2)
    u0, v0 = 0.4 * rng.standard_normal(p.d), 0.4 * rng.standard_normal(p.d)
    u0 -= opt.e1 * (opt.e1 @ u0)
    v0 -= opt.e1 * (opt.e1 @ v0)
    assert max(abs(opt.e1 @ u0), abs(opt.e1 @ v0)) < 1e-15
    tr = B.simultaneous_gd(p, u0, v0, 0.9 / opt.sigma1, 800)
    t_near = int(np.argmin(np.abs(tr.losses - opt.saddle_loss)))
    assert abs(tr.losses[t_near] - opt.saddle_loss) < 1e-6  # passes close to the saddle ...
    assert _gap(p, tr) < 1e-12  # ... and escapes to the optimum
    e1u = np.abs(tr.us @ opt.e1)
    assert e1u[t_near] < 1e-3 and e1u[-1] > 0.5  # via the e1-component seeded by rounding


# --------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bilinear")
    rc = C.main(["bilinear", "--out", str(out)])
    return rc, out


def test_cli_writes_json_and_png(cli_run):
    rc, out = cli_run
    assert rc == 0
    assert sorted(os.listdir(out)) == ["bilinear.json", "bilinear.png"]  # no temp files left
    png = (out / "bilinear.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    data = json.loads((out / "bilinear.json").read_text())
    P = data["problem"]
    assert P["loss_opt"] == pytest.approx(0.125) and P["svd_loss_opt"] == pytest.approx(0.125)
    assert P["brute_force_loss_opt"] == pytest.approx(0.125, abs=1e-12)
    assert data["thresholds"]["sim_gd_converge"] == pytest.approx(1 / 1.5)
    runs = data["runs"]
    assert runs["generic_0"]["alt_ls"]["status"] == "optimum"
    assert runs["generic_0"]["sim_gd@0.9"]["status"] == "optimum"
    assert runs["generic_0"]["sim_gd@1.1"]["status"] != "optimum"
    assert runs["generic_0"]["sim_gd@2.2"]["final_gap"] is None  # diverged -> null (strict JSON)
    assert data["theorem2"]["generic_start"]["max_rel_residual"]["paper"] < 1e-8


def test_cli_failure_statement_confirmed(cli_run):
    _, out = cli_run
    claims = json.loads((out / "bilinear.json").read_text())["claims"]
    assert len(claims) == 9
    bad = [c["id"] for c in claims if c["holds"] is not True]
    assert not bad, bad


def test_add_parser_registers_bilinear(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    C.add_parser(sub)
    args = parser.parse_args(["bilinear", "--out", str(tmp_path), "--lr", "0.3", "0.5", "--dim", "4"])
    assert args.func is C.run and args.lr == [0.3, 0.5] and args.dim == 4 and args.seed == 0
    assert C.main(["bilinear", "--out", str(tmp_path), "--dim", "1"]) == 2  # rejected, nothing written
    assert not os.listdir(tmp_path)
