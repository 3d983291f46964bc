"""The chunked backend: plain torch, a chunk of rows at a time, gradient computed in the forward.

Only rows with a loss term are visited. For each chunk the divergence, the cross-entropy and the
gradient of their weighted sum with respect to the student logits are computed in float32; the
gradient is written into one ``[N, V_s]`` buffer in the student's dtype and nothing else of size
V outlives the chunk. The float32 temporaries are a few ``chunk × V`` tensors, with the chunk sized
by :func:`todi.kernels.rows.rows_per_chunk`, so the extra memory is the gradient buffer plus a
small constant, instead of the reference's dozen ``N × V`` float32 tensors kept for autograd.

Gradient of per-entry terms f(s, t) summed over the kept entries, with s = log_softmax(z_s):
``∂/∂z_j = g_j − q_j Σ_i g_i`` where ``g_i = ∂(Σ f)/∂s_i`` (0 outside the kept entries) and q the
student's softmax; the logits get that divided by the temperature. ``g`` comes from the
objective's registry entry (``grad``), or from autograd on its ``terms`` when it has none.
"""

from __future__ import annotations

import torch
from torch import Tensor

from todi.kernels.rows import LossInputs, LossSpec, PerRowLoss, rows_per_chunk, take_rows
from todi.kernels.teacher_head import teacher_rows
from todi.objectives import Objective, log_probs, scaled_logits, sum_entries
from todi.objectives.math import retemper_log_probs

__all__ = ["diagnostics", "entry_terms", "forward", "sparse_kd_chunk"]


def entry_terms(record: Objective, params: dict, s: Tensor, t: Tensor, q: Tensor, keep: Tensor | None):
    """Per-entry value ``f`` and ``g = ∂(Σ f)/∂s`` of an objective, both float32 ``[C, V]``.

    ``s``, ``t`` are the log-probabilities (0 outside ``keep``, so every term is finite) and ``q``
    the student's probabilities (read only; it may differ from exp(s) outside ``keep``); ``keep``
    is None when every entry counts. The caller zeroes ``f`` and ``g`` outside ``keep``.
    """
    if record.grad is not None:
        return record.grad(s, t, q, keep, **params)
    with torch.enable_grad():  # the backends run inside an autograd Function's forward (no grad)
        leaf = s.detach().requires_grad_(True)
        f = record.terms(leaf, t, keep, **params)
        (g,) = torch.autograd.grad(sum_entries(f, keep).sum(), leaf)
    return f.detach(), g


def _divide(x: Tensor, temp) -> Tensor:
    """x / T for log_softmax, which does not modify its input (the reference divides too)."""
    if isinstance(temp, Tensor):
        return x / temp.unsqueeze(-1)
    return x / temp if temp != 1.0 else x


def _log_probs(xs: Tensor, xt: Tensor, temp):
    """(s, t, q, keep) of a float32 chunk: keep is None when no entry is ±inf (the common case:
    no masking anywhere), else the reference's preprocessing (+inf → −inf, dead rows, kept entries)."""
    # a sum is finite exactly when no entry is ±inf or NaN (NaNs then propagate through the masks)
    if bool(torch.isfinite(xs.sum())) and bool(torch.isfinite(xt.sum())):
        s = torch.log_softmax(_divide(xs, temp), dim=-1)
        t = torch.log_softmax(_divide(xt, temp), dim=-1)
        return s, t, s.exp(), None
    keep = ~(xs.isinf() | xt.isinf())
    s = torch.log_softmax(scaled_logits(xs, temp), dim=-1)
    t = torch.log_softmax(scaled_logits(xt, temp), dim=-1).masked_fill_(~keep, 0.0)
    q = s.exp()
    return s.masked_fill_(~keep, 0.0), t, q, keep


def _chunk_diagnostics(spec: LossSpec, s: Tensor, t: Tensor, keep: Tensor | None) -> dict[str, Tensor]:
    record = spec.record
    return {name: sum_entries(fn(s, t, keep, **spec.kwargs), keep) for name, fn in record.diagnostics.items()}


def _kd_chunk(spec: LossSpec, xs: Tensor, xt: Tensor, temp, want_diagnostics: bool):
    """Divergence of one chunk (float32 ``[C, V]`` inputs, not modified).

    Returns the values ``[C]``, ``g`` ``[C, V]`` (0 off the kept entries), ``G = Σ g`` ``[C, 1]``,
    the student's tempered probabilities q ``[C, V]``, the diagnostics (name → ``[C]``), and, when
    no entry is ±inf, the student's tempered log-probabilities (else None). The gradient of the
    values with respect to the logits is ``(g − q G) / T``.
    """
    s, t, q, keep = _log_probs(xs, xt, temp)
    diag = _chunk_diagnostics(spec, s, t, keep) if want_diagnostics else {}
    f, g = entry_terms(spec.record, spec.kwargs, s, t, q, keep)
    del t
    if keep is not None:
        f.masked_fill_(~keep, 0.0)
        g.masked_fill_(~keep, 0.0)
    value = f.sum(-1)
    del f
    return value, g, g.sum(-1, keepdim=True), q, diag, (s if keep is None else None)


@torch.no_grad()
def diagnostics(spec: LossSpec, inp: LossInputs) -> dict[str, Tensor]:
    """Only the objective's diagnostics (name → float32 ``[N]``, 0 off ``kd_mask``), a chunk at a time
    (for backends that do not compute them: the Triton one; sparse targets always run here)."""
    n = inp.student.shape[0]
    out = {name: torch.zeros(n, dtype=torch.float32, device=inp.student.device) for name in spec.diagnostics}
    rows = inp.kd_mask.nonzero().squeeze(1)
    step = rows_per_chunk(rows.numel(), inp.vocab, inp.student.device.type, min_chunks=16)
    for begin in range(0, rows.numel(), step):
        idx = rows[begin : begin + step]
        xs = inp.student.index_select(0, idx)[:, : inp.vocab].float()
        xt = teacher_rows(inp.teacher, idx)[:, : inp.vocab].float()
        s, t, _, keep = _log_probs(xs, xt, take_rows(inp.temperature, idx))
        for name, value in _chunk_diagnostics(spec, s, t, keep).items():
            out[name].index_copy_(0, idx, value)
    return out


def _rows_view(x: Tensor, idx: Tensor, contiguous: bool, start: int) -> Tensor:
    """Rows ``idx`` of x: a view when they are a contiguous range, else a copy."""
    return x[start : start + idx.numel()] if contiguous else x.index_select(0, idx)


def _pad_columns(x: Tensor, width: int) -> Tensor:
    """``[C, v]`` → ``[C, width]`` with zeros on the right (KD over a prefix of the vocabulary)."""
    return x if x.shape[1] == width else torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1])], 1)


class _Chunk:
    """One chunk of rows: its indices, its float32 student logits and the CE bookkeeping."""

    def __init__(self, inp: LossInputs, idx: Tensor):
        self.idx = idx
        self.first = int(idx[0])
        self.contiguous = int(idx[-1]) - self.first + 1 == idx.numel()
        self.xs = _rows_view(inp.student, idx, self.contiguous, self.first).float()  # not modified
        if inp.labels is not None:
            self.labels = inp.labels.index_select(0, idx)
            self.valid = self.labels.ne(inp.ignore_index)
            self.safe = torch.where(self.valid, self.labels, 0).unsqueeze(1)
            self.ce_col = torch.where(self.valid, inp.ce_weight, 0.0).unsqueeze(1)  # the CE weight of each row


def sparse_kd_chunk(spec: LossSpec, xs: Tensor, sparse, temp, weight: Tensor, want_diagnostics: bool):
    """D(coarsened teacher, coarsened student) of one chunk and the gradient of Σ weight·D with
    respect to the student's (untempered) logits ``xs`` (float32 ``[C, V]``, not modified).

    With q = softmax(x) (x = logits/T), the coarsened student is c_i = log q_{id_i} and the bucket
    c_b = log Σ_{j ∉ ids} q_j (summed over the tail entries alone: no cancellation). Then
    ∂D/∂x_j = g_i − q_j G for j = id_i and q_j (g_b / q_b − G) for j ∉ ids, where g = ∂D/∂c comes
    from autograd on the ``k + 1`` columns (cheap) and G = Σ g. About five passes over the chunk.
    Returns (values ``[C]``, diagnostics, gradient ``[C, V]``).
    """
    finite = bool(torch.isfinite(xs.sum()))
    x = _divide(xs, temp) if finite else scaled_logits(xs, temp)
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    top = x.gather(-1, sparse.ids) - lse
    q = (x - lse).exp_()  # a new tensor: x may be xs itself
    q_top = q.gather(-1, sparse.ids)
    tail = q.scatter_(-1, sparse.ids, 0.0).sum(-1, keepdim=True)  # q now holds the tail entries only
    coarse = torch.cat([top, tail.log()], -1)
    teacher = retemper_log_probs(sparse.log_probs.float(), sparse.temperature, temp)
    with torch.enable_grad():  # the backends run inside an autograd Function's forward (no grad)
        c = coarse.detach().requires_grad_(True)
        s, t, keep = log_probs(c, teacher, 1.0)
        values = sum_entries(spec.record.terms(s, t, keep, **spec.kwargs), keep)
        (g,) = torch.autograd.grad((values * weight).sum(), c)
    diag = _chunk_diagnostics(spec, s.detach(), t, keep) if want_diagnostics else {}
    g = torch.where(torch.isfinite(coarse), g, 0.0)  # buckets outside both distributions: no gradient
    total = g.sum(-1, keepdim=True)
    per_tail = torch.where(tail > 0, g[:, -1:] / tail.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    grad = q.mul_(per_tail - total).scatter_add_(1, sparse.ids, g[:, :-1] - q_top * total)
    if isinstance(temp, Tensor):
        grad.div_(temp.unsqueeze(1))
    elif temp != 1.0:
        grad.div_(temp)
    return values.detach(), diag, grad


def _sparse_kd_part(spec, inp: LossInputs, c: _Chunk, out: PerRowLoss, want_grad: bool):
    """The chunk's divergence on sparse teacher targets into ``out``; returns its gradient [C, vocab]."""
    on = inp.kd_mask.index_select(0, c.idx)
    temp = take_rows(inp.temperature, c.idx)
    weight = torch.where(on, take_rows(inp.kd_weight, c.idx), 0.0)
    value, diag, grad_c = sparse_kd_chunk(spec, c.xs[:, : inp.vocab], inp.sparse.select(c.idx), temp, weight,
                                          bool(out.diagnostics))
    out.kd.index_copy_(0, c.idx, torch.where(on, value, 0.0))
    for name, v in diag.items():
        out.diagnostics[name].index_copy_(0, c.idx, torch.where(on, v, 0.0))
    return grad_c if want_grad else None


def _kd_part(spec, inp: LossInputs, c: _Chunk, out: PerRowLoss, want_grad: bool):
    """The chunk's divergence into ``out``; returns (its gradient or None, log q if shared with the CE)."""
    if inp.sparse is not None:
        return _sparse_kd_part(spec, inp, c, out, want_grad), None
    on = inp.kd_mask.index_select(0, c.idx)
    temp = take_rows(inp.temperature, c.idx)
    where = slice(c.first, c.first + c.idx.numel()) if c.contiguous else c.idx
    xt = teacher_rows(inp.teacher, where)[:, : inp.vocab].float()
    value, g, G, q, diag, log_q = _kd_chunk(spec, c.xs[:, : inp.vocab], xt, temp, bool(out.diagnostics))
    del xt
    out.kd.index_copy_(0, c.idx, torch.where(on, value, 0.0))
    for name, v in diag.items():
        out.diagnostics[name].index_copy_(0, c.idx, torch.where(on, v, 0.0))
    # the cross-entropy's softmax is q when nothing differs (temperature 1, same vocabulary)
    v_student = inp.student.shape[1]
    shared = log_q is not None and inp.vocab == v_student and not isinstance(temp, Tensor) and temp == 1.0
    grad_c = None
    if want_grad:
        # kd_w (g − q G) / T, plus, when shared, ce_w q: one pass over g for both
        coef = torch.where(on, take_rows(inp.kd_weight, c.idx), 0.0).unsqueeze(1)
        coef = coef / (temp.unsqueeze(1) if isinstance(temp, Tensor) else temp)
        q_coef = -(G * coef)
        if shared and inp.labels is not None and inp.ce_weight != 0.0:
            q_coef += c.ce_col
        grad_c = g.mul_(coef).addcmul_(q, q_coef)
    return grad_c, (log_q if shared else None)


def _ce_part(inp: LossInputs, c: _Chunk, out: PerRowLoss, grad_c, log_q, want_grad: bool):
    """The chunk's cross-entropy into ``out`` and its gradient added to ``grad_c`` (returned)."""
    shared = log_q is not None  # then grad_c already holds the ce_w·softmax part
    if log_q is None:
        log_q = torch.log_softmax(c.xs, dim=-1)
    out.ce.index_copy_(0, c.idx, torch.where(c.valid, log_q.gather(1, c.safe).squeeze(1).neg_(), 0.0))
    if want_grad and inp.ce_weight != 0.0:
        # ∂CE/∂x = softmax(x) − onehot(label), for rows with a label
        if grad_c is None:
            grad_c = log_q.exp_().mul_(c.ce_col)
        elif not shared:
            grad_c = _pad_columns(grad_c, inp.student.shape[1]).addcmul_(log_q.exp_(), c.ce_col)
        grad_c.scatter_add_(1, c.safe, -c.ce_col.expand(-1, 1))
    return grad_c


def forward(spec: LossSpec, inp: LossInputs, *, want_grad: bool, want_diagnostics: bool,
            chunk_size: int | None = None) -> PerRowLoss:
    """Values of every row and, with ``want_grad``, the gradient of the weighted loss (see spec)."""
    student = inp.student
    n, v_student = student.shape
    device = student.device
    has_kd = inp.has_teacher and spec.objective is not None
    zeros = lambda: torch.zeros(n, dtype=torch.float32, device=device)  # noqa: E731
    diag = {name: zeros() for name in spec.diagnostics} if want_diagnostics and has_kd else {}
    out = PerRowLoss(kd=zeros(), ce=zeros(), correct=zeros(), diagnostics=diag)
    active = inp.active_rows()
    if want_grad:
        out.grad = torch.empty(n, v_student, dtype=student.dtype, device=device)
        if not bool(active.all()):
            out.grad[~active] = 0.0  # rows without a loss term get zeros and nothing else
    rows = active.nonzero().squeeze(1)
    step = chunk_size or rows_per_chunk(rows.numel(), v_student, device.type, min_chunks=16)
    for begin in range(0, rows.numel(), step):
        c = _Chunk(inp, rows[begin : begin + step])
        if inp.labels is not None:
            out.correct.index_copy_(0, c.idx, (c.xs.argmax(-1).eq(c.labels) & c.valid).float())
        grad_c, log_q = _kd_part(spec, inp, c, out, want_grad) if has_kd else (None, None)
        if inp.labels is not None:
            grad_c = _ce_part(inp, c, out, grad_c, log_q, want_grad)
        if want_grad:
            grad_c = _pad_columns(grad_c, v_student) if grad_c is not None else c.xs.new_zeros(c.xs.shape)
            if c.contiguous:
                out.grad[c.first : c.first + c.idx.numel()].copy_(grad_c)
            else:
                out.grad.index_copy_(0, c.idx, grad_c.to(out.grad.dtype))
    return out
