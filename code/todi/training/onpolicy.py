"""On-policy data for KD runs: which source each optimizer step trains on, and its micro-batches.

Data modes (``--data-mode``), each composable with every objective, AdaKD, LoRA and a teacher cache:

* ``fixed``: the dataset's responses (teacher-forced KD, the default);
* ``gkd`` (Agarwal et al., 2024; TRL's GKDTrainer): with probability λ (``--student-gen-ratio``)
  the student's own responses to the batch's prompts, else (``--seq-kd``) the teacher's, else the
  dataset's;
* ``distillm`` (Ko et al., 2024, its ``finetune.py``): a threshold τ (from ``--init-threshold``, up by
  0.1 to at most 1 when a dev loss rises by ``--loss-eps`` over the reference, which then moves to it),
  ρ = τ·(1 − step/T); a step generates a fresh student batch (pushed to a replay buffer of
  ``--replay-capacity`` samples) when r < ρ, or r < τ while the buffer is not full; replays a batch
  of stored samples when r < τ; else trains on the dataset batch.

Determinism: the draw r of step s is a hash of (seed, s), the same on every rank; a rollout is a pure
function of (seed, s, example index) (:func:`todi.generation.rollout.rollout_seed`); the buffer is
the same on every rank (each step's samples are gathered and stored in example-index order) and a
replay draws by a hash of (seed, s). So 1 or 8 ranks, any micro-batch split and a resume give the
same batches; the resumable state holds τ, its reference loss and the buffer.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from todi.data.instructions import Batch, TokenizedExample
from todi.generation.rollout import rollout_seed
from todi.generation.sampling import SamplingConfig
from todi.util.distributed import DistEnv, all_reduce_sum

__all__ = ["DATA_MODES", "DataMixer", "MixerSettings", "Schedule", "step_uniform"]

DATA_MODES = ("fixed", "gkd", "distillm")
THRESHOLD_STEP = 0.1  # DistiLLM's hard-coded increment of τ
MAX_THRESHOLD = 1.0
_KIND_SALT, _REPLAY_SALT = 1, 2


def step_uniform(seed: int, step: int, salt: int) -> float:
    """A uniform draw in [0, 1) that depends only on (seed, step, salt): the same on every rank and after a resume."""
    return random.Random((seed << 40) ^ (step << 4) ^ salt).random()


@dataclass(frozen=True)
class MixerSettings:
    mode: str
    ratio: float
    seq_kd: bool
    init_threshold: float
    loss_eps: float
    capacity: int
    sampling: SamplingConfig

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MixerSettings":
        sampling = SamplingConfig(do_sample=True, top_k=args.rollout_top_k, top_p=args.rollout_top_p,
                                  temperature=args.rollout_temperature, no_repeat_ngram_size=0,
                                  max_length=args.max_prompt_length + args.rollout_max_new_tokens,
                                  max_prompt_length=args.max_prompt_length)
        return cls(args.data_mode, args.student_gen_ratio, args.seq_kd, args.init_threshold, args.loss_eps,
                   args.replay_capacity, sampling)


class Schedule:
    """Which source each optimizer step trains on (GKD's λ, DistiLLM's τ and ρ): the rules only."""

    def __init__(self, settings: MixerSettings, *, seed: int, total_steps: int):
        self.s, self.seed, self.total_steps = settings, seed, total_steps
        self.tau = settings.init_threshold
        self.reference_loss: float | None = None  # DistiLLM: the dev loss τ is compared with

    def rho(self, step: int) -> float:
        return self.tau * (1.0 - step / max(self.total_steps, 1))

    def kind(self, step: int, stored: int) -> str:
        """"dataset", "student", "teacher" (GKD's --seq-kd) or "replay" for optimizer step ``step``
        (0-based), with ``stored`` samples in the replay buffer."""
        r = step_uniform(self.seed, step, _KIND_SALT)
        if self.s.mode == "gkd":
            return "student" if r < self.s.ratio else "teacher" if self.s.seq_kd else "dataset"
        if self.s.mode == "distillm":
            if r < self.rho(step) or (r < self.tau and stored < self.s.capacity):
                return "student"
            return "replay" if r < self.tau and stored else "dataset"
        return "dataset"

    def needs_reference(self) -> bool:
        """Whether DistiLLM's rule still lacks its first dev loss (a fresh run: evaluate before training)."""
        return self.s.mode == "distillm" and self.reference_loss is None

    def on_dev_loss(self, loss: float) -> None:
        """DistiLLM's threshold rule, at every dev evaluation (the first one sets the reference)."""
        if self.s.mode != "distillm":
            return
        if self.reference_loss is None:
            self.reference_loss = loss
        elif loss >= self.reference_loss + self.s.loss_eps:
            self.tau = min(self.tau + THRESHOLD_STEP, MAX_THRESHOLD)
            self.reference_loss = loss


class DataMixer:
    """Per optimizer step: the batch source (:meth:`kind`, by :class:`Schedule`) and, for a generated or
    replayed step, its micro-batches (:meth:`batches`). ``collate`` turns examples into batches without
    teacher-cache targets; ``engines`` (:class:`todi.training.rollout_engines.RolloutEngines`) sample."""

    def __init__(self, settings: MixerSettings, *, seed: int, total_steps: int, env: DistEnv, collate, engines,
                 max_length: int, micro_batch: int, grad_accum: int):
        self.s, self.seed, self.env = settings, seed, env
        self.schedule = Schedule(settings, seed=seed, total_steps=total_steps)
        self.collate, self.max_length, self.engines = collate, max_length, engines
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        self.buffer: deque[tuple[int, int, np.ndarray]] = deque(maxlen=settings.capacity)  # (index, prompt_len, ids)
        self._stats = _Stats()
        self._last_step = 0

    def kind(self, step: int) -> str:
        return self.schedule.kind(step, len(self.buffer))

    def needs_reference(self) -> bool:
        return self.schedule.needs_reference()

    def on_dev_loss(self, loss: float) -> None:
        self.schedule.on_dev_loss(loss)

    # ---- the batches ---------------------------------------------------------------------------
    def batches(self, kind: str, step: int, micro_batches: list[Batch], *, student, teacher) -> list[Batch]:
        """The step's micro-batches for ``kind`` (host tensors); the dataset's for "dataset"."""
        self._stats.steps += 1
        self._last_step = step
        if kind == "dataset":
            return micro_batches
        self._stats.generated += 1
        if kind == "replay":
            return self._replayed(step)
        start = time.perf_counter()
        engine = self.engines.student(student, step) if kind == "student" else self.engines.teacher(teacher)
        rolled = self._rollouts(engine, [e for b in micro_batches for e in b.examples], step)
        self.engines.release()
        self._stats.gen_seconds += time.perf_counter() - start
        self._stats.gen_tokens += sum(len(e.input_ids) - e.prompt_len for e in rolled)
        self._stats.rollouts += len(rolled)
        if self.s.mode == "distillm":
            self._push(rolled)
        bounds = np.cumsum([0] + [len(b.examples) for b in micro_batches])
        return [self.collate(rolled[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _rollouts(self, engine, examples: list[TokenizedExample], step: int) -> list[TokenizedExample]:
        """The examples' prompts with the engine's sampled responses (one engine call for the step)."""
        prompts = [e.input_ids[: e.prompt_len] for e in examples]
        # a sequence holds at most --max-length ids (as the dataset's); a prompt leaves at least one
        budgets = [min(self.s.sampling.max_new_tokens, self.max_length - len(p)) for p in prompts]
        continuations = engine.continuations(prompts, [e.index for e in examples], self.s.sampling,
                                             seed=rollout_seed(self.seed, step), budgets=budgets)
        return [TokenizedExample(p + c, len(p), None, e.index) for p, c, e in zip(prompts, continuations, examples)]

    def _push(self, examples: list[TokenizedExample]) -> None:
        """Store the step's samples of every rank, in example-index order (the same buffer everywhere)."""
        mine = [(e.index, e.prompt_len, np.asarray(e.input_ids, dtype=np.int32)) for e in examples]
        if self.env.world_size > 1:
            import torch.distributed as dist

            gathered: list = [None] * self.env.world_size
            dist.all_gather_object(gathered, mine)
            mine = [item for part in gathered for item in part]
        self.buffer.extend(sorted(mine, key=lambda item: item[0]))

    def _replayed(self, step: int) -> list[Batch]:
        """A global batch of stored samples (drawn the same on every rank; a replay happens only with a full
        buffer, at least a global batch: :func:`todi.training.setup.build_mixer`); this rank's share, as
        ``grad_accum`` micro-batches of ``micro_batch`` samples."""
        rng = random.Random(int(step_uniform(self.seed, step, _REPLAY_SALT) * 2**52))
        chosen = sorted(rng.sample(range(len(self.buffer)), self.micro_batch * self.grad_accum * self.env.world_size))
        items = [self.buffer[i] for i in chosen][self.env.rank :: self.env.world_size]
        examples = [TokenizedExample(ids.tolist(), prompt_len, None, index) for index, prompt_len, ids in items]
        size = self.micro_batch
        return [self.collate(examples[i : i + size]) for i in range(0, len(examples), size)]

    # ---- logging and resume --------------------------------------------------------------------
    def add_times(self, *, teacher: float, student: float) -> None:
        """A micro-batch's teacher forward and student forward + backward, in seconds."""
        self._stats.teacher_seconds += teacher
        self._stats.student_seconds += student

    def log_stats(self) -> dict[str, float]:
        """What the interval since the last call did on every rank together (share of generated steps,
        rollout sizes and speed, the time split as the ranks' mean, τ/ρ); every rank calls it."""
        s, self._stats = self._reduced(self._stats), _Stats()
        out = {"gen_share": s.generated / max(s.steps, 1), "gen_s": s.gen_seconds, "teacher_s": s.teacher_seconds,
               "student_s": s.student_seconds}
        if s.rollouts:
            out.update(rollout_len=s.gen_tokens / s.rollouts,
                       rollout_tokens_per_s=s.gen_tokens / max(s.gen_seconds, 1e-9))
        syncs = self.engines.take_syncs()
        if self.engines.backend == "vllm":
            out.update(weight_syncs=float(syncs))
        if self.s.mode == "distillm":
            out.update(tau=self.schedule.tau, rho=self.schedule.rho(self._last_step), replay_size=float(len(self.buffer)))
        return out

    def _reduced(self, s: "_Stats") -> "_Stats":
        """Rollout counts summed over the ranks, seconds averaged (the ranks generate side by side)."""
        if self.env.world_size == 1:
            return s
        sums = all_reduce_sum(torch.tensor([s.rollouts, s.gen_tokens, s.gen_seconds, s.teacher_seconds,
                                            s.student_seconds], dtype=torch.float64, device=self.env.device)).tolist()
        seconds = [x / self.env.world_size for x in sums[2:]]
        return _Stats(s.steps, s.generated, int(sums[0]), int(sums[1]), *seconds)

    def state_dict(self) -> dict:
        return {"tau": self.schedule.tau, "reference_loss": self.schedule.reference_loss, "buffer": list(self.buffer),
                "rollout_engines": self.engines.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.tau, self.schedule.reference_loss = state["tau"], state["reference_loss"]
        self.buffer = deque(state["buffer"], maxlen=self.s.capacity)
        self.engines.load_state_dict(state.get("rollout_engines", {}))


@dataclass
class _Stats:
    steps: int = 0
    generated: int = 0
    rollouts: int = 0
    gen_tokens: int = 0
    gen_seconds: float = 0.0
    teacher_seconds: float = 0.0
    student_seconds: float = 0.0
