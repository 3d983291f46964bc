"""The chunked implementation against the reference: values, gradients, edge cases, memory."""

from __future__ import annotations

import math

import pytest
import torch

from todi import kernels
from todi.loss.criterion import DistillationLoss, KDPlan
from todi.loss.divergence import DIVERGENCES, divergence
from todi.kernels import LossSpec, LossInputs, chunked, per_row_loss, reference_loss
from todi.kernels.profiling import peak_extra_bytes

from _cases import CASES, IDS
from _logits import make_pair


def value_and_grad(fn, student):
    leaf = student.detach().clone().requires_grad_(True)
    out = fn(leaf)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)  # non-uniform upstream
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


@pytest.mark.parametrize("per_position_temperature", [False, True], ids=["T=2", "T-tensor"])
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_chunked_matches_reference(name, params, per_position_temperature):
    s, t = make_pair(3, 7, 203, seed=1)  # V = 203: no power of two anywhere
    g = torch.Generator().manual_seed(2)
    temperature = torch.rand(3, 7, generator=g) * 2 + 0.4 if per_position_temperature else 2.0
    mask = torch.rand(3, 7, generator=g) > 0.25
    mask[0, 0] = mask[0, 1] = mask[0, 2] = mask[0, 3] = True  # keep the special rows

    def run(impl):
        return value_and_grad(
            lambda x: divergence(name, x, t, temperature=temperature, mask=mask, impl=impl, **params), s
        )

    val, grad = run("chunked")
    ref_val, ref_grad = run("reference")
    assert val.dtype == torch.float32 and val.shape == (3, 7)
    assert torch.isfinite(val).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(val, ref_val, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=2e-6)
    assert (val[~mask] == 0).all() and (grad[~mask] == 0).all()
    flat_val, flat_grad = val.view(-1), grad.view(-1, 203)
    assert flat_val[2] == 0 and flat_val[3] == 0 and (flat_grad[2] == 0).all() and (flat_grad[3] == 0).all()
    assert flat_grad[0, 3] == 0 and flat_grad[1, 5] == 0 and (grad[..., 7] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(DIVERGENCES))
def test_half_precision_inputs(name, dtype):
    s, t = make_pair(4, 9, 130, dtype=dtype, seed=3)
    val, grad = value_and_grad(lambda x: divergence(name, x, t, temperature=1.5, impl="chunked"), s)
    ref_val, ref_grad = value_and_grad(lambda x: divergence(name, x, t, temperature=1.5, impl="reference"), s)
    assert val.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(val, ref_val, rtol=1e-5, atol=2e-6)
    # both round a float32 gradient to the half type; the upstream weights add one more rounding here
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-4)


def test_strided_views_are_read_without_a_copy():
    """The criterion compares [..., :V] of logits padded to different vocabulary sizes."""
    s_wide, t_wide = make_pair(2, 5, 150, seed=4, specials=False)
    s_view, t_view = s_wide[..., :131], t_wide[..., :131]
    rows = kernels.flatten_rows(s_view)
    assert rows.data_ptr() == s_view.data_ptr() and rows.stride(0) == 150
    val, grad = value_and_grad(lambda x: divergence("ToDi", x[..., :131], t_view, impl="chunked"), s_wide)
    ref_val, ref_grad = value_and_grad(
        lambda x: divergence("ToDi", x, t_view.contiguous(), impl="reference"), s_view.contiguous()
    )
    torch.testing.assert_close(val, ref_val)
    torch.testing.assert_close(grad[..., :131], ref_grad, rtol=1e-5, atol=1e-6)
    assert (grad[..., 131:] == 0).all()


def test_chunk_size_does_not_change_results():
    s, t = make_pair(40, 77, seed=5)
    spec = LossSpec.make("ToDi", {"beta": 2.0})
    inp = LossInputs(
        student=s, teacher=t, vocab=77, labels=None, kd_mask=torch.ones(40, dtype=torch.bool),
        temperature=1.3, kd_weight=1.0, ce_weight=0.0,
    )
    results = [chunked.forward(spec, inp, want_grad=True, want_diagnostics=True, chunk_size=c) for c in (1, 6, 40)]
    for other in results[1:]:
        torch.testing.assert_close(other.kd, results[0].kd, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(other.grad, results[0].grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(other.diagnostics["todi_alpha"], results[0].diagnostics["todi_alpha"], rtol=1e-6, atol=1e-7)


def test_fully_masked_input_gives_zero_and_a_connected_graph():
    s, t = make_pair(3, 4, 50, seed=6)
    val, grad = value_and_grad(
        lambda x: divergence("js", x, t, mask=torch.zeros(3, 4, dtype=torch.bool), impl="chunked"), s
    )
    assert (val == 0).all() and (grad == 0).all()


def test_any_rank_including_a_single_position():
    s, t = make_pair(2, 3, 33, seed=7, specials=False)
    full = divergence("srkl", s, t, impl="chunked")
    single = divergence("srkl", s[1, 2], t[1, 2], impl="chunked")
    assert single.shape == () and full.shape == (2, 3)
    torch.testing.assert_close(single, full[1, 2])


def test_teacher_or_temperature_requiring_grad_runs_the_reference():
    s, t = make_pair(3, 5, 40, seed=8, specials=False)
    teacher = t.clone().requires_grad_(True)
    student = s.clone().requires_grad_(True)
    divergence("ToDi", student, teacher, impl="chunked").sum().backward()
    t_ref, s_ref = t.clone().requires_grad_(True), s.clone().requires_grad_(True)
    divergence("ToDi", s_ref, t_ref, impl="reference").sum().backward()
    torch.testing.assert_close(teacher.grad, t_ref.grad)
    torch.testing.assert_close(student.grad, s_ref.grad)
    temps = torch.full((3, 5), 2.0, requires_grad=True)
    divergence("fkl", s, t, temperature=temps, impl="chunked").sum().backward()
    assert temps.grad is not None and temps.grad.abs().sum() > 0


def test_second_backward_is_a_clear_error():
    s, t = make_pair(3, 5, 40, seed=9, specials=False)
    leaf = s.clone().requires_grad_(True)
    out = divergence("ToDi", leaf, t, impl="chunked").sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="reference"):
        out.backward()


def test_impl_resolution_and_errors():
    x = torch.zeros(2, 3)
    spec = LossSpec.make("ToDi")

    def inputs(teacher=x, **kw):
        return LossInputs(student=x, teacher=teacher, vocab=3, labels=None, kd_mask=torch.ones(2, dtype=torch.bool),
                          temperature=1.0, kd_weight=1.0, ce_weight=0.0, **kw)

    assert kernels.choose_backend("auto", spec, inputs()) == "chunked"
    assert kernels.choose_backend("reference", spec, inputs()) == "reference"
    with pytest.raises(ValueError, match="impl"):
        kernels.choose_backend("fast", spec, inputs())
    with pytest.raises(ValueError, match="impl"):
        DistillationLoss("ToDi", impl="fast")
    if not kernels.triton_available():
        with pytest.raises(ValueError, match="triton"):
            divergence("ToDi", x, x, impl="triton")
    # the fallbacks: gradients the kernels do not compute → reference; sparse targets → chunked
    assert kernels.choose_backend("chunked", spec, inputs(x.clone().requires_grad_(True))) == "reference"
    sparse = kernels.SparseTargets(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 2), 1.0)
    assert kernels.choose_backend("auto", spec, inputs(None, sparse=sparse)) == "chunked"
    with pytest.raises(ValueError, match="does not differentiate the teacher logits"):
        kernels.choose_backend("chunked", spec, inputs(x.clone().requires_grad_(True)), fused=True)
    with pytest.raises(ValueError, match="computes gradients in the forward"):
        kernels.choose_backend("reference", spec, inputs(), fused=True)


def test_bad_labels_are_a_clear_error():
    crit = DistillationLoss("ToDi", impl="chunked")
    logits, teacher = make_pair(2, 4, 30, seed=10, specials=False)
    labels = torch.tensor([[1, 2, -100, 30], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 30\)"):
        crit(logits, labels, teacher)


# ---------------------------------------------------------------------------------------------
# Cross-entropy fused with the divergence (the criterion's path)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature,vocab", [(1.0, 60), (2.0, 60), (1.0, 53)], ids=["T1-shared", "T2", "padded"])
@pytest.mark.parametrize("name,params", CASES[::3] + [("ToDi", {})], ids=IDS[::3] + ["ToDi"])
def test_rows_with_cross_entropy_match_reference(name, params, temperature, vocab):
    n = 24
    s, t = make_pair(n, 60, seed=11, specials=False)
    s[0, 3], t[1, 4], t[2, :] = -math.inf, math.inf, -math.inf  # (a student +inf would make CE NaN)
    g = torch.Generator().manual_seed(12)
    labels = torch.randint(0, 60, (n,), generator=g)
    labels[::5] = -100
    kd_mask = torch.rand(n, generator=g) > 0.3
    kd_weight = torch.rand(n, generator=g) + 0.5
    spec = LossSpec.make(name, params)

    def run(fn):
        leaf = s.clone().requires_grad_(True)
        inp = LossInputs(
            student=leaf, teacher=t, vocab=vocab, labels=labels, kd_mask=kd_mask,
            temperature=temperature, kd_weight=kd_weight, ce_weight=0.4,
        )
        out = fn(inp)
        (out.loss * torch.linspace(0.5, 2.0, n)).sum().backward()
        return out, leaf.grad

    out, grad = run(lambda inp: per_row_loss("chunked", spec, inp, want_diagnostics=True))
    ref, ref_grad = run(lambda inp: reference_loss(spec, inp, want_diagnostics=True))
    for key in ("loss", "kd", "ce", "correct"):
        torch.testing.assert_close(getattr(out, key).detach(), getattr(ref, key).detach(), rtol=1e-5, atol=2e-6)
    if name == "ToDi":
        torch.testing.assert_close(out.diagnostics["todi_alpha"], ref.diagnostics["todi_alpha"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=2e-6)


class _Planner:
    """Half of the tokens, per-position temperatures and weights: what AdaKD hands the criterion."""

    def plan(self, student_logits, teacher_logits, mask, temperature, *, labels):
        keep = mask.clone()
        keep[:, ::2] = False
        temps = torch.linspace(0.7, 2.5, mask.numel()).view(mask.shape)
        return KDPlan(mask=keep, temperature=temps, weight=temps**2, stats={"ratio": keep.sum() / mask.sum()})


CRITERION_CASES = [  # objective, kd_rate, planner, teacher vocabulary (student: 40)
    (None, 0.0, None, 40),
    ("ToDi", 0.5, None, 40),
    ("ToDi", 0.5, _Planner(), 43),
    ("ToDi", 1.0, None, 37),
    ("ToDi", 0.0, None, 40),
    ("adaptive_kl", 0.5, None, 43),
    ("adaptive_kl", 1.0, _Planner(), 40),
    ("js_divergence", 0.5, _Planner(), 37),
    ("forward_kl", 0.3, _Planner(), 40),
]


@pytest.mark.parametrize(
    "objective,kd_rate,planner,teacher_vocab",
    CRITERION_CASES,
    ids=[f"{o}-{k}-{'planner' if p else 'plain'}-Vt{v}" for o, k, p, v in CRITERION_CASES],
)
def test_criterion_kernel_path_matches_reference_path(objective, kd_rate, planner, teacher_vocab):
    g = torch.Generator().manual_seed(13)
    logits = torch.randn(3, 9, 40, generator=g) * 2
    teacher = torch.randn(3, 9, teacher_vocab, generator=g) * 2
    labels = torch.randint(0, 40, (3, 9), generator=g)
    labels[:, :3] = -100
    labels[1] = -100

    def run(impl):
        leaf = logits.clone().requires_grad_(True)
        crit = DistillationLoss(objective, kd_rate=kd_rate, temperature=1.7, impl=impl, planner=planner)
        out = crit(leaf, labels, teacher, diagnostics=True)
        (out.loss * 0.37).backward()
        return out, leaf.grad

    out, grad = run("chunked")
    ref, ref_grad = run("reference")
    assert set(out.stats.entries()) == set(ref.stats.entries())
    torch.testing.assert_close(out.loss.detach(), ref.loss.detach(), rtol=1e-5, atol=1e-5)
    for key, value in ref.stats.entries().items():
        torch.testing.assert_close(out.stats.entries()[key].float(), value.float(), rtol=1e-5, atol=1e-5)
    assert out.num_tokens == ref.num_tokens
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Memory: bytes, measured by the profiler's allocator events
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["forward_kl", "adaptive_kl", "ToDi"])
def test_chunked_peak_memory_is_a_fraction_of_the_reference(name):
    n, v = 256, 3000
    s, t = make_pair(n, v, seed=14, specials=False)

    def peak(impl):
        leaf = s.clone().requires_grad_(True)
        return peak_extra_bytes(lambda: divergence(name, leaf, t, impl=impl).sum().backward(), "cpu")

    chunked_peak, reference_peak = peak("chunked"), peak("reference")
    grad_bytes = n * v * 4
    assert reference_peak > 5 * grad_bytes  # the reference keeps several N × V float32 tensors
    assert grad_bytes <= chunked_peak < 2 * grad_bytes  # the gradient plus a few chunks
    assert chunked_peak < reference_peak / 3


def test_criterion_peak_memory_is_a_fraction_of_the_reference():
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(8, 64, 1500, generator=g)
    teacher = torch.randn(8, 64, 1500, generator=g)
    labels = torch.randint(0, 1500, (8, 64), generator=g)

    def peak(impl):
        leaf = logits.clone().requires_grad_(True)
        crit = DistillationLoss("ToDi", kd_rate=0.5, impl=impl)
        return peak_extra_bytes(lambda: crit(leaf, labels, teacher).loss.backward(), "cpu")

    assert peak("chunked") < peak("reference") / 3


def float64_oracle(name, student, teacher, **params):
    """The objectives in float64 log space (AKL's weight from the float32 reference: it is a
    discontinuous function of p, see test_divergences)."""
    from todi.objectives import akl_head_weight, log_probs

    s, t = torch.log_softmax(student.double(), -1), torch.log_softmax(teacher.double(), -1)
    p, q = t.exp(), s.exp()
    lam = params.get("skew_lambda", 0.1)
    log_lam = math.log(lam) if lam > 0 else -math.inf
    log_1ml = math.log1p(-lam) if lam < 1 else -math.inf
    if name == "forward_kl":
        terms = p * (t - s)
    elif name == "reverse_kl":
        terms = q * (s - t)
    elif name == "js_divergence":
        log_m = torch.logaddexp(s, t) - math.log(2)
        terms = 0.5 * (p * (t - log_m) + q * (s - log_m))
    elif name == "tvd":
        terms = 0.5 * (q - p).abs()
    elif name == "skewed_forward_kl":
        terms = p * (t - torch.logaddexp(t + log_lam, s + log_1ml))
    elif name == "skewed_reverse_kl":
        terms = q * (s - torch.logaddexp(s + log_lam, t + log_1ml))
    elif name == "ToDi":
        alpha = torch.sigmoid(params.get("beta", 1.0) * (t - s)).detach()
        terms = (t - s) * (alpha * p - (1 - alpha) * q)
    elif name == "generalized_jsd" and 0 < params.get("beta", 0.5) < 1:
        b = params.get("beta", 0.5)
        log_m = torch.logaddexp(t + math.log(b), s + math.log1p(-b))
        terms = b * p * (t - log_m) + (1 - b) * q * (s - log_m)
    elif name == "generalized_jsd":
        terms = p * (t - s) if params["beta"] == 0 else q * (s - t)
    elif name == "ab_divergence":
        a, b = params.get("alpha", 0.2), params.get("beta", 0.7)
        if (a, b) in ((1.0, 0.0), (0.0, 1.0)):
            terms = p * (t - s) if a == 1.0 else q * (s - t)
        elif a and b:
            terms = -((a * t + b * s).exp() - a / (a + b) * ((a + b) * t).exp() - b / (a + b) * ((a + b) * s).exp()) / (a * b)
        elif a:
            terms = (a * (a * t).exp() * (t - s) - (a * t).exp() + (a * s).exp()) / a**2
        elif b:
            terms = (b * (b * s).exp() * (s - t) - (b * s).exp() + (b * t).exp()) / b**2
        else:
            terms = 0.5 * (t - s) ** 2
    else:
        s32, t32, keep = log_probs(student.detach(), teacher, 1.0)
        w = akl_head_weight(s32, t32, keep, params.get("adaptive_kl_alpha", 0.5)).double().unsqueeze(-1)
        terms = w * p * (t - s) + (1 - w) * q * (s - t)
    return terms.sum(-1)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_extreme_logits_are_as_accurate_as_the_reference(name, params):
    """Logits spread over ±120: probabilities underflow, and large log-ratios cancel in the gradient;
    the chunked results must be as close to a float64 computation as the reference's are."""
    s, t = make_pair(4, 6, 90, seed=16, scale=40.0, specials=False)
    val, grad = value_and_grad(lambda x: divergence(name, x, t, impl="chunked", **params), s)
    ref_val, ref_grad = value_and_grad(lambda x: divergence(name, x, t, impl="reference", **params), s)
    exact_val, exact_grad = value_and_grad(lambda x: float64_oracle(name, x, t.double(), **params), s.double())
    assert torch.isfinite(val).all() and torch.isfinite(grad).all()
    for got, ref, exact in ((val, ref_val, exact_val), (grad, ref_grad, exact_grad)):
        err, ref_err = (got.double() - exact).abs().max(), (ref.double() - exact).abs().max()
        assert err <= 3 * ref_err + 1e-6 * exact.abs().max(), (err.item(), ref_err.item())


def test_todi_memory_at_gemma_vocabulary_262144():
    """The default loss path's extra memory for ToDi at 262,144 entries (Gemma 3), in bytes: the
    student's gradient (which any path must return) plus a few chunks, against the full-vocabulary
    formulation that keeps a dozen N × V float32 tensors for autograd."""
    n, v = 32, 262_144
    g = torch.Generator().manual_seed(31)
    s, t = torch.randn(n, v, generator=g) * 3, torch.randn(n, v, generator=g) * 3

    def peak(impl):
        leaf = s.clone().requires_grad_(True)
        return peak_extra_bytes(lambda: divergence("ToDi", leaf, t, temperature=2.0, impl=impl).sum().backward(), "cpu")

    default, full = peak("auto"), peak("reference")
    grad_bytes = n * v * 4
    assert full > 8 * grad_bytes
    assert grad_bytes <= default < 2 * grad_bytes  # the gradient plus a few float32 chunks of 2 rows
    assert default - grad_bytes < 0.1 * full  # beyond the gradient: a small fraction of the full formulation
    assert default < full / 5
