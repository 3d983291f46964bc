"""Checkpoints (Hugging Face directories), keep-best-N, and the resumable training state.

Everything is written atomically (:mod:`todi.util.atomic`): into a temporary directory next to the
target, then renamed. A crash mid-save leaves the previous checkpoint/state intact and at most a
``.tmp-*`` entry, which the next run removes.

Layout of a run directory::

    args.json  metrics.jsonl  train.log (written by the scripts)
    epoch{E}_step{S}_loss{L}_rougel{R}/   weights (or the LoRA adapter), config, tokenizer
    resume/latest.json                     {"tag": "step{S}"} — replaced atomically
    resume/step{S}/                        DeepSpeed state (model, optimizer, scheduler),
                                           trainer_state.json, rng_rank{r}.pt, adakd.pt
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

# re-exported: the trainer writes through ``checkpoint`` (ckpt.atomic_write_text, ...)
from todi.util.atomic import TMP_PREFIX, atomic_dir, atomic_write_text, remove_stale_temporaries, replace_dir
from todi.util.distributed import barrier

__all__ = [
    "TMP_PREFIX",
    "BestCheckpoints",
    "TrainerState",
    "atomic_dir",
    "atomic_write_text",
    "checkpoint_name",
    "load_resume_state",
    "remove_stale_temporaries",
    "resume_tag",
    "rng_state",
    "save_model",
    "save_resume_state",
    "set_rng_state",
]


def checkpoint_name(epoch: int, step: int, loss: float | None, rouge_l: float | None) -> str:
    """The official names: ``epoch{E}_step{S}[_loss{L:.4f}[_rougel{R:.4f}]]``."""
    name = f"epoch{epoch}_step{step}"
    if loss is not None:
        name += f"_loss{loss:.4f}"
    if rouge_l is not None:
        name += f"_rougel{rouge_l:.4f}"
    return name


@dataclass
class BestCheckpoints:
    """Keep the ``n`` best checkpoints by ``score`` (higher is better)."""

    n: int
    entries: list[dict] = field(default_factory=list)  # {"path": str, "score": float}

    def add(self, path: str | Path, score: float) -> list[Path]:
        """Record a saved checkpoint; returns the checkpoints that fell out (to delete)."""
        path = str(path)
        self.entries = [e for e in self.entries if e["path"] != path] + [{"path": path, "score": float(score)}]
        # best first; on ties the newer one wins (it comes later in the list)
        ranked = sorted(enumerate(self.entries), key=lambda ie: (-ie[1]["score"], -ie[0]))
        keep = {i for i, _ in ranked[: self.n]}
        dropped = [Path(e["path"]) for i, e in enumerate(self.entries) if i not in keep]
        self.entries = [e for i, e in enumerate(self.entries) if i in keep]
        return dropped

    @property
    def best(self) -> dict | None:
        return max(self.entries, key=lambda e: e["score"]) if self.entries else None


@dataclass
class TrainerState:
    """Where training stands: the next epoch/step to run, and the checkpoint bookkeeping."""

    epoch: int = 0  # the epoch to run next (0-based)
    step_in_epoch: int = 0  # optimizer steps of that epoch already done
    global_step: int = 0
    best: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TrainerState":
        return cls(**json.loads(text))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model(module, tokenizer, path: str | Path, *, state_dict: dict | None = None, is_main: bool = True) -> None:
    """Save weights (or a peft adapter), config and tokenizer as a Hugging Face directory, atomically.

    ``state_dict`` is the full state gathered from ZeRO-3 shards (None otherwise). Only the main
    process writes; the others wait. The tokenizer's family profile (EOS, pad, stop tokens, BOS
    rule) goes to ``todi_tokenizer.json``, so that evaluation ends answers at the same tokens.
    """
    from todi.models import save_tokenizer_profile

    if is_main:
        with atomic_dir(path) as tmp:
            module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            save_tokenizer_profile(tokenizer, tmp)
    barrier()


def resume_tag(root: str | Path) -> str | None:
    """The tag of the latest complete resumable state under ``root`` (None if there is none)."""
    pointer = Path(root) / "latest.json"
    if not pointer.is_file():
        return None
    tag = json.loads(pointer.read_text())["tag"]
    if not (Path(root) / tag / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{pointer} points to {tag}, which is missing or incomplete")
    return tag


def save_resume_state(engine, root: str | Path, state: TrainerState, *, rank: int, extra: dict | None = None) -> str:
    """Write the resumable state of every process; returns its tag.

    DeepSpeed writes model, optimizer and scheduler (each process its shards); every process adds
    its RNG state; the main process adds the trainer state and ``extra`` (e.g. AdaKD's state).
    The directory only becomes visible (renamed, then pointed to by latest.json) once complete.
    """
    root = Path(root)
    tag = f"step{state.global_step}"
    tmp_tag = f"{TMP_PREFIX}{tag}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if (root / tmp_tag).exists():
            shutil.rmtree(root / tmp_tag)
    barrier()
    engine.save_checkpoint(str(root), tag=tmp_tag, save_latest=False)
    torch.save(rng_state(), root / tmp_tag / f"rng_rank{rank}.pt")
    if rank == 0:
        if extra:
            torch.save(extra, root / tmp_tag / "extra.pt")
        (root / tmp_tag / "trainer_state.json").write_text(state.to_json())
    barrier()
    if rank == 0:
        replace_dir(root / tmp_tag, root / tag)
        atomic_write_text(root / "latest.json", json.dumps({"tag": tag}))
        for old in root.iterdir():
            if old.is_dir() and old.name != tag and old.name.startswith("step"):
                shutil.rmtree(old)
    barrier()
    return tag


def load_resume_state(engine, root: str | Path, tag: str, *, rank: int) -> tuple[TrainerState, dict]:
    """Restore model, optimizer and scheduler into ``engine``; return the trainer state and extras.

    The caller restores the RNG (:func:`set_rng_state` with ``rng_rank{rank}.pt``) right before
    training continues, so that nothing in between consumes random numbers.
    """
    root = Path(root)
    path, _ = engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed found no checkpoint in {root / tag}")
    state = TrainerState.from_json((root / tag / "trainer_state.json").read_text())
    extra_path = root / tag / "extra.pt"
    extra = torch.load(extra_path, weights_only=False) if extra_path.is_file() else {}
    rng_path = root / tag / f"rng_rank{rank}.pt"
    if not rng_path.is_file():
        raise FileNotFoundError(f"{rng_path} is missing: was the state written by a run with fewer processes?")
    extra["rng"] = torch.load(rng_path, weights_only=False)
    return state, extra
