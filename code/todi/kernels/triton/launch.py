"""The Python side of the Triton kernels: checks, output buffers, launch arguments.

:func:`forward` launches :func:`todi.kernels.triton.kernel.loss_kernel` once over all rows and
returns the per-row values (and the gradient of ``Σ_r kd_w·kd[r] + ce_w·ce[r]`` with respect to
the student's logits); :func:`scale_rows_` multiplies the rows of that gradient by the upstream
gradient of each row's loss.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from todi.kernels.rows import PerRowLoss, LossInputs, LossSpec
from todi.kernels.triton import config
from todi.kernels.triton.kernel import loss_kernel, scale_kernel
from todi.kernels.triton.terms import (
    BRANCH_DIAGNOSTICS, BRANCHES, CE_ONLY, MAX_PARAMS, ONLINE_NONE, ONLINE_SUMS, todi_beta_one,
)

VECTOR_BYTES = 16  # the aligned frame's unit: one 16-byte load or store
SCALE_BLOCK = 4096  # columns per step of scale_kernel on a GPU
SCALE_BLOCK_INTERPRETED = 64  # and under the interpreter
SCALE_WARPS = 8


def branch_code(spec: LossSpec) -> int | None:
    """The kernel branch of ``spec``'s objective (its registry entry names it), or None."""
    if spec.objective is None:
        return int(CE_ONLY.value)
    name = spec.triton_branch
    return None if name is None else int(BRANCHES[name].value)


def _params(spec: LossSpec) -> list[float]:
    """The objective's parameters in registry order, padded with zeros to MAX_PARAMS (p0, p1)."""
    values = [v for _, v in spec.params]
    if len(values) > MAX_PARAMS:
        raise ValueError(f"{spec.objective}: the Triton kernel takes at most {MAX_PARAMS} parameters")
    return values + [0.0] * (MAX_PARAMS - len(values))


def forward(spec: LossSpec, inp: LossInputs, *, want_grad: bool, want_diagnostics: bool) -> PerRowLoss:
    """Values of every row and, with ``want_grad``, the gradient of the weighted loss (see spec)."""
    cfg = config.active_config()
    student, teacher = inp.student, inp.teacher
    n, v_student = student.shape
    device = student.device
    has_kd = teacher is not None and spec.objective is not None
    has_ce = inp.labels is not None
    if student.stride(1) != 1 or (teacher is not None and teacher.stride(1) != 1):
        raise ValueError("the Triton kernels need the last dimension of the logits to be contiguous")
    code = branch_code(spec) if has_kd else int(CE_ONLY.value)
    if code is None:
        raise ValueError(f"objective {spec.objective} {spec.kwargs} has no Triton branch; use impl 'chunked' or 'auto'")

    new = lambda: torch.empty(n, dtype=torch.float32, device=device)  # noqa: E731
    kd, ce, correct = new(), new(), new()
    diag_name = BRANCH_DIAGNOSTICS.get(spec.triton_branch) if has_kd and want_diagnostics else None
    diagnostics = {diag_name: new()} if diag_name is not None else {}
    grad = torch.empty(n, v_student, dtype=student.dtype, device=device) if want_grad else None
    out = PerRowLoss(kd=kd, ce=ce, correct=correct, diagnostics=diagnostics, grad=grad)
    if n == 0:
        return out

    temp_rows = isinstance(inp.temperature, Tensor)
    kdw_rows = isinstance(inp.kd_weight, Tensor)
    dummy = kd  # stands in for the pointers a launch does not read
    programs = config.num_programs(n, device, cfg)
    vec = VECTOR_BYTES // student.element_size()
    stride_t = teacher.stride(0) if has_kd else student.stride(0)
    stride_g = grad.stride(0) if want_grad else student.stride(0)
    p0, p1 = _params(spec)
    loss_kernel[(programs,)](
        S=student,
        T=teacher if has_kd else student,
        LABELS=inp.labels.contiguous() if has_ce else dummy,
        TEMP=inp.temperature.contiguous() if temp_rows else dummy,
        KDW=inp.kd_weight.contiguous() if kdw_rows else dummy,
        KDMASK=inp.kd_mask.to(torch.int8).contiguous() if has_kd else dummy,
        GRAD=grad if want_grad else dummy,
        OUT_KD=kd,
        OUT_CE=ce,
        OUT_CORRECT=correct,
        OUT_DIAG=diagnostics.get(diag_name, dummy),
        n_rows=n,
        n_programs=programs,
        rows_per_program=triton.cdiv(n, programs),
        V=inp.vocab if has_kd else v_student,
        VS=v_student,
        stride_s=student.stride(0),
        stride_t=stride_t,
        stride_g=stride_g,
        temp=1.0 if temp_rows else float(inp.temperature),
        kd_w_scalar=0.0 if kdw_rows else float(inp.kd_weight),
        ce_w=float(inp.ce_weight),
        p0=p0,
        p1=p1,
        ignore_index=inp.ignore_index,
        OBJ=code,
        TODI_BETA_ONE=todi_beta_one(code, p0),
        ONLINE=ONLINE_SUMS.get(code, ONLINE_NONE.value),
        HAS_KD=has_kd,
        HAS_CE=has_ce,
        CE_GRAD=has_ce and want_grad and inp.ce_weight != 0.0,
        CE_SHARED=has_kd and not temp_rows and float(inp.temperature) == 1.0 and inp.vocab == v_student,
        PADDED=has_kd and has_ce and inp.vocab < v_student,
        TEMP_ROWS=temp_rows,
        KDW_ROWS=kdw_rows,
        WRITE_GRAD=want_grad,
        WANT_DIAG=diag_name is not None,
        # the teacher's and the gradient's rows start at the same offset within a vector as the
        # student's (same stride modulo the vector): their interior tiles are aligned too
        ALIGNED_T=(stride_t - student.stride(0)) % vec == 0,
        ALIGNED_G=(stride_g - student.stride(0)) % vec == 0,
        J=cfg.vectors,
        TH=config.threads_per_program(cfg),
        K=cfg.search_k,
        VEC=vec,
        STAGES=cfg.stages,
        num_warps=cfg.num_warps,
    )
    return out


def scale_rows_(grad: Tensor, scale: Tensor, active: Tensor) -> None:
    """grad[r] *= scale[r] in place for active rows; rows whose scale is 1 are not touched."""
    n, v = grad.shape
    if n == 0:
        return
    block = SCALE_BLOCK_INTERPRETED if config.interpreting() else SCALE_BLOCK
    scale = scale.reshape(n) if scale.dim() != 1 else scale
    scale_kernel[(n,)](
        grad, scale, active.to(torch.int8), grad.stride(0), scale.stride(0), v, BLOCK=block, num_warps=SCALE_WARPS
    )
