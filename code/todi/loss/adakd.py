"""AdaKD (Xie et al., "LLM-Oriented Token-Adaptive Knowledge Distillation", AAAI 2026) as a token
planner for :class:`todi.loss.criterion.DistillationLoss`, so that it wraps every divergence, ToDi included.

Both modules are driven by a per-token difficulty score s_i, by default the Hellinger distance
between the teacher distribution p and the student distribution q (in [0, 1]):

* LATF (loss-driven adaptive token focusing): only the top-r fraction of the response tokens of a
  micro-batch, ranked by difficulty, get a KD term. r = 1 during warm-up; then an EMA of the
  distillation loss is compared with a reference L_ref taken at the end of warm-up: r shrinks by a
  factor (1 − δ) when the EMA fell below L_ref·(1 − ε), grows by (1 + δ) (capped at 1) when it rose
  above L_ref·(1 + ε), and L_ref becomes the EMA after each such move; r never drops below a floor.
* IDTS (inverse difficulty temperature scaling): selected token i is distilled at its own temperature
  τ_i = base·exp(−c·tanh(log(s_i / s_med))): colder than the base for hard tokens (s_i > s_med),
  warmer for easy ones; its divergence is multiplied by τ_i² (relative to the base, see below).
  Temperatures are detached: they are a schedule, not something the student may learn to game.

Choices where the paper leaves room (README, "AdaKD"):

1. Base temperature. ``base`` is the criterion's KD temperature T, and the weight is (τ_i / T)²,
   so that the project's convention (temperature on both sides, no T² factor) is kept: with c = 0 and
   r = 1 AdaKD is exactly the plain objective at any T. At T = 1 (the paper's setting) this is the
   paper's τ_i².
2. Normalisation. The paper averages the KD loss over the *selected* tokens. The trainer divides
   the step's summed KD by the number of response tokens N, so the weight also carries 1/r:
   Σ_selected w_i·D_i / N = Σ_selected (τ_i/T)²·D_i / (r·N), the mean over the ⌈r·N⌉ selected
   tokens up to the rounding of ⌈·⌉. Without it, shrinking r would shrink the KD term and hand the
   loss over to the cross-entropy, which the paper does not do.
3. The median s_med is taken over the selected tokens of the micro-batch (the set IDTS applies to),
   as the lower median (torch.median's convention for an even count).
4. Difficulty is computed at temperature T (the distributions being distilled), without gradient,
   in float32, a chunk of rows at a time (never more than one chunk × V in float32).
5. LATF steps once per optimizer step, on the per-selected-token loss all-reduced across
   data-parallel ranks, so every rank keeps the same r.

No host synchronisation in :meth:`AdaKD.plan` and :meth:`AdaKD.update` (they run every micro-batch
/ step on GPU): the LATF state lives in device tensors, decisions use ``torch.where``, and the top-r
selection ranks positions on the device and keeps rank < ⌈r·N⌉ computed there. Only
:meth:`AdaKD.log_stats`, :attr:`AdaKD.ratio` and :meth:`AdaKD.state_dict` read values back.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from todi.loss.criterion import KDPlan
from todi.kernels import TeacherHead, flatten_rows, teacher_rows
from todi.kernels.teacher_head import teacher_head_rows
from todi.kernels.rows import rows_per_chunk
from todi.objectives import check_logits, get, log_probs, sum_entries
from todi.objectives.math import TINY

__all__ = ["AdaKD", "DIFFICULTIES", "difficulty", "hellinger", "idts_temperature"]


# --------------------------------------------------------------------------------------------
# Difficulty scores: functions of sanitized log-probabilities (s, t, keep) [rows, V] -> [rows].
# --------------------------------------------------------------------------------------------

def _hellinger_score(s: Tensor, t: Tensor, keep: Tensor, labels: Tensor | None) -> Tensor:
    # √p − √q as exp(t/2) − exp(s/2): no square root of tiny probabilities, exact where p or q is 0.
    gap = (0.5 * t).exp() - (0.5 * s).exp()
    return (0.5 * sum_entries(gap * gap, keep)).sqrt().clamp(max=1.0)


def _objective_score(name: str) -> Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]:
    """A registered parameter-free divergence as a difficulty (its terms from the registry)."""
    terms = get(name).terms
    return lambda s, t, keep, labels: sum_entries(terms(s, t, keep), keep).clamp_min(0.0)


def _cross_entropy_score(s: Tensor, t: Tensor, keep: Tensor, labels: Tensor | None) -> Tensor:
    # −log q(y): the student's cross-entropy on the data token y (the official code's "ce" rule);
    # 0 where the position has no label (ignore_index).
    vocab = s.shape[-1]
    valid = (labels >= 0) & (labels < vocab)
    picked = s.gather(-1, labels.clamp(0, vocab - 1).unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, 0.0).clamp_min(0.0)


_SCORES: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]] = {
    "hellinger": _hellinger_score,
    "forward_kl": _objective_score("forward_kl"),
    "reverse_kl": _objective_score("reverse_kl"),
    "cross_entropy": _cross_entropy_score,
}
DIFFICULTIES = tuple(_SCORES)


def _check_logits(student_logits: Tensor, teacher_logits: Tensor | TeacherHead, temperature: float) -> None:
    """Shapes and dtypes; a :class:`TeacherHead` (a hidden-state cache) may have more output rows than
    the compared vocabulary (its first ``V`` logits are read)."""
    if isinstance(teacher_logits, TeacherHead) and isinstance(student_logits, Tensor):
        if teacher_logits.shape[:-1] != student_logits.shape[:-1] or teacher_logits.shape[-1] < student_logits.shape[-1]:
            raise ValueError(f"teacher {tuple(teacher_logits.shape)} does not cover student logits "
                             f"{tuple(student_logits.shape)}")
    elif not isinstance(student_logits, Tensor) or not isinstance(teacher_logits, Tensor):
        raise TypeError("student_logits and teacher_logits must be tensors of shape [..., V]")
    else:
        check_logits(student_logits, teacher_logits)  # shapes and dtypes, as divergence() checks them
    if isinstance(temperature, Tensor) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")


@torch.no_grad()
def difficulty(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor | TeacherHead,
    temperature: float = 1.0,
    *,
    labels: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-position difficulty ``[...]`` (float32, no grad) of student ``[..., V]`` vs teacher ``[..., V]``
    (or a :class:`todi.kernels.TeacherHead` whose first ``V`` logits are computed a chunk at a time).

    ``name``: "hellinger" (default of AdaKD), "forward_kl", "reverse_kl", or "cross_entropy"
    (−log q(y) of the data token, needs ``labels`` ``[...]``: int64, negative where there is none),
    after dividing both logits by ``temperature``. Entries where either logit is ±inf are left out,
    as in :mod:`todi.objectives`. Rows are processed ``chunk_size`` at a time (default: the
    device's chunk budget, :func:`todi.kernels.rows.rows_per_chunk`).
    """
    if name not in _SCORES:
        raise ValueError(f"unknown difficulty {name!r}; valid: {', '.join(DIFFICULTIES)}")
    _check_logits(student_logits, teacher_logits, temperature)
    if name == "cross_entropy":
        if labels is None:
            raise ValueError("the cross_entropy difficulty needs the labels (the data tokens)")
        if labels.shape != student_logits.shape[:-1]:
            raise ValueError(f"labels must have shape {tuple(student_logits.shape[:-1])}, got {tuple(labels.shape)}")
        flat_labels = labels.reshape(-1)
    vocab = student_logits.shape[-1]
    if chunk_size is None:
        n, device_type = student_logits[..., 0].numel(), student_logits.device.type
        chunk_size = rows_per_chunk(n, vocab, device_type)
        if isinstance(teacher_logits, TeacherHead):  # its logits come from a matmul: larger chunks
            chunk_size = teacher_head_rows(n, teacher_logits.shape[-1], device_type)
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    score = _SCORES[name]
    # reshape is a view for the usual layouts (also for a vocabulary slice [..., :V]): no full copy.
    student = student_logits.detach().reshape(-1, vocab)
    teacher = flatten_rows(teacher_logits.detach())
    out = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
    for start in range(0, student.shape[0], chunk_size):
        stop = start + chunk_size
        s, t, keep = log_probs(student[start:stop], teacher_rows(teacher, slice(start, stop))[:, :vocab], temperature)
        out[start:stop] = score(s, t, keep, flat_labels[start:stop] if name == "cross_entropy" else None)
    return out.view(student_logits.shape[:-1])


def hellinger(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, *, chunk_size: int | None = None
) -> Tensor:
    """Hellinger distance (1/√2)·‖√p − √q‖₂ per position: float32 ``[...]`` in [0, 1], no grad."""
    return difficulty("hellinger", student_logits, teacher_logits, temperature, chunk_size=chunk_size)


def _idts(scores: Tensor, median: Tensor, base: float, c: float) -> Tensor:
    # Scores at or below float32's smallest normal count as equal: a zero score or median gives a
    # finite log-ratio instead of ±inf or NaN.
    log_ratio = scores.float().clamp_min(TINY).log() - median.float().clamp_min(TINY).log()
    return (base * torch.exp(-c * torch.tanh(log_ratio))).detach()


def _check_idts(base: float, c: float) -> None:
    if not (math.isfinite(base) and base > 0):
        raise ValueError(f"IDTS base temperature must be a finite float > 0, got {base!r}")
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"IDTS c must be a finite float >= 0, got {c!r}")


@torch.no_grad()
def idts_temperature(scores: Tensor, base: float = 1.0, c: float = 0.5) -> Tensor:
    """IDTS temperatures base·exp(−c·tanh(log(s_i / median(s)))), detached float32, shape of ``scores``.

    The median is over all the scores passed in (lower median for an even count). Values lie in
    [base·e^−c, base·e^c]; a score equal to the median gets exactly ``base``.
    """
    _check_idts(base, c)
    if scores.numel() == 0:
        raise ValueError("idts_temperature needs at least one score (the median of nothing is undefined)")
    median = scores.detach().reshape(-1).float().median()
    return _idts(scores.detach(), median, base, c)


# --------------------------------------------------------------------------------------------
# The planner.
# --------------------------------------------------------------------------------------------

class AdaKD:
    """LATF token selection + IDTS temperatures, as a :class:`todi.loss.criterion.TokenPlanner`.

    Args:
        total_steps: number of optimizer steps of the run (the warm-up is a fraction of it).
        c: IDTS strength (0 disables IDTS: every token at the base temperature).
        ema_decay: decay of the EMA of the distillation loss.
        eps: relative band around L_ref inside which r does not move.
        delta: relative step of r.
        warmup: fraction of ``total_steps`` during which r = 1; L_ref is taken right after it.
        min_ratio: floor of r.
        difficulty: "hellinger" (paper), "forward_kl", "reverse_kl" or "cross_entropy" (ablation;
            the student's CE on the data token, so plan() must then get the labels).

    Usage: pass as ``planner=`` to :class:`~todi.loss.criterion.DistillationLoss`; call :meth:`update`
    once per optimizer step on every rank with the step's local sums of the criterion's
    ``stats.kd`` and ``stats.kd_tokens``.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        c: float = 0.5,
        ema_decay: float = 0.99,
        eps: float = 0.05,
        delta: float = 0.05,
        warmup: float = 0.05,
        min_ratio: float = 0.1,
        difficulty: str = "hellinger",
    ) -> None:
        def bad(field: str, rule: str, value) -> ValueError:
            return ValueError(f"AdaKD: {field} must be {rule}, got {value!r}")

        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise bad("total_steps", "an int >= 1 (optimizer steps)", total_steps)
        _check_idts(1.0, float(c))
        if not 0.0 <= ema_decay < 1.0:
            raise bad("ema_decay", "in [0, 1)", ema_decay)
        if not (math.isfinite(eps) and 0.0 <= eps < 1.0):
            raise bad("eps", "in [0, 1)", eps)
        if not 0.0 <= delta < 1.0:
            raise bad("delta", "in [0, 1)", delta)
        if not 0.0 <= warmup <= 1.0:
            raise bad("warmup", "a fraction of the optimizer steps in [0, 1]", warmup)
        if not 0.0 < min_ratio <= 1.0:
            raise bad("min_ratio", "in (0, 1]", min_ratio)
        if difficulty not in _SCORES:
            raise bad("difficulty", "one of " + ", ".join(DIFFICULTIES), difficulty)
        self.total_steps = total_steps
        self.c = float(c)
        self.ema_decay = float(ema_decay)
        self.eps = float(eps)
        self.delta = float(delta)
        self.warmup = float(warmup)
        self.min_ratio = float(min_ratio)
        self.difficulty = difficulty

        # LATF state. The step counter is a host int (the schedule is known on the host); the rest
        # is float64/bool device tensors so that update() never waits for the device.
        self._step = 0
        self._ratio = torch.ones((), dtype=torch.float64)
        self._ema = torch.zeros((), dtype=torch.float64)
        self._has_ema = torch.zeros((), dtype=torch.bool)
        self._ref = torch.zeros((), dtype=torch.float64)
        self._has_ref = torch.zeros((), dtype=torch.bool)
        # τ range over the selected tokens since the last log_stats() (logging only).
        self._tau_min = torch.full((), math.inf)
        self._tau_max = torch.full((), -math.inf)

    # ---- state placement -------------------------------------------------------------------
    _TENSORS = ("_ratio", "_ema", "_has_ema", "_ref", "_has_ref", "_tau_min", "_tau_max")

    def _to(self, device: torch.device) -> None:
        if self._ratio.device != device:
            for name in self._TENSORS:
                setattr(self, name, getattr(self, name).to(device))

    # ---- per micro-batch ---------------------------------------------------------------------
    def plan(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        mask: Tensor,
        temperature: float = 1.0,
        *,
        labels: Tensor | None = None,
    ) -> KDPlan:
        """The KD plan of one micro-batch.

        Args:
            student_logits, teacher_logits: ``[..., V]`` (same shape).
            mask: bool ``[...]``, the response positions.
            temperature: the criterion's KD temperature T, IDTS's base.
            labels: int64 ``[...]``, the data tokens; needed by the "cross_entropy" difficulty only.

        Returns a :class:`KDPlan` with ``mask`` = the ⌈r·N⌉ hardest response positions (N = their
        number; ties go to the earlier position), ``temperature`` = τ ``[...]`` float32 (defined
        everywhere, used where selected), ``weight`` = (τ/T)²/r ``[...]`` float32.
        """
        if isinstance(temperature, Tensor):
            raise TypeError("AdaKD.plan: temperature must be the base KD temperature (a float); AdaKD sets per-token ones")
        temperature = float(temperature)
        _check_logits(student_logits, teacher_logits, temperature)
        if mask.shape != student_logits.shape[:-1] or mask.dtype != torch.bool:
            raise ValueError(
                f"AdaKD.plan: mask must be bool of shape {tuple(student_logits.shape[:-1])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        if self.difficulty == "cross_entropy" and labels is None:
            raise ValueError("AdaKD(difficulty='cross_entropy') ranks tokens by the student's CE on the data "
                             "token: the criterion must call plan(..., labels=labels)")
        device = student_logits.device
        self._to(device)
        shape = mask.shape
        flat_mask = mask.reshape(-1)
        n = flat_mask.numel()
        if n == 0:
            empty = torch.zeros(shape, dtype=torch.float32, device=device)
            return KDPlan(mask=mask.clone(), temperature=empty + temperature, weight=empty)

        scores = difficulty(self.difficulty, student_logits, teacher_logits, temperature, labels=labels).reshape(-1)
        with torch.no_grad():
            # Rank the response positions by difficulty, hardest first; the stable sort breaks ties
            # by position, so the selection is deterministic on every device.
            key = scores.masked_fill(~flat_mask, -math.inf)
            sorted_scores, order = torch.sort(key, descending=True, stable=True)
            rank = torch.empty_like(order).scatter_(0, order, torch.arange(n, device=device))
            k = torch.ceil(self._ratio * flat_mask.sum()).long()  # ⌈r·N⌉, on the device
            selected = (rank < k) & flat_mask
            # Lower median of the k selected scores: ascending position (k−1)//2, i.e. rank k//2.
            mid = torch.div(k, 2, rounding_mode="floor").clamp(0, n - 1)
            median = sorted_scores.gather(0, mid.view(1)).squeeze(0)
            tau = _idts(scores, median, temperature, self.c)
            weight = ((tau / temperature) ** 2 / self._ratio).float()
            self._tau_min = torch.minimum(self._tau_min, torch.where(selected, tau, math.inf).amin())
            self._tau_max = torch.maximum(self._tau_max, torch.where(selected, tau, -math.inf).amax())
        return KDPlan(mask=selected.view(shape), temperature=tau.view(shape), weight=weight.view(shape))

    # ---- per optimizer step ------------------------------------------------------------------
    def update(self, kd_sum: Tensor | float, kd_tokens: Tensor | float) -> None:
        """Advance LATF by one optimizer step.

        ``kd_sum``/``kd_tokens``: this rank's sums over the step's micro-batches of the criterion's
        ``stats.kd`` and ``stats.kd_tokens``. They are all-reduced here when torch.distributed
        is initialised, so every rank must call update() at every step. The tracked loss is the
        mean per selected token, Σ(τ/T)²·D / Σ|selected| = kd_sum·r / kd_tokens; a step without
        selected tokens leaves the state unchanged (but counts as a step).
        """
        device = kd_sum.device if isinstance(kd_sum, Tensor) else self._ratio.device
        self._to(device)
        sums = torch.stack([
            torch.as_tensor(kd_sum, dtype=torch.float64, device=device).reshape(()),
            torch.as_tensor(kd_tokens, dtype=torch.float64, device=device).reshape(()),
        ])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        total, tokens = sums[0], sums[1]
        valid = tokens > 0
        loss = total * self._ratio / tokens.clamp_min(1.0)
        ema = torch.where(self._has_ema, self.ema_decay * self._ema + (1.0 - self.ema_decay) * loss, loss)
        self._ema = torch.where(valid, ema, self._ema)
        self._has_ema = self._has_ema | valid

        self._step += 1
        if self._step <= self.warmup * self.total_steps:
            return  # warm-up: r stays 1
        set_ref = valid & ~self._has_ref
        steady = valid & self._has_ref
        shrink = steady & (self._ema < self._ref * (1.0 - self.eps))
        grow = steady & (self._ema > self._ref * (1.0 + self.eps))
        ratio = torch.where(shrink, (self._ratio * (1.0 - self.delta)).clamp_min(self.min_ratio), self._ratio)
        self._ratio = torch.where(grow, (ratio * (1.0 + self.delta)).clamp_max(1.0), ratio)
        self._ref = torch.where(set_ref | shrink | grow, self._ema, self._ref)
        self._has_ref = self._has_ref | set_ref

    # ---- host-side reading -------------------------------------------------------------------
    @property
    def ratio(self) -> float:
        """The current r (reads the device: for logging and tests, not for the hot loop)."""
        return float(self._ratio.item())

    @property
    def step(self) -> int:
        """Optimizer steps seen by :meth:`update`."""
        return self._step

    def log_stats(self) -> dict[str, float]:
        """``adakd_ratio`` (r), ``adakd_loss_ema`` (once a loss was seen), and the range of the
        selected tokens' temperatures since the last call, ``adakd_tau_min``/``adakd_tau_max``
        (absent if no token was selected since then). Reads the device; resets the τ range."""
        stats = {"adakd_ratio": float(self._ratio.item())}
        if bool(self._has_ema.item()):
            stats["adakd_loss_ema"] = float(self._ema.item())
        tau_min, tau_max = float(self._tau_min.item()), float(self._tau_max.item())
        if tau_min <= tau_max:
            stats["adakd_tau_min"], stats["adakd_tau_max"] = tau_min, tau_max
        self._tau_min = torch.full_like(self._tau_min, math.inf)
        self._tau_max = torch.full_like(self._tau_max, -math.inf)
        return stats

    # ---- checkpointing -----------------------------------------------------------------------
    def _config(self) -> dict:
        return {
            "total_steps": self.total_steps, "c": self.c, "ema_decay": self.ema_decay, "eps": self.eps,
            "delta": self.delta, "warmup": self.warmup, "min_ratio": self.min_ratio, "difficulty": self.difficulty,
        }

    def state_dict(self) -> dict:
        """Everything for an exact resume, as plain Python values (float64 values are exact)."""
        return {
            "version": 1,
            "config": self._config(),
            "step": self._step,
            "ratio": float(self._ratio.item()),
            "ema": float(self._ema.item()),
            "has_ema": bool(self._has_ema.item()),
            "ref": float(self._ref.item()),
            "has_ref": bool(self._has_ref.item()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; the settings must match those it was saved with."""
        keys = {"version", "config", "step", "ratio", "ema", "has_ema", "ref", "has_ref"}
        if not isinstance(state, dict) or set(state) != keys:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"AdaKD state must have the keys {sorted(keys)}, got {got}")
        if state["version"] != 1:
            raise ValueError(f"AdaKD state version {state['version']!r} is not supported (expected 1)")
        mine = self._config()
        differ = [f"{k}: saved {state['config'].get(k)!r}, now {v!r}" for k, v in mine.items() if state["config"].get(k) != v]
        if differ:
            raise ValueError(
                "AdaKD state was saved with other settings (" + "; ".join(differ)
                + "); resume with the same --adakd-* flags and number of training steps"
            )
        if not (isinstance(state["step"], int) and state["step"] >= 0 and 0.0 < state["ratio"] <= 1.0):
            raise ValueError(f"AdaKD state has an invalid step {state['step']!r} or ratio {state['ratio']!r}")
        device = self._ratio.device
        self._step = state["step"]
        self._ratio = torch.tensor(float(state["ratio"]), dtype=torch.float64, device=device)
        self._ema = torch.tensor(float(state["ema"]), dtype=torch.float64, device=device)
        self._has_ema = torch.tensor(bool(state["has_ema"]), device=device)
        self._ref = torch.tensor(float(state["ref"]), dtype=torch.float64, device=device)
        self._has_ref = torch.tensor(bool(state["has_ref"]), device=device)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"AdaKD({settings})"
