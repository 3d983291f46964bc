"""The eight objectives against independent float64 implementations, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from todi.loss import divergence as D
from todi import objectives
from todi.loss.divergence import DIVERGENCES, divergence

from _cases import CASES, IDS

NAMES = list(DIVERGENCES)


# ---------------------------------------------------------------------------------------------
# Independent float64 reference: straightforward probability-space formulas.
# ---------------------------------------------------------------------------------------------

def reference(name, student, teacher, temperature=1.0, **params):
    """float64 divergence per position; differentiable w.r.t. ``student`` (a float64 leaf)."""
    T = temperature.unsqueeze(-1) if torch.is_tensor(temperature) else temperature
    zs, zt = student / T, teacher / T
    q, p = torch.softmax(zs, -1), torch.softmax(zt, -1)
    lq, lp = torch.log(q), torch.log(p)
    fkl = (p * (lp - lq)).sum(-1)
    rkl = (q * (lq - lp)).sum(-1)
    if name == "forward_kl":
        return fkl
    if name == "reverse_kl":
        return rkl
    if name == "js_divergence":
        m = (p + q) / 2
        return 0.5 * (p * torch.log(p / m)).sum(-1) + 0.5 * (q * torch.log(q / m)).sum(-1)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "skewed_forward_kl":
        lam = params.get("skew_lambda", 0.1)
        return (p * torch.log(p / (lam * p + (1 - lam) * q))).sum(-1)
    if name == "skewed_reverse_kl":
        lam = params.get("skew_lambda", 0.1)
        return (q * torch.log(q / ((1 - lam) * p + lam * q))).sum(-1)
    if name == "ToDi":
        beta = params.get("beta", 1.0)
        alpha = torch.sigmoid(beta * torch.log(p / q)).detach()
        return (alpha * p * torch.log(p / q) + (1 - alpha) * q * torch.log(q / p)).sum(-1)
    if name == "generalized_jsd":
        b = params.get("beta", 0.5)
        if b in (0.0, 1.0):  # TRL's convention: the end points are the plain KLs
            return fkl if b == 0.0 else rkl
        m = b * p + (1 - b) * q
        return b * (p * torch.log(p / m)).sum(-1) + (1 - b) * (q * torch.log(q / m)).sum(-1)
    if name == "ab_divergence":
        a, b = params.get("alpha", 0.2), params.get("beta", 0.7)
        if (a, b) in ((1.0, 0.0), (0.0, 1.0)):
            return fkl if a == 1.0 else rkl
        if a and b:
            return -(p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(-1) / (a * b)
        if a:  # Cichocki et al.'s limit β → 0
            return (p**a * torch.log(p**a / q**a) - p**a + q**a).sum(-1) / a**2
        if b:
            return (q**b * torch.log(q**b / p**b) - q**b + p**b).sum(-1) / b**2
        return 0.5 * ((lp - lq) ** 2).sum(-1)
    if name == "adaptive_kl":
        a = params.get("adaptive_kl_alpha", 0.5)
        # The head/tail split is discontinuous in p: decide it on float32-rounded probabilities, as
        # the implementation under test does, so that float64 rounding cannot move the boundary.
        pd = p.detach().float().double().reshape(-1, p.shape[-1])
        qd = q.detach().float().double().reshape(-1, p.shape[-1])
        w = torch.empty(pd.shape[0], dtype=torch.float64)
        for r in range(pd.shape[0]):  # row by row, the way the paper describes it
            order = sorted(range(pd.shape[1]), key=lambda i: pd[r, i].item())
            cum, g_head, g_tail = 0.0, 0.0, 0.0
            for i in order:
                cum += pd[r, i].item()
                gap = abs(pd[r, i].item() - qd[r, i].item())
                if cum <= a:
                    g_tail += gap
                else:
                    g_head += gap
            w[r] = g_head / (g_head + g_tail) if g_head + g_tail > 0 else 0.5
        w = w.reshape(p.shape[:-1])
        return w * fkl + (1 - w) * rkl
    raise AssertionError(name)


def make_logits(*shape, scale=3.0, dtype=torch.float32, seed=0):
    """Random logits whose values in a row are at least 1e-3 apart.

    AKL's head/tail split is discontinuous where two teacher probabilities tie at the boundary
    (which of the two is "tail" is arbitrary), so near-ties would make any comparison flaky.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    values, order = x.sort(-1)
    values = values + 1e-3 * torch.arange(x.shape[-1], dtype=x.dtype)  # strictly increasing gaps
    return torch.empty_like(x).scatter_(-1, order, values).to(dtype)


def value_and_grad(fn, student):
    leaf = student.detach().clone().requires_grad_(True)
    out = fn(leaf)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)  # non-uniform upstream grad
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_value_and_gradient_match_float64(name, params, temperature):
    student = make_logits(3, 5, 67, seed=1)
    teacher = make_logits(3, 5, 67, seed=2)
    val, grad = value_and_grad(
        lambda s: divergence(name, s, teacher, temperature=temperature, impl="reference", **params), student
    )
    ref_val, ref_grad = value_and_grad(
        lambda s: reference(name, s, teacher.double(), temperature, **params), student.double()
    )
    assert val.dtype == torch.float32 and val.shape == (3, 5)
    torch.testing.assert_close(val.double(), ref_val, rtol=1e-4, atol=2e-6)
    # float32 rounding of log-probabilities around -30 (T = 0.5) limits the absolute accuracy
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,params", CASES[::2], ids=IDS[::2])
def test_per_position_temperature_tensor(name, params):
    student, teacher = make_logits(4, 6, 50, seed=3), make_logits(4, 6, 50, seed=4)
    temps = torch.rand(4, 6, generator=torch.Generator().manual_seed(5)) * 3 + 0.3
    val, grad = value_and_grad(lambda s: divergence(name, s, teacher, temperature=temps, **params), student)
    ref_val, ref_grad = value_and_grad(
        lambda s: reference(name, s, teacher.double(), temps.double(), **params), student.double()
    )
    torch.testing.assert_close(val.double(), ref_val, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=2e-6)
    # and each position equals the scalar-temperature call at its temperature
    for idx in [(0, 0), (3, 5)]:
        single = divergence(name, student[idx], teacher[idx], temperature=float(temps[idx]), **params)
        torch.testing.assert_close(val[idx], single, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ToDi's identities and the paper's gradient claim
# ---------------------------------------------------------------------------------------------

def test_todi_beta1_value_is_fkl_plus_rkl_but_gradient_differs():
    student, teacher = make_logits(6, 40, seed=6), make_logits(6, 40, seed=7)
    todi_v, todi_g = value_and_grad(lambda s: divergence("ToDi", s, teacher, beta=1.0), student)
    sum_v, sum_g = value_and_grad(
        lambda s: divergence("forward_kl", s, teacher) + divergence("reverse_kl", s, teacher), student
    )
    torch.testing.assert_close(todi_v, sum_v, rtol=1e-5, atol=1e-6)
    assert (todi_g - sum_g).abs().max() > 1e-2  # the detached weights change the gradient

    # ...and equals the gradient of α·FKL_i + (1−α)·RKL_i with α = p/(p+q) held constant.
    def detached_mix(s):
        ls, lt = torch.log_softmax(s.double(), -1), torch.log_softmax(teacher.double(), -1)
        q, p = ls.exp(), lt.exp()
        alpha = (p / (p + q)).detach()
        return (alpha * p * (lt - ls) + (1 - alpha) * q * (ls - lt)).sum(-1)

    _, mix_g = value_and_grad(detached_mix, student.double())
    torch.testing.assert_close(todi_g.double(), mix_g.double(), rtol=1e-4, atol=1e-6)


def test_todi_small_beta_tends_to_half_jeffreys():
    student, teacher = make_logits(5, 30, seed=8), make_logits(5, 30, seed=9)
    half = (divergence("fkl", student, teacher) + divergence("rkl", student, teacher)) / 2
    far = divergence("ToDi", student, teacher, beta=1.0)
    near = divergence("ToDi", student, teacher, beta=1e-3)
    nearer = divergence("ToDi", student, teacher, beta=1e-6)
    assert (near - half).abs().max() < (far - half).abs().max()
    torch.testing.assert_close(nearer, half, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_todi_gradient_follows_fkl_when_underestimated_and_rkl_when_overestimated(beta):
    """Paper, Sec. 3: per vocabulary entry, ∂/∂log q of ToDi ≈ FKL's where p > q, RKL's where q > p."""
    probs_t = torch.tensor([0.30, 0.001, 0.349, 0.35], dtype=torch.float64)  # teacher p
    probs_s = torch.tensor([0.001, 0.30, 0.35, 0.349], dtype=torch.float64)  # student q
    under, over = 0, 1  # entry 0: student underestimates (p ≫ q); entry 1: overestimates (q ≫ p)
    t = probs_t.log().float()

    def entry_grad(terms_fn, **kw):
        s = probs_s.log().float().requires_grad_(True)
        terms_fn(s, t, **kw).sum().backward()
        return s.grad

    def terms(name):  # the registry entry's per-entry terms
        return lambda s, t, **kw: objectives.get(name).terms(s, t, None, **kw)

    g_todi = entry_grad(terms("ToDi"), beta=beta)
    g_fkl, g_rkl = entry_grad(terms("forward_kl")), entry_grad(terms("reverse_kl"))
    gap_under = (g_fkl[under] - g_rkl[under]).abs()
    gap_over = (g_fkl[over] - g_rkl[over]).abs()
    assert (g_todi[under] - g_fkl[under]).abs() < 0.01 * gap_under
    assert (g_todi[over] - g_rkl[over]).abs() < 0.01 * gap_over
    # signs: FKL's push raises an underestimated entry, RKL's lowers an overestimated one
    assert g_todi[under] < 0 < g_todi[over]


# ---------------------------------------------------------------------------------------------
# Edge cases: equal inputs, ±inf, masks, dtypes, shapes, bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_equal_inputs_give_zero_value_and_gradient(name):
    logits = make_logits(4, 9, 120, seed=10)
    val, grad = value_and_grad(lambda s: divergence(name, s, logits, temperature=2.0), logits)
    assert torch.isfinite(val).all() and torch.isfinite(grad).all()
    assert val.abs().max() < 1e-6
    assert grad.abs().max() < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_shared_inf_entries_are_ignored(name):
    student, teacher = make_logits(3, 4, 50, seed=11), make_logits(3, 4, 50, seed=12)
    dead = torch.zeros(50, dtype=torch.bool)
    dead[[0, 7, 49]] = True
    s_inf, t_inf = student.clone(), teacher.clone()
    s_inf[..., dead], t_inf[..., dead] = -math.inf, -math.inf
    s_inf[..., 20], t_inf[..., 20] = math.inf, math.inf  # a shared +inf entry is ignored too
    dead[20] = True
    val, grad = value_and_grad(lambda s: divergence(name, s, t_inf, temperature=1.5), s_inf)
    ref, ref_grad = value_and_grad(lambda s: divergence(name, s, teacher[..., ~dead], temperature=1.5), student[..., ~dead])
    torch.testing.assert_close(val, ref, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad[..., ~dead], ref_grad, rtol=1e-5, atol=1e-6)
    assert (grad[..., dead] == 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_one_sided_inf_and_dead_rows_stay_finite(name):
    student, teacher = make_logits(2, 3, 40, seed=13), make_logits(2, 3, 40, seed=14)
    student[0, 0, 5] = -math.inf  # the student excludes an entry the teacher has
    teacher[0, 1, 6] = -math.inf  # and vice versa
    student[1, 2, :] = -math.inf  # a row without any finite logit
    val, grad = value_and_grad(lambda s: divergence(name, s, teacher), student)
    assert torch.isfinite(val).all() and torch.isfinite(grad).all()
    assert val[1, 2] == 0 and (grad[1, 2] == 0).all()
    assert grad[0, 0, 5] == 0  # an entry outside the student's distribution gets no gradient
    # (entry 6 of row (0, 1) still gets one: it is in the student's softmax normaliser)


@pytest.mark.parametrize("name", NAMES)
def test_mask_zeroes_values_and_gradients(name):
    student, teacher = make_logits(2, 5, 30, seed=15), make_logits(2, 5, 30, seed=16)
    mask = torch.tensor([[True, False, True, True, False], [False, False, True, False, True]])
    val, grad = value_and_grad(lambda s: divergence(name, s, teacher, mask=mask), student)
    full = divergence(name, student, teacher)
    torch.testing.assert_close(val[mask], full[mask])
    assert (val[~mask] == 0).all() and (grad[~mask] == 0).all() and (grad[mask] != 0).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_inputs_compute_in_float32(name, dtype):
    student, teacher = make_logits(4, 64, dtype=dtype, seed=17), make_logits(4, 64, dtype=dtype, seed=18)
    params = {"adaptive_kl_alpha": 0.5} if name == "adaptive_kl" else {}
    val, grad = value_and_grad(lambda s: divergence(name, s, teacher, temperature=2.0, **params), student)
    assert val.dtype == torch.float32 and grad.dtype == dtype
    # same inputs upcast: only float32 rounding separates the two
    ref, ref_grad = value_and_grad(
        lambda s: reference(name, s, teacher.double(), 2.0, **params), student.double()
    )
    torch.testing.assert_close(val.double(), ref, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-2, atol=2e-3)  # grad is stored in half


def test_any_rank():
    s, t = make_logits(2, 3, 4, 33, seed=19), make_logits(2, 3, 4, 33, seed=20)
    full = divergence("ToDi", s, t)
    assert full.shape == (2, 3, 4)
    assert divergence("ToDi", s[1, 2, 3], t[1, 2, 3]).shape == ()
    torch.testing.assert_close(divergence("ToDi", s[1, 2, 3], t[1, 2, 3]), full[1, 2, 3])


def test_aliases_and_unknown_names():
    s, t = make_logits(3, 10, seed=21), make_logits(3, 10, seed=22)
    for alias, official in D.ALIASES.items():
        torch.testing.assert_close(divergence(alias, s, t), divergence(official, s, t))
    with pytest.raises(ValueError, match="forward_kl.*ToDi"):
        divergence("kullback", s, t)


def test_bad_parameters_are_clear_errors():
    s, t = make_logits(3, 10, seed=23), make_logits(3, 10, seed=24)
    with pytest.raises(TypeError, match="beta"):
        divergence("forward_kl", s, t, beta=2.0)
    with pytest.raises(ValueError, match="skew_lambda"):
        divergence("skewed_forward_kl", s, t, skew_lambda=1.5)
    with pytest.raises(ValueError, match="beta"):
        divergence("ToDi", s, t, beta=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        divergence("ToDi", s, t, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        divergence("ToDi", s, t[:, :9])
    with pytest.raises(ValueError, match="impl"):
        divergence("ToDi", s, t, impl="cuda-magic")


def test_objective_params_picks_what_each_objective_takes():
    available = {"beta": 2.0, "skew_lambda": 0.2, "adaptive_kl_alpha": 0.4}
    assert D.objective_params("ToDi", **available) == {"beta": 2.0}
    assert D.objective_params("srkl", **available) == {"skew_lambda": 0.2}
    assert D.objective_params("fkl", **available) == {}


def test_todi_alpha_diagnostic():
    s, t = make_logits(4, 50, seed=25), make_logits(4, 50, seed=26)
    alpha = D.todi_alpha(s, t)
    p, q = torch.softmax(t.double(), -1), torch.softmax(s.double(), -1)
    torch.testing.assert_close(alpha.double(), (p * p / (p + q)).sum(-1), rtol=1e-5, atol=1e-6)
    assert ((alpha > 0) & (alpha < 1)).all()
