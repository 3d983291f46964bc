"""The chunked backend: plain torch, a chunk of rows at a time, gradient computed in the forward.

Only rows with a loss term are visited. For each chunk the divergence, the cross-entropy and the
gradient of their weighted sum with respect to the student logits are computed in float32; the
gradient is written into one ``[N, V_s]`` buffer in the student's dtype and nothing else of size
V outlives the chunk. The float32 temporaries are a few ``chunk × V`` tensors, with the chunk sized
by :func:`chunk_rows`, so the extra memory is the gradient buffer plus a small constant, instead of
the reference's dozen ``N × V`` float32 tensors kept for autograd.

Gradient of a per-entry term f(s_i, t_i) summed over the kept entries, with s = log_softmax(z_s):
``∂/∂z_j = g_j − q_j Σ_i g_i`` where ``g_i = ∂f/∂s_i`` (0 outside the kept entries) and q the
student's softmax; the logits get that divided by the temperature. The ``g`` of each objective is
derived in :func:`entry_terms`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from todi.divergences import _scaled, akl_head_weight
from todi.kernels.spec import LossSpec, RowsInput, RowsResult

__all__ = ["CHUNK_BYTES", "chunk_rows", "entry_terms", "forward"]

# float32 bytes of one [chunk, V] temporary; small enough to stay cache-friendly on a CPU.
CHUNK_BYTES = 2 * 1024 * 1024


def chunk_rows(n_rows: int, vocab: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Rows per chunk: within ``chunk_bytes`` per float32 temporary, and at most 1/16 of the rows
    (so the temporaries stay a fraction of the ``N × V`` gradient even for small inputs)."""
    by_bytes = max(1, chunk_bytes // (4 * max(vocab, 1)))
    return max(1, min(by_bytes, math.ceil(n_rows / 16)))


def entry_terms(spec: LossSpec, s: Tensor, t: Tensor, keep: Tensor, want_alpha: bool):
    """Per-entry value ``f`` and derivative ``g = ∂f/∂s`` of the objective, both ``[C, V]``.

    ``s``, ``t`` are the log-probabilities with 0 outside ``keep`` (so every term is finite);
    the caller zeroes ``f`` and ``g`` outside ``keep``. Also returns ``p·α`` for ToDi's
    diagnostic when asked (else None).
    """
    obj = spec.objective
    alpha_p = None
    if obj == "forward_kl":  # f = p (t − s)
        p = t.exp()
        f = p * (t - s)
        g = p.neg_()
    elif obj == "reverse_kl":  # f = q (s − t); g = q (s − t + 1)
        q = s.exp()
        f = q * (s - t)
        g = f + q
    elif obj == "js_divergence":  # m = (p+q)/2; f = ½[p(t − log m) + q(s − log m)]; g = ½ q (s − log m)
        log_m = torch.logaddexp(s, t).sub_(math.log(2.0))
        p, q = t.exp(), s.exp()
        gs = s - log_m
        f = (p * (t - log_m)).add_(q * gs).mul_(0.5)
        g = q.mul_(gs).mul_(0.5)
    elif obj == "tvd":  # f = ½|q − p|; g = ½ sign(q − p) q (sign(0) = 0, as autograd's abs)
        q = s.exp()
        diff = q - t.exp()
        f = diff.abs().mul_(0.5)
        g = diff.sign_().mul_(q).mul_(0.5)
    elif obj == "skewed_forward_kl":  # mix = log(λp + (1−λ)q); f = p(t − mix); g = −p (1−λ) e^{s − mix}
        lam = spec.skew_lambda
        mix = _log_mix(t, s, lam)
        p = t.exp()
        f = p * (t - mix)
        g = (s - mix).exp_().mul_(p).mul_(-(1.0 - lam))
    elif obj == "skewed_reverse_kl":  # mix = log((1−λ)p + λq); f = q(s − mix); g = q(s − mix + 1 − λ e^{s − mix})
        lam = spec.skew_lambda
        mix = _log_mix(s, t, lam)
        q = s.exp()
        gs = s - mix
        f = q * gs
        g = gs.exp().mul_(-lam).add_(gs).add_(1.0).mul_(q)
    elif obj == "ToDi":  # d = t − s, α = σ(βd); f = d(αp − (1−α)q); g = −αp + (1−α) q (1 − d)
        d = t - s
        alpha = torch.sigmoid(d * spec.beta)
        p, q = t.exp(), s.exp()
        ap = alpha * p
        if want_alpha:
            alpha_p = ap
        one_m = alpha.neg_().add_(1.0)  # 1 − α (reuses α's buffer)
        omq = one_m.mul_(q)  # (1 − α) q
        f = (ap - omq).mul_(d)
        g = d.neg_().add_(1.0).mul_(omq).sub_(ap)
    elif obj == "adaptive_kl":
        # f = w p(t − s) + (1 − w) q(s − t), w per row (detached); g = −w p + (1 − w) q(s − t + 1)
        w = akl_head_weight(s, t, keep, spec.adaptive_kl_alpha).unsqueeze(-1)
        p, q = t.exp(), s.exp()
        d = s - t
        f = (p * d).mul_(-w).add_(q * d * (1.0 - w))
        g = d.add_(1.0).mul_(q).mul_(1.0 - w).sub_(p.mul_(w))
    else:
        raise AssertionError(obj)
    return f, g, alpha_p


def _log_mix(a: Tensor, b: Tensor, weight_a: float) -> Tensor:
    """log(w·e^a + (1−w)·e^b) for w in [0, 1] (a −inf log-weight drops that side exactly)."""
    log_w = math.log(weight_a) if weight_a > 0 else -math.inf
    log_1mw = math.log1p(-weight_a) if weight_a < 1 else -math.inf
    return torch.logaddexp(a + log_w, b + log_1mw)


def _kd_chunk(spec: LossSpec, xs: Tensor, xt: Tensor, temp, want_grad: bool, want_alpha: bool):
    """Divergence of one chunk: values ``[C]``, ∂/∂logits ``[C, V]`` (or None), ``Σ p α`` (or None)."""
    keep = ~(xs.isinf() | xt.isinf())
    # Same preprocessing as the reference (temperature, +inf → −inf, rows without a finite logit).
    s_full = torch.log_softmax(_scaled(xs, temp), dim=-1)
    t = torch.log_softmax(_scaled(xt, temp), dim=-1).masked_fill_(~keep, 0.0)
    q_full = s_full.exp() if want_grad else None
    s = s_full.masked_fill_(~keep, 0.0)
    f, g, alpha_p = entry_terms(spec, s, t, keep, want_alpha)
    value = f.masked_fill_(~keep, 0.0).sum(-1)
    alpha = alpha_p.masked_fill_(~keep, 0.0).sum(-1) if alpha_p is not None else None
    if not want_grad:
        return value, None, alpha
    g.masked_fill_(~keep, 0.0)
    grad = g.sub_(q_full.mul_(g.sum(-1, keepdim=True)))
    grad = grad.div_(temp.unsqueeze(-1) if isinstance(temp, Tensor) else temp)
    return value, grad, alpha


def forward(spec: LossSpec, inp: RowsInput, *, want_grad: bool, want_alpha: bool, rows_per_chunk: int | None = None) -> RowsResult:
    """Values of every row and, with ``want_grad``, the gradient of the weighted loss (see spec)."""
    student, teacher, vocab = inp.student, inp.teacher, inp.vocab
    n, v_student = student.shape
    device = student.device
    has_kd = teacher is not None and spec.objective is not None
    has_ce = inp.labels is not None
    kd = torch.zeros(n, dtype=torch.float32, device=device)
    ce = torch.zeros(n, dtype=torch.float32, device=device)
    correct = torch.zeros(n, dtype=torch.float32, device=device)
    alpha = torch.zeros(n, dtype=torch.float32, device=device) if want_alpha and spec.objective == "ToDi" else None
    grad = torch.zeros(n, v_student, dtype=student.dtype, device=device) if want_grad else None

    rows = inp.active_rows().nonzero().squeeze(1)
    if rows.numel() == 0:
        return RowsResult(kd=kd, ce=ce, correct=correct, alpha=alpha, grad=grad)
    ce_valid = inp.ce_valid
    step = rows_per_chunk or chunk_rows(rows.numel(), v_student)
    for start in range(0, rows.numel(), step):
        idx = rows[start : start + step]
        xs = student.index_select(0, idx).float()
        grad_c = torch.zeros_like(xs) if want_grad else None
        if has_ce:
            labels = inp.labels.index_select(0, idx)
            valid = ce_valid.index_select(0, idx)
            safe = torch.where(valid, labels, 0).unsqueeze(1)
            lse = torch.logsumexp(xs, dim=-1)
            ce.index_copy_(0, idx, torch.where(valid, lse - xs.gather(1, safe).squeeze(1), 0.0))
            correct.index_copy_(0, idx, (xs.argmax(-1).eq(labels) & valid).float())
            if want_grad and inp.ce_weight != 0.0:
                # ∂CE/∂x = softmax(x) − onehot(label), for rows with a label
                w = torch.where(valid, inp.ce_weight, 0.0).unsqueeze(1)
                grad_c.add_((xs - lse.unsqueeze(1)).exp_().mul_(w))
                grad_c.scatter_add_(1, safe, -w)
        if has_kd:
            on = inp.kd_mask.index_select(0, idx)
            temp = inp.temperature.index_select(0, idx) if isinstance(inp.temperature, Tensor) else inp.temperature
            xt = teacher.index_select(0, idx)[:, :vocab].float()
            value, g_kd, a = _kd_chunk(spec, xs[:, :vocab], xt, temp, want_grad, alpha is not None)
            del xt
            kd.index_copy_(0, idx, torch.where(on, value, 0.0))
            if a is not None:
                alpha.index_copy_(0, idx, torch.where(on, a, 0.0))
            if want_grad:
                w = inp.kd_weight.index_select(0, idx) if isinstance(inp.kd_weight, Tensor) else inp.kd_weight
                w = torch.where(on, w, 0.0).unsqueeze(1)
                grad_c[:, :vocab].add_(g_kd.mul_(w))
                del g_kd
        if want_grad:
            grad.index_copy_(0, idx, grad_c.to(grad.dtype))
    return RowsResult(kd=kd, ce=ce, correct=correct, alpha=alpha, grad=grad)
