"""Teacher-output cache: what the loss needs of the teacher for every response token of a training
split, computed once (:func:`todi.cache.build.build_cache`) and read back by every epoch, objective
and seed of a sweep. Two modes:

* ``hidden`` (exact): the teacher's final hidden state per response token (the input of its output
  layer) and, once, that layer (``head.safetensors``); the loss recomputes the teacher's logits a
  chunk of rows at a time (:class:`todi.kernels.TeacherHead`), so every objective, temperature and
  AdaKD setting gets the live teacher's values. ``H × 2`` bytes per token in bf16.
* ``topk`` (small): the teacher's top-k token ids and the log-probabilities of the coarsened
  distribution "those k entries + one bucket for the rest" at the training temperature
  (:class:`todi.kernels.SparseTargets`); exact for k = V, a lower bound of the f-divergences
  otherwise (see docs/teacher-cache.md for when that is safe).

Layout of a cache directory::

    meta.json                 format, settings (mode, k, temperature, dtype, lengths) and the fingerprint
    head.safetensors          hidden mode: the teacher's output layer (weight, bias)
    parts/part-<first>-<n>/   one directory per written part, renamed into place when complete:
        hidden.npy            hidden mode: [tokens, H] (bf16 stored as its 16-bit pattern)
        ids.npy               topk mode: int32 [tokens, k]           (memory-mapped when read)
        log_probs.npy         topk mode: float16/32 [tokens, k+1]
        index.json            [[record index, offset, tokens], ...] per example
    complete.json             written when every example of the split is covered (totals)

Every part is written atomically, so an interrupted build loses at most the part in progress and
a rerun computes only the examples no part covers (with any number of ranks). The fingerprint
covers everything the outputs depend on: the teacher's weights and adapter (file contents), the
tokenizer's vocabulary, the data file's bytes, the lengths and the settings; a training run checks
the parts it can check and names what differs.
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

from todi.cache.head import HEAD_FILE, OutputLayer, load_output_layer
from todi.kernels import SparseTargets, TeacherHead
from todi.util.atomic import atomic_dir, atomic_write_text
from todi.util.labels import IGNORE_INDEX

__all__ = ["CacheError", "CacheSettings", "DTYPES", "HIDDEN_DTYPES", "MODES", "TeacherCache", "covered_examples",
           "data_fingerprint", "hash_files", "mark_complete", "tokenizer_fingerprint", "write_meta", "write_part"]

FORMAT_VERSION = 1
MODES = ("topk", "hidden")
# storage dtypes: numpy has no bfloat16, so bf16 arrays hold the 16-bit patterns (viewed back on read)
DTYPES = {"fp16": np.float16, "fp32": np.float32}
HIDDEN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing weights and data
ARRAYS = {"topk": ("ids", "log_probs"), "hidden": ("hidden",)}


class CacheError(ValueError):
    """A cache that cannot be used: missing, incomplete, corrupt, or made for other settings."""


@dataclass(frozen=True)
class CacheSettings:
    """mode: "topk" or "hidden"; k, temperature: the top-k targets' (unused by the hidden mode, which
    serves every temperature); dtype: of the stored values; softcap: the teacher's final logit
    soft-capping (hidden mode), applied when its logits are recomputed."""

    k: int = 0
    temperature: float | None = None
    dtype: str = "fp16"
    max_length: int = 1024
    max_prompt_length: int = 512
    mode: str = "topk"
    softcap: float | None = None

    def check(self) -> None:
        if self.mode not in MODES:
            raise CacheError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        dtypes = HIDDEN_DTYPES if self.mode == "hidden" else DTYPES
        if self.dtype not in dtypes:
            raise CacheError(f"dtype of a {self.mode} cache must be one of {', '.join(dtypes)}, got {self.dtype!r}")
        if self.mode == "hidden":
            return
        if self.k < 1:
            raise CacheError(f"k must be >= 1, got {self.k}")
        if not self.temperature > 0:
            raise CacheError(f"temperature must be > 0, got {self.temperature}")


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
        for name in ("complete.json", HEAD_FILE):
            (root / name).unlink(missing_ok=True)
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


def write_part(root: Path, examples: list, arrays: dict[str, list[np.ndarray]]) -> int:
    """One part: its arrays (name → one block per example, the same token counts for every name) and
    its index, renamed into place in one step. Returns its bytes."""
    first = examples[0].index
    blocks = next(iter(arrays.values()))
    index, offset = [], 0
    for example, block in zip(examples, blocks):
        index.append([example.index, offset, len(block)])
        offset += len(block)
    with atomic_dir(root / "parts" / f"part-{first:08d}-{len(examples):05d}") as tmp:
        for name, parts in arrays.items():
            np.save(tmp / f"{name}.npy", np.concatenate(parts))
        (tmp / "index.json").write_text(json.dumps({"examples": index}))
    return sum(a.nbytes for parts in arrays.values() for a in parts)


def mark_complete(root: Path, examples: list) -> dict | None:
    """complete.json when the parts cover every example (totals: examples, tokens, bytes); else None."""
    root = Path(root)
    missing = {e.index for e in examples} - covered_examples(root)
    if missing:
        return None
    tokens = nbytes = 0
    for part in sorted((root / "parts").glob("part-*")):
        nbytes += sum(f.stat().st_size for f in part.glob("*.npy"))
        tokens += sum(int(n) for _, _, n in json.loads((part / "index.json").read_text())["examples"])
    totals = {"examples": len(examples), "tokens": tokens, "bytes": nbytes,
              "bytes_per_token": round(nbytes / max(tokens, 1), 1)}
    atomic_write_text(root / "complete.json", json.dumps(totals, indent=1))
    return totals


# ---- reading -----------------------------------------------------------------------------------

def as_tensor(array: np.ndarray, dtype: str) -> Tensor:
    """A stored hidden-state block as a tensor of its dtype (bf16 is stored as its 16-bit pattern)."""
    if dtype == "bf16":
        return torch.from_numpy(np.ascontiguousarray(array)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


class TeacherCache:
    """A complete cache, memory-mapped: per example its stored arrays, and per batch aligned tensors."""

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
        self.names = ARRAYS[self.settings.mode]
        self._where: dict[int, tuple[int, int, int]] = {}
        self._parts: list[tuple[np.ndarray, ...]] = []
        for index_path in sorted((self.root / "parts").glob("part-*/index.json")):
            self._load_part(index_path)
        self.width = self._parts[0][0].shape[1] if self._parts else 0  # k, or the hidden size

    @property
    def mode(self) -> str:
        return self.settings.mode

    def _load_part(self, index_path: Path) -> None:
        part = index_path.parent
        try:
            entries = json.loads(index_path.read_text())["examples"]
            arrays = tuple(np.load(part / f"{name}.npy", mmap_mode="r") for name in self.names)
        except (OSError, ValueError, KeyError) as e:
            raise CacheError(f"{part}: unreadable part ({e}); delete it and rerun code/cache_teacher.py") from None
        total = sum(int(n) for _, _, n in entries)
        first = arrays[0]
        bad = first.ndim != 2 or first.shape[0] != total
        if self.mode == "topk":
            bad = bad or first.shape[1] > self.settings.k or arrays[1].shape != (first.shape[0], first.shape[1] + 1)
        elif self._parts:
            bad = bad or first.shape[1] != self._parts[0][0].shape[1]
        if bad:
            shapes = " / ".join(str(a.shape) for a in arrays)
            raise CacheError(f"{part}: arrays {shapes} do not match its index ({total} tokens); the part is truncated "
                             "or corrupt: delete it and rerun code/cache_teacher.py")
        slot = len(self._parts)
        self._parts.append(arrays)
        for record, offset, n in entries:
            self._where[int(record)] = (slot, int(offset), int(n))

    def check(self, *, data_path, tokenizer, max_length: int, max_prompt_length: int, temperature: float,
              teacher_path=None, teacher_adapter=None) -> None:
        """The cache was made for these settings (a hidden-state cache serves every temperature); a
        CacheError names every difference."""
        now = {"data": data_fingerprint(data_path), "tokenizer": tokenizer_fingerprint(tokenizer),
               "max_length": max_length, "max_prompt_length": max_prompt_length}
        if self.mode == "topk":
            now["temperature"] = float(temperature)
        if teacher_path is not None:
            now["teacher"] = hash_files(teacher_path)
            now["adapter"] = hash_files(teacher_adapter)
        have = {**self.meta["fingerprint"], **{k: self.meta["settings"][k] for k in
                                               ("max_length", "max_prompt_length", "temperature")}}
        differ = [f"{key}: cache {have.get(key)!r}, run {value!r}" for key, value in now.items() if have.get(key) != value]
        if differ:
            raise CacheError(f"teacher cache {self.root} does not match this run ({'; '.join(differ)}); rebuild it "
                             "with the run's settings (code/cache_teacher.py)")

    def targets(self, record: int) -> tuple[np.ndarray, ...]:
        """An example's stored arrays over its n response tokens: (ids [n, k], log-probs [n, k + 1]) or (hidden [n, H],)."""
        if record not in self._where:
            raise CacheError(f"teacher cache {self.root} holds no targets for record {record} of the data file")
        slot, offset, n = self._where[record]
        return tuple(a[offset : offset + n] for a in self._parts[slot])

    def _filled(self, n: int, width: int) -> tuple[Tensor, ...]:
        """Batch buffers; positions without a label keep a harmless filler (a uniform target, zero states)."""
        if self.mode == "hidden":
            return (torch.zeros(n, width, self.width, dtype=HIDDEN_DTYPES[self.settings.dtype]),)
        k = self.settings.k
        return (torch.arange(k, dtype=torch.long).expand(n, width, k).clone(),
                torch.full((n, width, k + 1), -float(np.log(k + 1)), dtype=torch.float32))

    def batch_targets(self, examples: list, labels: Tensor) -> tuple[Tensor, ...]:
        """The stored arrays aligned with a batch's positions ``[B, L]``: top-k ids ``[B, L, k]`` (int64)
        and log-probs ``[B, L, k + 1]`` (float32), or hidden states ``[B, L, H]`` (the stored dtype)."""
        buffers = self._filled(*labels.shape)
        mask = labels.ne(IGNORE_INDEX)
        for i, example in enumerate(examples):
            stored = self.targets(example.index)
            positions = mask[i].nonzero().squeeze(1)
            if len(positions) != len(stored[0]):
                raise CacheError(f"teacher cache {self.root}: record {example.index} has {len(stored[0])} response "
                                 f"tokens cached but {len(positions)} in this run (other tokenizer or lengths?)")
            for buffer, array in zip(buffers, stored):
                if self.mode == "hidden":
                    buffer[i, positions] = as_tensor(array, self.settings.dtype)
                else:
                    buffer[i, positions, : array.shape[1]] = torch.as_tensor(np.asarray(array)).to(buffer.dtype)
        return buffers

    def output_layer(self, device) -> OutputLayer:
        """The teacher's stored output layer on ``device`` (hidden mode)."""
        if not (self.root / HEAD_FILE).is_file():
            raise CacheError(f"{self.root / HEAD_FILE}: missing (the hidden-state cache's output layer); rebuild the "
                             "cache with code/cache_teacher.py --overwrite")
        return load_output_layer(self.root, self.settings.softcap, device)

    def loss_teacher(self, targets: tuple[Tensor, ...], layer: OutputLayer | None = None) -> SparseTargets | TeacherHead:
        """What the loss reads for a batch's :meth:`batch_targets` (already on the device): sparse
        targets, or the teacher logits as ``layer`` (:meth:`output_layer`) on the hidden states."""
        if self.mode == "hidden":
            return layer.head(targets[0])
        return SparseTargets(*targets, temperature=self.settings.temperature)

    @property
    def bytes_per_token(self) -> float:
        if self.mode == "hidden":
            return HIDDEN_DTYPES[self.settings.dtype].itemsize * self.width
        k = self.settings.k
        return 4 * k + np.dtype(DTYPES[self.settings.dtype]).itemsize * (k + 1)
