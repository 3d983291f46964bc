"""The teacher's logits as its output layer applied to its final hidden states, computed a chunk of
rows at a time: what a hidden-state teacher cache gives the loss instead of an ``N × V`` tensor.

``logits = cap · tanh((hidden @ weight.T + bias) / cap)`` (``cap``: the teacher's final soft-capping,
None for a plain linear map), in the dtype of ``hidden`` and ``weight``, exactly the operation of the
teacher's own output layer. Every consumer of teacher logits reads them through :func:`teacher_rows`,
which accepts a tensor or a :class:`TeacherHead`, so the kernels, the fused student head and AdaKD's
planner each materialise only the rows of their current chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TEACHER_HEAD_BYTES", "TeacherHead", "teacher_head_rows", "teacher_rows"]

# A chunk of teacher logits computed at once: the matmul reads the whole output layer (V × H) per
# chunk, so chunks must be large for it to be compute- rather than memory-bound; the float32
# [chunk, V] logits stay within this budget (a live teacher's [B, L, V] logits are larger).
TEACHER_HEAD_BYTES = {"cpu": 64 * 1024 * 1024, "cuda": 512 * 1024 * 1024}


def teacher_head_rows(n_rows: int, vocab: int, device_type: str) -> int:
    """Rows of teacher logits computed at once (at least 1, at most ``n_rows``)."""
    budget = TEACHER_HEAD_BYTES.get(device_type, TEACHER_HEAD_BYTES["cuda"])
    return max(1, min(n_rows, budget // (4 * max(vocab, 1))))


@dataclass
class TeacherHead:
    """Teacher logits ``[..., V_t]`` held as ``hidden`` ``[..., H]`` and the output layer
    (``weight`` ``[V_t, H]``, ``bias`` ``[V_t]`` or None, ``softcap`` or None).

    Shapes behave like the logits they stand for (``shape``, ``reshape`` of the leading dimensions);
    nothing here requires a gradient (a cache holds constants)."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None
    softcap: float | None = None

    requires_grad = False

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.weight.shape[0]))

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def dim(self) -> int:
        return self.hidden.dim()

    def detach(self) -> "TeacherHead":
        return self

    def flat(self) -> "TeacherHead":
        """The same logits as rows ``[N, V_t]``."""
        return TeacherHead(self.hidden.reshape(-1, self.hidden.shape[-1]), self.weight, self.bias, self.softcap)

    def logits(self, hidden: Tensor) -> Tensor:
        """The teacher's output layer on ``hidden`` ``[C, H]`` → ``[C, V_t]``."""
        z = F.linear(hidden, self.weight, self.bias)
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def rows(self, idx: Tensor | slice) -> Tensor:
        """Logits of rows ``idx`` (indices or a slice) of the flattened rows ``[C, V_t]``."""
        h = self.hidden.reshape(-1, self.hidden.shape[-1])
        return self.logits(h[idx] if isinstance(idx, slice) else h.index_select(0, idx))

    def materialize(self) -> Tensor:
        """All the logits ``[..., V_t]`` (for the reference implementation and small inputs)."""
        return self.logits(self.hidden.reshape(-1, self.hidden.shape[-1])).reshape(self.shape)


def teacher_rows(teacher: Tensor | TeacherHead, idx: Tensor | slice) -> Tensor:
    """Rows ``idx`` of flattened teacher logits ``[N, V_t]``, from a tensor or a :class:`TeacherHead`."""
    if isinstance(teacher, TeacherHead):
        return teacher.rows(idx)
    return teacher[idx] if isinstance(idx, slice) else teacher.index_select(0, idx)
