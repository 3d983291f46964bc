"""The Triton kernels against the reference: on CUDA, or on a CPU through Triton's interpreter.

With a CUDA GPU the tests run directly. Without one, ``test_interpreter_run`` re-runs this file in
a subprocess with ``TRITON_INTERPRET=1`` (the variable must be set before triton is imported), where
the kernels execute on CPU tensors; it is skipped when triton is not installed, or when its
interpreter does not work with the installed numpy (triton < 3.7 with numpy >= 2.4).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from todi import kernels
from todi.loss.criterion import DistillationLoss
from todi.loss.divergence import divergence
from todi.kernels import LossSpec, LossInputs, per_row_loss, reference_loss

import _logits
from _cases import CASES, IDS


def has_branch(name, params):
    return LossSpec.make(name, params).triton_branch is not None


EXTREME = [(n, p) for n, p in CASES[::2] + [("ToDi", {})] if has_branch(n, p)]

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
if torch.cuda.is_available():
    DEVICE = "cuda"
elif INTERPRETING:
    DEVICE = "cpu"
else:
    DEVICE = None
needs_triton = pytest.mark.skipif(
    DEVICE is None or not kernels.triton_available(),
    reason="needs triton and a CUDA GPU (without one, test_interpreter_run covers these on CPU)",
)
# Small vocabularies in the interpreter (block 64); on a GPU, sizes that span several 2048-blocks.
V = 150 if DEVICE != "cuda" else 5001


def make_pair(*shape, **kwargs):
    """Random logits (see _logits) on the tests' device."""
    return _logits.make_pair(*shape, device=DEVICE, **kwargs)


def value_and_grad(fn, student):
    leaf = student.detach().clone().requires_grad_(True)
    out = fn(leaf)
    weights = torch.linspace(0.5, 1.5, out.numel(), device=out.device).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), leaf.grad


def assert_grads_close(grad, ref_grad, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
    else:  # both are a float32 gradient rounded to bf16; the upstream weights round once more here
        torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=2e-2, atol=2e-4)


@needs_triton
@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_triton_matches_reference(name, params):
    # alternate float32 with per-position temperatures and bf16 with a scalar temperature
    index = CASES.index((name, params))
    dtype = torch.float32 if index % 2 == 0 else torch.bfloat16
    s, t = make_pair(2, 5, V, dtype=dtype, seed=index)
    g = torch.Generator().manual_seed(100 + index)
    temperature = (torch.rand(2, 5, generator=g) * 2 + 0.5).to(DEVICE) if dtype == torch.float32 else 2.0
    mask = (torch.rand(2, 5, generator=g) > 0.3).to(DEVICE)
    mask.view(-1)[:4] = True  # keep the rows with special entries

    def run(impl):
        return value_and_grad(
            lambda x: divergence(name, x, t, temperature=temperature, mask=mask, impl=impl, **params), s
        )

    if not has_branch(name, params):  # e.g. the α-β divergence's limits: chunked only, said clearly
        with pytest.raises(ValueError, match="no Triton branch"):
            run("triton")
        return
    val, grad = run("triton")
    ref_val, ref_grad = run("reference")
    assert val.dtype == torch.float32 and grad.dtype == dtype
    assert torch.isfinite(val).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(val, ref_val, rtol=1e-4, atol=1e-5)
    assert_grads_close(grad, ref_grad, dtype)
    assert (val[~mask] == 0).all() and (grad[~mask] == 0).all()
    flat = grad.view(-1, V)
    assert (flat[2] == 0).all() and (flat[3] == 0).all() and flat[0, 3] == 0 and flat[1, 5] == 0


@needs_triton
@pytest.mark.parametrize("name,params", EXTREME, ids=[f"{n}-{p}" for n, p in EXTREME])
def test_extreme_logits_are_as_accurate_as_the_reference(name, params):
    """Logits spread over ±120 (see the test of the same name in test_kernels)."""
    from test_kernels import float64_oracle

    s, t = make_pair(2, 3, 90, seed=26, scale=40.0, specials=False)
    val, grad = value_and_grad(lambda x: divergence(name, x, t, impl="triton", **params), s)
    ref_val, ref_grad = value_and_grad(lambda x: divergence(name, x, t, impl="reference", **params), s)
    exact_val, exact_grad = value_and_grad(
        lambda x: float64_oracle(name, x, t.double(), **params), s.double()
    )
    assert torch.isfinite(val).all() and torch.isfinite(grad).all()
    for got, ref, exact in ((val, ref_val, exact_val), (grad, ref_grad, exact_grad)):
        err, ref_err = (got.double() - exact).abs().max(), (ref.double() - exact).abs().max()
        # (an absolute floor of float32 resolution: gradients whose exact values underflow to ~1e-16)
        assert err <= 3 * ref_err + 1e-6 * max(exact.abs().max(), 1.0), (err.item(), ref_err.item())


@needs_triton
@pytest.mark.parametrize("name", ["ToDi", "adaptive_kl", None])
@pytest.mark.parametrize("temperature,vocab", [(1.0, V), (2.0, V - 17)], ids=["T1-shared-lse", "T2-padded"])
def test_triton_backend_with_cross_entropy_match_reference(name, temperature, vocab):
    n = 12
    s, t = make_pair(n, V, seed=20, specials=False)
    s[0, 3], t[1, 4], t[2, :] = -math.inf, math.inf, -math.inf
    g = torch.Generator().manual_seed(21)
    labels = torch.randint(0, V, (n,), generator=g).to(DEVICE)
    labels[::4] = -100
    labels[5] = int(s[5].argmax())  # one correct prediction
    kd_mask = (torch.rand(n, generator=g) > 0.3).to(DEVICE)
    kd_weight = (torch.rand(n, generator=g) + 0.5).to(DEVICE)
    spec = LossSpec.make(name)

    def run(fn):
        leaf = s.clone().requires_grad_(True)
        inp = LossInputs(
            student=leaf, teacher=t if name else None, vocab=vocab, labels=labels, kd_mask=kd_mask if name else None,
            temperature=temperature, kd_weight=kd_weight, ce_weight=0.6,
        )
        out = fn(inp)
        (out.loss * 1.7).sum().backward()
        return out, leaf.grad

    out, grad = run(lambda inp: per_row_loss("triton", spec, inp, want_diagnostics=True))
    ref, ref_grad = run(lambda inp: reference_loss(spec, inp, want_diagnostics=True))
    for key in ("loss", "kd", "ce", "correct"):
        torch.testing.assert_close(getattr(out, key).detach(), getattr(ref, key).detach(), rtol=1e-4, atol=1e-5)
    assert out.correct[5] == 1
    if name == "ToDi":
        torch.testing.assert_close(out.diagnostics["todi_alpha"], ref.diagnostics["todi_alpha"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@needs_triton
def test_akl_ties_at_the_tail_boundary_follow_vocabulary_order():
    """100 tied low teacher logits hold ≈ 0.2 of the mass: α = 0.1 puts the first 50 of them
    (in vocabulary order, as a stable sort does) in the tail; which ones matters since q differs."""
    teacher = torch.zeros(3, 120)
    teacher[:, 100:] = 3.0
    teacher = teacher[:, torch.randperm(120, generator=torch.Generator().manual_seed(22))]
    student = torch.randn(3, 120, generator=torch.Generator().manual_seed(23))
    teacher, student = teacher.to(DEVICE, torch.bfloat16), student.to(DEVICE, torch.bfloat16)
    val, grad = value_and_grad(lambda x: divergence("akl", x, teacher, adaptive_kl_alpha=0.1, impl="triton"), student)
    ref_val, ref_grad = value_and_grad(
        lambda x: divergence("akl", x, teacher, adaptive_kl_alpha=0.1, impl="reference"), student
    )
    torch.testing.assert_close(val, ref_val, rtol=1e-5, atol=1e-6)
    assert_grads_close(grad, ref_grad, torch.bfloat16)
    # the opposite tie order would give another weight: the test can tell them apart
    flipped, _ = value_and_grad(
        lambda x: divergence("akl", x.flip(-1), teacher.flip(-1), adaptive_kl_alpha=0.1, impl="reference"), student
    )
    assert (flipped - ref_val).abs().max() > 1e-3


@needs_triton
def test_strided_views_scalar_upstream_gradient_and_alpha():
    s_wide, t_wide = make_pair(4, 6, V + 9, seed=24, specials=False)
    s_view, t_view = s_wide[..., :V], t_wide[..., :V]
    leaf = s_wide.clone().requires_grad_(True)
    out = divergence("ToDi", leaf[..., :V], t_view, impl="triton", beta=2.0)
    (out.sum() * 3.0).backward()
    ref_leaf = s_view.contiguous().requires_grad_(True)
    ref = divergence("ToDi", ref_leaf, t_view.contiguous(), impl="reference", beta=2.0)
    (ref.sum() * 3.0).backward()
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(leaf.grad[..., :V], ref_leaf.grad, rtol=1e-4, atol=1e-5)
    assert (leaf.grad[..., V:] == 0).all()
    labels = torch.full((4, 6), -100, device=DEVICE)
    labels[:, 2:] = 1
    crit = DistillationLoss("ToDi", kd_rate=0.5, beta=2.0, impl="triton")
    stats = crit(s_wide, labels, t_view, diagnostics=True).stats
    ref_stats = DistillationLoss("ToDi", kd_rate=0.5, beta=2.0, impl="reference")(
        s_wide, labels, t_view, diagnostics=True
    ).stats
    for key, value in ref_stats.entries().items():
        torch.testing.assert_close(stats.entries()[key], value, rtol=1e-4, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("vocab", [3, 13, 37])
def test_short_rows_and_rows_with_different_alignments(vocab):
    """Rows shorter than a 16-byte vector, and a teacher whose rows start at other offsets within one."""
    s_wide, _ = make_pair(5, vocab + 5, dtype=torch.bfloat16, seed=27, specials=False)
    _, t_wide = make_pair(5, vocab + 2, dtype=torch.bfloat16, seed=28, specials=False)
    s, t = s_wide[:, 1 : vocab + 1], t_wide[:, :vocab]
    labels = torch.tensor([0, vocab - 1, -100, 1, 2], device=DEVICE)
    for name in ("ToDi", "adaptive_kl"):
        val, grad = value_and_grad(lambda x: divergence(name, x, t, temperature=1.3, impl="triton"), s)
        ref_val, ref_grad = value_and_grad(lambda x: divergence(name, x, t, temperature=1.3, impl="reference"), s)
        torch.testing.assert_close(val, ref_val, rtol=1e-4, atol=1e-5)
        assert_grads_close(grad, ref_grad, torch.bfloat16)
    for impl in ("triton", "reference"):
        leaf = s.clone().requires_grad_(True)
        crit = DistillationLoss("fkl", kd_rate=0.4, impl=impl)
        out = crit(leaf, labels, t)
        out.loss.backward()
        if impl == "triton":
            got = (out.loss.detach(), leaf.grad, out.stats.correct)
    torch.testing.assert_close(got[0], out.loss.detach(), rtol=1e-4, atol=1e-5)
    assert_grads_close(got[1], leaf.grad, torch.bfloat16)
    assert got[2] == out.stats.correct


@needs_triton
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "ToDi", "adaptive_kl", "tvd"])
def test_half_precision_and_rows_far_below_zero(name):
    """fp16 and bf16 rows; rows whose logits all lie near the most negative value of their type
    (the first pass must not mistake them for the stand-in value of entries outside the row), and
    rows without a ±inf (the loops without masks) next to rows with one."""
    for dtype, low in ((torch.float16, -60000.0), (torch.bfloat16, -3e37)):
        s, t = make_pair(6, V, seed=29, specials=False)
        s[0] = low + s[0].abs()  # every logit of the row far below zero, finite
        t[1] = low - t[1].abs()
        s[2, 9] = -math.inf  # one masked entry: the masked loops
        s, t = s.to(dtype), t.to(dtype)
        val, grad = value_and_grad(lambda x: divergence(name, x, t, temperature=1.7, impl="triton"), s)
        ref_val, ref_grad = value_and_grad(lambda x: divergence(name, x, t, temperature=1.7, impl="reference"), s)
        assert grad.dtype == dtype and torch.isfinite(val).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(val, ref_val, rtol=1e-4, atol=1e-5)
        assert_grads_close(grad, ref_grad, dtype)


@needs_triton
def test_rows_with_only_cross_entropy_next_to_rows_with_both():
    n = 8
    s, t = make_pair(n, V, seed=30, specials=False)
    s[3] = -3e37 + s[3]  # a cross-entropy-only row far below zero
    labels = torch.arange(n, device=DEVICE) * 7 % V
    kd_mask = torch.tensor([True, False, True, False, True, True, False, True], device=DEVICE)
    spec = LossSpec.make("forward_kl")

    def run(fn):
        leaf = s.clone().requires_grad_(True)
        inp = LossInputs(student=leaf, teacher=t, vocab=V, labels=labels, kd_mask=kd_mask, temperature=1.0,
                        kd_weight=1.0, ce_weight=0.3)
        out = fn(inp)
        out.loss.sum().backward()
        return out, leaf.grad

    out, grad = run(lambda inp: per_row_loss("triton", spec, inp))
    ref, ref_grad = run(lambda inp: reference_loss(spec, inp))
    for key in ("loss", "kd", "ce", "correct"):
        torch.testing.assert_close(getattr(out, key).detach(), getattr(ref, key).detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@needs_triton
def test_fused_linear_loss_with_triton_matches_unfused():
    g = torch.Generator().manual_seed(25)
    hidden = (torch.randn(2, 7, 16, generator=g)).to(DEVICE)
    weight = (torch.randn(V, 16, generator=g) * 0.3).to(DEVICE)
    teacher = (torch.randn(2, 7, V, generator=g) * 2).to(DEVICE)
    labels = torch.randint(0, V, (2, 7), generator=g).to(DEVICE)
    labels[:, :2] = -100
    crit = DistillationLoss("ToDi", kd_rate=0.5, temperature=2.0, impl="triton")

    def run(fused):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        if fused:
            out = crit.loss_from_hidden(h, w, None, labels, teacher, chunk_size=5)
        else:
            out = crit(h @ w.t(), labels, teacher)
        out.loss.backward()
        return out.loss.detach(), h.grad, w.grad

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("name,params", [("ToDi", {}), ("reverse_kl", {}), ("adaptive_kl", {})])
def test_triton_reads_a_teacher_head_chunk_by_chunk(name, params):
    """Teacher logits from a hidden-state cache (kernels.TeacherHead): the Triton path computes them a
    chunk of rows at a time and gives the values of the materialised logits."""
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 5, 24, generator=g).to(DEVICE)
    weight, bias = (torch.randn(V + 3, 24, generator=g) * 0.3).to(DEVICE), torch.randn(V + 3, generator=g).to(DEVICE)
    head = kernels.TeacherHead(hidden, weight, bias)
    s, _ = make_pair(2, 5, V, seed=3, specials=False)
    labels = torch.randint(0, V, (2, 5), generator=g).to(DEVICE)
    labels[0, :2] = -100

    def run(teacher, impl):
        leaf = s.clone().requires_grad_(True)
        out = DistillationLoss(name, kd_rate=0.5, temperature=2.0, impl=impl, vocab_size=V, **params)(
            leaf, labels, teacher, diagnostics=True)
        out.loss.backward()
        return out.loss.detach(), leaf.grad

    val, grad = run(head, "triton")
    ref_val, ref_grad = run(head.materialize(), "reference")
    torch.testing.assert_close(val, ref_val, rtol=1e-5, atol=1e-5)
    assert_grads_close(grad, ref_grad, torch.float32)


@pytest.mark.slow
def test_interpreter_run():
    """Without CUDA: the tests above, on CPU tensors through Triton's interpreter."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the tests above ran on it")
    if INTERPRETING:
        pytest.skip("this is the interpreter run")
    if not kernels.triton_available():
        pytest.skip("triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        pytest.skip(f"Triton's interpreter does not run here: {probe.stderr.strip().splitlines()[-1:]}")
    repo = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", "not test_interpreter_run"],
        env=env, cwd=repo, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


_PROBE = """
import torch, triton, triton.language as tl
@triton.jit
def k(y, n):
    acc = 0.0
    for i in range(0, n):
        acc += 1.0
    tl.store(y, acc)
y = torch.zeros(1)
k[(1,)](y, 3)
assert y.item() == 3.0
"""
