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

# float32 bytes of one [chunk, V] temporary: cache-sized on a CPU; on a GPU large enough that
# kernel launches do not dominate.
CHUNK_BYTES = {"cpu": 2 * 1024 * 1024, "cuda": 64 * 1024 * 1024}


def chunk_rows(n_rows: int, vocab: int, device_type: str = "cpu") -> int:
    """Rows per chunk: within ``CHUNK_BYTES`` per float32 temporary, and at most 1/16 of the rows
    (so the temporaries stay a fraction of the ``N × V`` gradient even for small inputs)."""
    by_bytes = max(1, CHUNK_BYTES.get(device_type, CHUNK_BYTES["cuda"]) // (4 * max(vocab, 1)))
    return max(1, min(by_bytes, math.ceil(n_rows / 16)))


def entry_terms(spec: LossSpec, s: Tensor, t: Tensor, q: Tensor, keep: Tensor | None, want_alpha: bool):
    """Per-entry value ``f`` and derivative ``g = ∂f/∂s`` of the objective, both ``[C, V]``.

    ``s``, ``t`` are the log-probabilities (0 outside ``keep``, so every term is finite) and ``q``
    the student's probabilities (read only; it may differ from exp(s) outside ``keep``); ``keep``
    is None when every entry counts. The caller zeroes ``f`` and ``g`` outside ``keep``. Also
    returns ``p·α`` for ToDi's diagnostic when asked (else None).
    """
    obj = spec.objective
    alpha_p = None
    if obj == "forward_kl":  # f = p (t − s)
        p = t.exp()
        f = p * (t - s)
        g = p.neg_()
    elif obj == "reverse_kl":  # f = q (s − t); g = q (s − t + 1)
        d = s - t
        f = q * d
        g = d.add_(1.0).mul_(q)
    elif obj == "js_divergence":  # m = (p+q)/2; f = ½[p(t − log m) + q(s − log m)]; g = ½ q (s − log m)
        p = t.exp()
        log_m = _log_clamped((p + q).mul_(0.5))
        gs = s - log_m
        f = (p.mul_(log_m.neg_().add_(t))).add_(q * gs).mul_(0.5)
        g = gs.mul_(q).mul_(0.5)
    elif obj == "tvd":  # f = ½|q − p|; g = ½ sign(q − p) q (sign(0) = 0, as autograd's abs)
        diff = q - t.exp()
        f = diff.abs().mul_(0.5)
        g = diff.sign_().mul_(q).mul_(0.5)
    elif obj == "skewed_forward_kl" and 0.0 < spec.skew_lambda < 1.0:
        # M = λp + (1−λ)q; f = p(t − log M); g = −(1−λ) p q / M
        lam = spec.skew_lambda
        p = t.exp()
        mix = (q * (1.0 - lam)).add_(p, alpha=lam).clamp_min_(_TINY)
        f = p * _log_clamped(mix).neg_().add_(t)
        g = mix.reciprocal_().mul_(q).mul_(p).mul_(-(1.0 - lam))
    elif obj == "skewed_forward_kl":  # λ = 0: forward KL; λ = 1: KL(p‖p) = 0
        if spec.skew_lambda == 0.0:
            return entry_terms(LossSpec("forward_kl"), s, t, q, keep, want_alpha)
        f, g = torch.zeros_like(s), torch.zeros_like(s)
    elif obj == "skewed_reverse_kl" and 0.0 < spec.skew_lambda < 1.0:
        # M = λq + (1−λ)p; f = q(s − log M); g = q(s − log M + 1 − λ q / M)
        lam = spec.skew_lambda
        mix = (t.exp().mul_(1.0 - lam)).add_(q, alpha=lam).clamp_min_(_TINY)
        gs = _log_clamped(mix).neg_().add_(s)
        f = q * gs
        g = mix.reciprocal_().mul_(q).mul_(-lam).add_(gs).add_(1.0).mul_(q)
    elif obj == "skewed_reverse_kl":  # λ = 0: reverse KL; λ = 1: KL(q‖q) = 0
        if spec.skew_lambda == 0.0:
            return entry_terms(LossSpec("reverse_kl"), s, t, q, keep, want_alpha)
        f, g = torch.zeros_like(s), torch.zeros_like(s)
    elif obj == "ToDi":  # d = t − s, α = σ(βd); f = d(αp − (1−α)q); g = −αp + (1−α) q (1 − d)
        d = t - s
        alpha = torch.sigmoid(d * spec.beta)
        ap = t.exp().mul_(alpha)
        if want_alpha:
            alpha_p = ap
        omq = alpha.neg_().add_(1.0).mul_(q)  # (1 − α) q, in α's buffer
        f = (ap - omq).mul_(d)
        g = d.neg_().add_(1.0).mul_(omq).sub_(ap)
    elif obj == "adaptive_kl":
        # f = w p(t − s) + (1 − w) q(s − t), w per row (detached); g = −w p + (1 − w) q(s − t + 1)
        if keep is None:
            keep = torch.ones_like(s, dtype=torch.bool)
        w = akl_head_weight(s, t, keep, spec.adaptive_kl_alpha).unsqueeze(-1)
        p = t.exp()
        d = s - t
        qd = q * d
        f = (p * d).mul_(-w).add_(qd * (1.0 - w))
        g = qd.add_(q).mul_(1.0 - w).sub_(p.mul_(w))
    else:
        raise AssertionError(obj)
    return f, g, alpha_p


_TINY = torch.finfo(torch.float32).tiny


def _log_clamped(mix: Tensor) -> Tensor:
    """log of a mixture of probabilities, clamped at the smallest normal float.

    Where the mixture underflows, every term that multiplies its log has a probability factor
    that underflowed too, so the clamp only keeps 0·(−inf) = NaN out; the skewed KLs and JS are
    otherwise the reference's log-space values up to rounding.
    """
    return mix.clamp_min(_TINY).log_()


def _divide(x: Tensor, temp) -> Tensor:
    """x / T for log_softmax, which does not modify its input (the reference divides too)."""
    if isinstance(temp, Tensor):
        return x / temp.unsqueeze(-1)
    return x / temp if temp != 1.0 else x


def _kd_chunk(spec: LossSpec, xs: Tensor, xt: Tensor, temp, want_alpha: bool):
    """Divergence of one chunk (float32 ``[C, V]`` inputs, not modified).

    Returns the values ``[C]``, ``g = ∂f/∂s`` ``[C, V]`` (0 off the kept entries), ``G = Σ g``
    ``[C, 1]``, the student's tempered probabilities q ``[C, V]``, ``Σ p α`` (or None), and, when
    no entry is ±inf, the student's tempered log-probabilities (else None). The gradient of the
    values with respect to the logits is ``(g − q G) / T``.
    """
    # a sum is finite exactly when no entry is ±inf or NaN (NaNs then propagate through the masks)
    if bool(torch.isfinite(xs.sum())) and bool(torch.isfinite(xt.sum())):
        keep = None  # the common case: every entry counts, no masking anywhere
        s = torch.log_softmax(_divide(xs, temp), dim=-1)
        t = torch.log_softmax(_divide(xt, temp), dim=-1)
        q = s.exp()
    else:
        # The reference's preprocessing: +inf → −inf, rows without a finite logit, kept entries.
        keep = ~(xs.isinf() | xt.isinf())
        s = torch.log_softmax(_scaled(xs, temp), dim=-1)
        t = torch.log_softmax(_scaled(xt, temp), dim=-1).masked_fill_(~keep, 0.0)
        q = s.exp()
        s.masked_fill_(~keep, 0.0)
    f, g, alpha_p = entry_terms(spec, s, t, q, keep, want_alpha)
    del t
    if keep is not None:
        f.masked_fill_(~keep, 0.0)
        g.masked_fill_(~keep, 0.0)
        if alpha_p is not None:
            alpha_p.masked_fill_(~keep, 0.0)
    value = f.sum(-1)
    del f
    alpha = alpha_p.sum(-1) if alpha_p is not None else None
    return value, g, g.sum(-1, keepdim=True), q, alpha, (s if keep is None else None)


def _rows_view(x: Tensor, idx: Tensor, contiguous: bool, start: int) -> Tensor:
    """Rows ``idx`` of x: a view when they are a contiguous range, else a copy."""
    return x[start : start + idx.numel()] if contiguous else x.index_select(0, idx)


def _per_row(value, idx: Tensor):
    return value.index_select(0, idx) if isinstance(value, Tensor) else value


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
    active = inp.active_rows()
    grad = None
    if want_grad:
        grad = torch.empty(n, v_student, dtype=student.dtype, device=device)
        if not bool(active.all()):
            grad[~active] = 0.0  # rows without a loss term get zeros and nothing else

    rows = active.nonzero().squeeze(1)
    if rows.numel() == 0:
        return RowsResult(kd=kd, ce=ce, correct=correct, alpha=alpha, grad=grad)
    ce_valid = inp.ce_valid
    step = rows_per_chunk or chunk_rows(rows.numel(), v_student, device.type)
    for begin in range(0, rows.numel(), step):
        idx = rows[begin : begin + step]
        first = int(idx[0])
        contiguous = int(idx[-1]) - first + 1 == idx.numel()
        xs = _rows_view(student, idx, contiguous, first).float()  # not modified below
        grad_c = None  # the chunk's gradient, float32 [C, V_s] (or [C, vocab] while only KD is in)
        log_q = None
        if has_ce:
            labels = inp.labels.index_select(0, idx)
            valid = ce_valid.index_select(0, idx)
            safe = torch.where(valid, labels, 0).unsqueeze(1)
            ce_col = torch.where(valid, inp.ce_weight, 0.0).unsqueeze(1)  # the CE weight of each row
            correct.index_copy_(0, idx, (xs.argmax(-1).eq(labels) & valid).float())
        if has_kd:
            on = inp.kd_mask.index_select(0, idx)
            temp = _per_row(inp.temperature, idx)
            xt = _rows_view(teacher, idx, contiguous, first)[:, :vocab].float()
            value, g, G, q, a, log_q = _kd_chunk(spec, xs[:, :vocab], xt, temp, alpha is not None)
            del xt
            kd.index_copy_(0, idx, torch.where(on, value, 0.0))
            if a is not None:
                alpha.index_copy_(0, idx, torch.where(on, a, 0.0))
            # the cross-entropy's softmax is q when nothing differs (temperature 1, same vocabulary)
            shared = log_q is not None and vocab == v_student and not isinstance(temp, Tensor) and temp == 1.0
            if not shared:
                log_q = None
            if want_grad:
                # kd_w (g − q G) / T, plus, when shared, ce_w q: one pass over g for both
                coef = torch.where(on, _per_row(inp.kd_weight, idx), 0.0).unsqueeze(1)
                coef = coef / (temp.unsqueeze(1) if isinstance(temp, Tensor) else temp)
                q_coef = -(G * coef)
                if shared and inp.ce_weight != 0.0:
                    q_coef += ce_col
                grad_c = g.mul_(coef).addcmul_(q, q_coef)
            del g, q
        if has_ce:
            if log_q is None:
                log_q = torch.log_softmax(xs, dim=-1)
                shared = False
            ce.index_copy_(0, idx, torch.where(valid, log_q.gather(1, safe).squeeze(1).neg_(), 0.0))
            if want_grad and inp.ce_weight != 0.0:
                # ∂CE/∂x = softmax(x) − onehot(label), for rows with a label
                if grad_c is None:
                    grad_c = log_q.exp_().mul_(ce_col)
                elif not shared:
                    if grad_c.shape[1] != v_student:
                        grad_c = torch.cat([grad_c, grad_c.new_zeros(grad_c.shape[0], v_student - grad_c.shape[1])], 1)
                    grad_c.addcmul_(log_q.exp_(), ce_col)
                grad_c.scatter_add_(1, safe, -ce_col.expand(-1, 1))
        del log_q
        if want_grad:
            if grad_c is None:
                grad_c = xs.new_zeros(xs.shape)
            elif grad_c.shape[1] != v_student:  # KD over a prefix of the vocabulary, no CE gradient
                grad_c = torch.cat([grad_c, grad_c.new_zeros(grad_c.shape[0], v_student - grad_c.shape[1])], 1)
            if contiguous:
                grad[first : first + idx.numel()].copy_(grad_c)
            else:
                grad.index_copy_(0, idx, grad_c.to(grad.dtype))
            del grad_c
    return RowsResult(kd=kd, ce=ce, correct=correct, alpha=alpha, grad=grad)
