"""Teacher-output cache: the teacher's sparse targets for every response token of a training split,
computed once (:func:`build_cache`) and read back by every epoch, objective and seed of a sweep.

Per response token the cache holds the teacher's top-k token ids and the log-probabilities of the
coarsened distribution "those k entries + one bucket for the rest" at the training temperature
(:class:`todi.kernels.SparseTargets`), which is all any registered objective needs of it.

Layout of a cache directory::

    meta.json                 format, settings (k, temperature, dtype, lengths) and the fingerprint
    parts/part-<first>-<n>/   one directory per written part, renamed into place when complete:
        ids.npy               int32 [tokens, k]         (memory-mapped when read)
        log_probs.npy         float16/32 [tokens, k+1]
        index.json            [[record index, offset, tokens], ...] per example
    complete.json             written when every example of the split is covered (totals)

Every part is written atomically, so an interrupted build loses at most the part in progress and
a rerun computes only the examples no part covers (with any number of ranks). The fingerprint
covers everything the outputs depend on: the teacher's weights and adapter (file contents), the
tokenizer's vocabulary, the data file's bytes, the lengths, the temperature, k and the dtype; a
training run checks the parts it can check and names what differs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from todi.util.atomic import atomic_dir, atomic_write_text
from todi.util.labels import IGNORE_INDEX

__all__ = ["CacheError", "CacheSettings", "TeacherCache", "build_cache", "covered_examples", "data_fingerprint",
           "hash_files", "mark_complete", "teacher_targets", "tokenizer_fingerprint", "write_meta"]

FORMAT_VERSION = 1
DTYPES = {"fp16": np.float16, "fp32": np.float32}
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing weights and data


class CacheError(ValueError):
    """A cache that cannot be used: missing, incomplete, corrupt, or made for other settings."""


@dataclass(frozen=True)
class CacheSettings:
    k: int
    temperature: float
    dtype: str = "fp16"
    max_length: int = 1024
    max_prompt_length: int = 512

    def check(self) -> None:
        if self.k < 1:
            raise CacheError(f"k must be >= 1, got {self.k}")
        if not self.temperature > 0:
            raise CacheError(f"temperature must be > 0, got {self.temperature}")
        if self.dtype not in DTYPES:
            raise CacheError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


# ---- fingerprints ------------------------------------------------------------------------------

def hash_files(path: str | Path | None) -> str | None:
    """sha256 over the names and contents of the files of a directory (or of one file); None for None."""
    if path is None:
        return None
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(path: str | Path) -> str:
    return hash_files(path)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary and the special tokens (independent of how the files are laid out)."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())
    return hashlib.sha256(json.dumps([vocab, special]).encode()).hexdigest()


# ---- the teacher's targets ---------------------------------------------------------------------

@torch.no_grad()
def teacher_targets(logits: Tensor, k: int, temperature: float) -> tuple[Tensor, Tensor]:
    """Top-k ids ``[N, k]`` (int64) and coarsened log-probabilities ``[N, k + 1]`` (float32) of
    teacher logits ``[N, V]`` at ``temperature`` (the last column: the log-mass of the other entries),
    the same coarsening the loss applies to the student (:func:`todi.objectives.math.coarse_log_probs`)."""
    from todi.objectives import scaled_logits
    from todi.objectives.math import coarse_log_probs

    ids = scaled_logits(logits, temperature).topk(min(k, logits.shape[-1]), dim=-1).indices
    return ids, coarse_log_probs(logits, ids, temperature)


# ---- building ----------------------------------------------------------------------------------

def write_meta(root: Path, settings: CacheSettings, fingerprint: dict, overwrite: bool) -> None:
    """meta.json of a new cache; an existing one must match (else a CacheError, or a fresh start
    with ``overwrite``)."""
    meta = {"format": FORMAT_VERSION, "settings": asdict(settings), "fingerprint": fingerprint}
    path = root / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        differ = _differences(old, meta)
        if differ and not overwrite:
            raise CacheError(f"{root} holds a cache made with other settings ({'; '.join(differ)}); use another "
                             "directory, or --overwrite to start over")
        if not differ:
            return
        shutil.rmtree(root / "parts", ignore_errors=True)
        (root / "complete.json").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(meta, indent=1))


def _differences(old: dict, new: dict) -> list[str]:
    flat = lambda m: {"format": m.get("format"), **m.get("settings", {}), **m.get("fingerprint", {})}  # noqa: E731
    a, b = flat(old), flat(new)
    return [f"{key}: cache {a.get(key)!r}, now {b.get(key)!r}" for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def covered_examples(root: Path) -> set[int]:
    """Record indices of the examples the complete parts hold."""
    done: set[int] = set()
    for index in sorted((root / "parts").glob("part-*/index.json")):
        done.update(int(e[0]) for e in json.loads(index.read_text())["examples"])
    return done


def _write_part(root: Path, examples: list, ids: list[np.ndarray], log_probs: list[np.ndarray]) -> int:
    """One part: its arrays and index, renamed into place in one step. Returns its bytes."""
    first = examples[0].index
    index, offset = [], 0
    for example, block in zip(examples, ids):
        index.append([example.index, offset, len(block)])
        offset += len(block)
    with atomic_dir(root / "parts" / f"part-{first:08d}-{len(examples):05d}") as tmp:
        np.save(tmp / "ids.npy", np.concatenate(ids))
        np.save(tmp / "log_probs.npy", np.concatenate(log_probs))
        (tmp / "index.json").write_text(json.dumps({"examples": index}))
    return sum(a.nbytes for a in ids) + sum(a.nbytes for a in log_probs)


@torch.no_grad()
def build_cache(teacher, examples: list, collate, root: str | Path, settings: CacheSettings, *, device,
                vocab: int | None = None, batch_size: int = 8, part_size: int = 256, rank: int = 0,
                world_size: int = 1, progress: bool = False) -> dict:
    """Compute this rank's share of the examples no part covers yet and write them in parts.

    ``examples``: the split's :class:`todi.data.instructions.TokenizedExample` list; ``collate``: its
    :class:`todi.data.instructions.Collator` (without a cache); ``vocab``: the leading logits that count (the
    tokenizer's entries; None: all). Rank r takes every world_size-th missing example.
    Returns this rank's counts: examples, tokens, bytes written.
    """
    from todi.util.log import progress_bar

    root = Path(root)
    done = covered_examples(root)
    mine = [e for e in examples if e.index not in done][rank::world_size]
    dtype = DTYPES[settings.dtype]
    counts = {"examples": 0, "tokens": 0, "bytes": 0}
    bar = progress_bar(total=len(mine), desc=f"teacher cache (rank {rank})", unit="ex", disable=not progress)
    for start in range(0, len(mine), part_size):
        part = mine[start : start + part_size]
        ids, log_probs = [], []
        for b in range(0, len(part), batch_size):
            chunk = part[b : b + batch_size]
            batch = collate(chunk).to(device)
            source = batch.input_ids if batch.teacher_input_ids is None else batch.teacher_input_ids
            logits = teacher(input_ids=source, attention_mask=batch.attention_mask, use_cache=False).logits
            for row, mask in zip(logits, batch.labels.ne(IGNORE_INDEX)):
                top, lp = teacher_targets(row[mask][:, :vocab], settings.k, settings.temperature)
                ids.append(top.to(torch.int32).cpu().numpy())
                log_probs.append(lp.cpu().numpy().astype(dtype))
            bar.update(len(chunk))
        counts["bytes"] += _write_part(root, part, ids, log_probs)
        counts["examples"] += len(part)
        counts["tokens"] += sum(len(a) for a in ids)
    bar.close()
    return counts


def mark_complete(root: Path, examples: list) -> dict | None:
    """complete.json when the parts cover every example (totals: examples, tokens, bytes); else None."""
    root = Path(root)
    missing = {e.index for e in examples} - covered_examples(root)
    if missing:
        return None
    tokens = nbytes = 0
    for part in sorted((root / "parts").glob("part-*")):
        for name in ("ids.npy", "log_probs.npy"):
            nbytes += (part / name).stat().st_size
        tokens += sum(int(n) for _, _, n in json.loads((part / "index.json").read_text())["examples"])
    totals = {"examples": len(examples), "tokens": tokens, "bytes": nbytes,
              "bytes_per_token": round(nbytes / max(tokens, 1), 1)}
    atomic_write_text(root / "complete.json", json.dumps(totals, indent=1))
    return totals


# ---- reading -----------------------------------------------------------------------------------

class TeacherCache:
    """A complete cache, memory-mapped: per example its targets, and per batch aligned tensors."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise CacheError(f"{self.root} is not a teacher cache (no meta.json); build one with code/cache_teacher.py")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT_VERSION:
            raise CacheError(f"{meta_path}: format {self.meta.get('format')!r}, this code reads {FORMAT_VERSION}")
        self.settings = CacheSettings(**self.meta["settings"])
        if not (self.root / "complete.json").is_file():
            raise CacheError(f"{self.root} is incomplete (no complete.json): rerun code/cache_teacher.py to finish it")
        self._where: dict[int, tuple[int, int, int]] = {}
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        for index_path in sorted((self.root / "parts").glob("part-*/index.json")):
            self._load_part(index_path)

    def _load_part(self, index_path: Path) -> None:
        part = index_path.parent
        try:
            entries = json.loads(index_path.read_text())["examples"]
            ids = np.load(part / "ids.npy", mmap_mode="r")
            log_probs = np.load(part / "log_probs.npy", mmap_mode="r")
        except (OSError, ValueError, KeyError) as e:
            raise CacheError(f"{part}: unreadable part ({e}); delete it and rerun code/cache_teacher.py") from None
        k = self.settings.k
        total = sum(int(n) for _, _, n in entries)
        if ids.ndim != 2 or ids.shape[1] > k or log_probs.shape != (ids.shape[0], ids.shape[1] + 1) \
                or ids.shape[0] != total:
            raise CacheError(f"{part}: arrays {ids.shape} / {log_probs.shape} do not match its index ({total} tokens, "
                             f"k = {k}); the part is truncated or corrupt: delete it and rerun code/cache_teacher.py")
        slot = len(self._parts)
        self._parts.append((ids, log_probs))
        for record, offset, n in entries:
            self._where[int(record)] = (slot, int(offset), int(n))

    def check(self, *, data_path, tokenizer, max_length: int, max_prompt_length: int, temperature: float,
              teacher_path=None, teacher_adapter=None) -> None:
        """The cache was made for these settings; a CacheError names every difference."""
        now = {"data": data_fingerprint(data_path), "tokenizer": tokenizer_fingerprint(tokenizer),
               "max_length": max_length, "max_prompt_length": max_prompt_length, "temperature": float(temperature)}
        if teacher_path is not None:
            now["teacher"] = hash_files(teacher_path)
            now["adapter"] = hash_files(teacher_adapter)
        have = {**self.meta["fingerprint"], **{k: self.meta["settings"][k] for k in
                                               ("max_length", "max_prompt_length", "temperature")}}
        differ = [f"{key}: cache {have.get(key)!r}, run {value!r}" for key, value in now.items() if have.get(key) != value]
        if differ:
            raise CacheError(f"teacher cache {self.root} does not match this run ({'; '.join(differ)}); rebuild it "
                             "with the run's settings (code/cache_teacher.py)")

    def targets(self, record: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n, k], log-probs [n, k + 1]) of an example's n response tokens."""
        if record not in self._where:
            raise CacheError(f"teacher cache {self.root} holds no targets for record {record} of the data file")
        slot, offset, n = self._where[record]
        ids, log_probs = self._parts[slot]
        return ids[offset : offset + n], log_probs[offset : offset + n]

    def batch_targets(self, examples: list, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Targets aligned with a batch's positions: ids ``[B, L, k]`` (int64) and log-probs
        ``[B, L, k + 1]`` (float32); positions without a label get a harmless uniform filler."""
        n, width = labels.shape
        k = self.settings.k
        ids = torch.arange(k, dtype=torch.long).expand(n, width, k).clone()
        log_probs = torch.full((n, width, k + 1), -float(np.log(k + 1)), dtype=torch.float32)
        mask = labels.ne(IGNORE_INDEX)
        for i, example in enumerate(examples):
            top, lp = self.targets(example.index)
            positions = mask[i].nonzero().squeeze(1)
            if len(positions) != len(top):
                raise CacheError(f"teacher cache {self.root}: record {example.index} has {len(top)} response tokens "
                                 f"cached but {len(positions)} in this run (other tokenizer or lengths?)")
            ids[i, positions, : top.shape[1]] = torch.from_numpy(np.asarray(top, dtype=np.int64))
            log_probs[i, positions, : lp.shape[1]] = torch.from_numpy(np.asarray(lp, dtype=np.float32))
        return ids, log_probs

    @property
    def bytes_per_token(self) -> float:
        k = self.settings.k
        return 4 * k + np.dtype(DTYPES[self.settings.dtype]).itemsize * (k + 1)
