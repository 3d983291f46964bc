"""Generation evaluation of one checkpoint: sets × seeds → answers, scores and result files.

Every rank runs :func:`evaluate_sets` with the same arguments; the generation engine
(:mod:`todi.generation.engine`: the HF sampler, or vLLM with every (set, seed) in one call) splits the
examples between ranks and hands every rank all answers, and rank 0 scores them and writes
``<out_dir>/<set>/seed<seed>/{answers.jsonl,metrics.json}`` (see :mod:`todi.evaluation.results`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from todi.data.instructions import DataError, read_jsonl
from todi.generation.engine import GenerationEngine, SamplingJob
from todi.generation.sampling import SamplingConfig
from todi.evaluation.rouge import compute_metrics
from todi.evaluation.results import CHECKPOINT_NAME, check_set_name, write_result

__all__ = ["EvalSet", "base_model_of_adapter", "check_model_dir", "evaluate_sets", "load_eval_set", "run_checkpoints"]

REPO_ROOT = Path(__file__).resolve().parents[3]  # code/todi/evaluation/sets.py -> the checkout


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set: its name (the output sub-folder, e.g. ``sinst/11_``) and its JSONL file."""

    name: str
    path: Path

    def __post_init__(self):
        check_set_name(self.name)


def load_eval_set(path: str | Path, data_num: int = -1) -> tuple[list[str], list[list[str]]]:
    """Prompts and reference lists of a set's JSONL file (``output`` a string or a list of strings),
    capped at its first ``data_num`` examples when ``data_num >= 0``."""
    records = read_jsonl(path)
    if data_num >= 0:
        records = records[:data_num]
    prompts = [r["prompt"] for r in records]
    references = [[r["output"]] if isinstance(r["output"], str) else list(r["output"]) for r in records]
    return prompts, references


def base_model_of_adapter(adapter_dir: str | Path) -> Path:
    """The base model a LoRA adapter was trained on, from its ``adapter_config.json``.

    A relative path is tried against the working directory, then the repository root.
    """
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: no such file (is {adapter_dir} a LoRA adapter directory?)")
    try:
        name = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        raise DataError(f"{config_path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not name:
        raise DataError(f"{config_path}: no 'base_model_name_or_path'; give the base model with --model-path / MODEL_PATH")
    for candidate in (Path(name), REPO_ROOT / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"{config_path}: base model {name!r} is not a directory here; give it with --model-path / MODEL_PATH"
    )


MODEL_FILE = {"model": "config.json", "adapter": "adapter_config.json"}


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints (``epoch*_step*`` subfolders holding a model or an adapter) of a training run
    folder: best dev ROUGE-L first when every name carries it (``..._rougel<R>``), else latest step first."""
    found = []
    for sub in Path(run_dir).iterdir() if Path(run_dir).is_dir() else ():
        match = CHECKPOINT_NAME.fullmatch(sub.name)
        if match and any((sub / f).is_file() for f in MODEL_FILE.values()):
            found.append((sub, int(match.group(2)), match.group(3)))
    if found and all(rouge is not None for _, _, rouge in found):
        return [sub for sub, _, rouge in sorted(found, key=lambda f: -float(f[2]))]
    return [sub for sub, step, _ in sorted(found, key=lambda f: -f[1])]


def check_model_dir(path: str | Path, kind: str = "model", flag: str = "--model-path") -> None:
    """Raise FileNotFoundError unless ``path`` is a ``kind`` ("model" or "adapter") folder; a training
    run folder is named as such, with its checkpoints (best first), and any other folder says what was expected."""
    path, needed = Path(path), MODEL_FILE[kind]
    if (path / needed).is_file():
        return
    if not path.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such directory")
    checkpoints = run_checkpoints(path)
    if checkpoints:
        order = "best dev ROUGE-L first" if CHECKPOINT_NAME.fullmatch(checkpoints[0].name).group(3) else "latest first"
        raise FileNotFoundError(
            f"{flag} {path} is a training run folder, not a checkpoint; evaluate one of its checkpoints "
            f"({order}): {', '.join(c.name for c in checkpoints)}, e.g. {checkpoints[0]}")
    raise FileNotFoundError(f"{flag} {path} is not a {'LoRA adapter' if kind == 'adapter' else 'checkpoint'}: "
                            f"expected a folder holding {needed}, such as a training run's epoch*_step* subfolder")


def evaluate_sets(
    engine: GenerationEngine,
    sets: Sequence[EvalSet],
    seeds: Sequence[int],
    out_dir: str | Path,
    config: SamplingConfig = SamplingConfig(),
    *,
    batch_size: int = 32,
    data_num: int | Sequence[int] = -1,
    rank: int = 0,
    world_size: int = 1,
    info: dict | None = None,
    log=print,
) -> list[dict]:
    """Generate, score and write every (set, seed); returns the metrics records (rank 0; others get []).

    Every (set, seed) goes to ``engine`` as one job of a single call (an engine that batches across
    jobs, vLLM, sees them all at once; the HF one answers them in turn). ``data_num``: one cap for
    every set, or one per set. ``info`` (e.g. model paths, dtype) is stored in each metrics.json next
    to the scores and the sampling settings. Only rank 0 writes files and logs.
    """
    caps = [data_num] * len(sets) if isinstance(data_num, int) else list(data_num)
    if len(caps) != len(sets):
        raise ValueError(f"{len(caps)} example caps (--data-num) for {len(sets)} sets")
    loaded = []
    for eval_set, cap in zip(sets, caps):
        prompts, references = load_eval_set(eval_set.path, cap)
        if not prompts:
            raise DataError(f"{eval_set.path}: no examples to evaluate (data_num={cap})")
        loaded += [(eval_set, references, SamplingJob(prompts, seed)) for seed in seeds]
    answered = engine.answer([job for _, _, job in loaded], config, rank=rank, world_size=world_size,
                             progress=rank == 0)
    records = []
    for (eval_set, references, job), answers in zip(loaded, answered):
        if rank != 0:
            continue
        records.append(_write_scores(eval_set, job, references, answers, out_dir, config, batch_size,
                                     world_size, info, log))
    return records


def _write_scores(eval_set: EvalSet, job: SamplingJob, references: list[list[str]], answers, out_dir,
                  config: SamplingConfig, batch_size: int, world_size: int, info: dict | None, log) -> dict:
    """Score one (set, seed), write its files, log a line; the metrics record."""
    prompts, predictions, lengths, seconds = job.prompts, answers.texts, answers.new_tokens, answers.seconds
    scores = compute_metrics(predictions, references)
    record = {
        **scores,
        "num_examples": len(prompts),
        "avg_answer_tokens": round(sum(lengths) / len(lengths), 2),
        "generation_seconds": round(seconds, 2),
        "examples_per_second": round(len(prompts) / seconds, 3) if seconds > 0 else None,
        "data_file": str(eval_set.path),
        "batch_size": batch_size,
        "world_size": world_size,
        "sampling": asdict(config),
        **(info or {}),
    }
    where = write_result(out_dir, eval_set.name, job.seed, prompts, references, predictions, record)
    log(
        f"{eval_set.name} seed {job.seed}: rougeL {scores['rougeL']:.4f}  exact_match {scores['exact_match']:.4f}  "
        f"({len(prompts)} examples, {record['avg_answer_tokens']} tokens/answer, {seconds:.1f} s) -> {where}"
    )
    return {"set": eval_set.name, "seed": job.seed, **record}
