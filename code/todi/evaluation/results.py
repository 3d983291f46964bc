"""Evaluation results on disk, and the paper's table built from them.

One evaluation of a checkpoint on one set with one sampling seed writes
``<eval_dir>/<set>/seed<seed>/answers.jsonl`` (one ``{"prompt", "references", "prediction"}`` per
example) and ``metrics.json`` (the scores plus how they were obtained), each written atomically.
:func:`collect` finds every such result under a directory and :func:`summarize` turns them into rows
(checkpoints, named by method) × columns (sets, then their average), as mean ± std over seeds, which
:func:`to_markdown`, :func:`to_csv` and :func:`plot` render.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from todi.util.atomic import atomic_write_text, atomic_write_with

__all__ = [
    "CHECKPOINT_NAME", "METRICS", "PAPER_SETS", "ResultError", "SeedResult", "Row", "check_set_name", "collect", "distinct_labels",
    "method_name", "plot", "result_dir", "run_label", "summarize", "to_csv", "to_markdown", "write_result",
]

# The five evaluation sets of the papers, in their table order, with the names the tables use.
PAPER_SETS = {"dolly": "Dolly", "self-inst": "SelfInst", "vicuna": "Vicuna", "sinst/11_": "S-NI", "uinst/11_": "UnNI"}
METRICS = ("rougeL", "exact_match")


class ResultError(ValueError):
    """A result file that cannot be used; the message names the file and the problem."""


def check_set_name(name: str) -> str:
    """A set name is a relative path inside the data directory (e.g. ``sinst/11_``), never outside it."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"invalid set name {name!r}: expected a relative path such as 'dolly' or 'sinst/11_'")
    return name


def result_dir(eval_dir: str | Path, set_name: str, seed: int) -> Path:
    """Where the result of one (set, seed) lives: ``<eval_dir>/<set>/seed<seed>``."""
    return Path(eval_dir) / check_set_name(set_name) / f"seed{int(seed)}"


def write_result(
    eval_dir: str | Path,
    set_name: str,
    seed: int,
    prompts: Sequence[str],
    references: Sequence[Sequence[str]],
    predictions: Sequence[str],
    metrics: dict,
) -> Path:
    """Write answers.jsonl, then metrics.json (its presence marks a complete result); returns the folder.

    Only this (set, seed)'s own folder is touched: other sets and seeds are never overwritten.
    """
    if not len(prompts) == len(references) == len(predictions):
        raise ValueError(f"{len(prompts)} prompts, {len(references)} reference lists, {len(predictions)} predictions")
    out = result_dir(eval_dir, set_name, seed)
    answers = "".join(
        json.dumps({"prompt": p, "references": list(r), "prediction": a}, ensure_ascii=False) + "\n"
        for p, r, a in zip(prompts, references, predictions)
    )
    atomic_write_text(out / "answers.jsonl", answers)
    record = {"set": set_name, "seed": int(seed), **metrics}
    atomic_write_text(out / "metrics.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return out


@dataclass(frozen=True)
class SeedResult:
    """The scores of one checkpoint on one set with one seed, as read back from metrics.json."""

    checkpoint: Path  # the evaluated checkpoint (the folder that holds the eval folder)
    eval_dir: Path
    set_name: str
    seed: int
    scores: dict  # metric name -> value (0-100)


def _read_metrics(path: Path) -> SeedResult:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(record, dict):
        raise ResultError(f"{path}: expected a JSON object")
    for key in ("set", "seed", "rougeL"):
        if key not in record:
            raise ResultError(f"{path}: missing field {key!r}")
    set_name, seed = record["set"], record["seed"]
    if not isinstance(set_name, str) or not isinstance(seed, int):
        raise ResultError(f"{path}: field 'set' must be a string and 'seed' an integer")
    try:
        check_set_name(set_name)
    except ValueError as e:
        raise ResultError(f"{path}: {e}") from None
    # <eval_dir>/<set...>/seed<seed>/metrics.json: the set name tells how far up eval_dir is
    expected = f"{set_name}/seed{seed}/metrics.json"
    if not path.as_posix().endswith("/" + expected):
        raise ResultError(f"{path}: says set {set_name!r} seed {seed}, so it should be at .../{expected}")
    eval_dir = path.parents[len(PurePosixPath(set_name).parts) + 1]
    checkpoint = eval_dir.parent if eval_dir.name == "eval" else eval_dir
    scores = {}
    for metric in METRICS:
        value = record.get(metric)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ResultError(f"{path}: field {metric!r} must be a finite number, got {value!r}")
        scores[metric] = float(value)
    return SeedResult(checkpoint, eval_dir, set_name, seed, scores)


def collect(roots: Iterable[str | Path]) -> list[SeedResult]:
    """Every complete (set, seed) result under ``roots`` (searched recursively), in path order."""
    found = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such directory")
        # only files at .../seed<N>/metrics.json are evaluation results (a training run may keep others)
        paths = [root] if root.is_file() else [
            p for p in sorted(root.rglob("metrics.json")) if re.fullmatch(r"seed\d+", p.parent.name)
        ]
        found.extend(_read_metrics(p) for p in paths)
    return found


_PRECISION = re.compile(r"-(bf16|fp16|fp32)$")
# a training run's checkpoint folder: epoch{E}_step{S}[_loss{L}[_rougel{R}]] (todi.training.checkpoint)
CHECKPOINT_NAME = re.compile(r"epoch(\d+)_step(\d+)(?:_loss[-\d.naif]+)?(?:_rougel([-\d.naif]+))?")


def method_name(checkpoint: Path) -> str | None:
    """The method / KD objective a training run directory name encodes, or None.

    The training scripts save to ``.../<task>/criterion=<criterion>__<config>__.../<checkpoint>``
    where ``<config>`` starts with the KD objective for ``various_divergence`` (e.g. ``ToDi-bf16``)
    and the criterion alone names other methods (``cross_entropy`` is SFT).
    """
    for part in reversed(checkpoint.parts):
        if not part.startswith("criterion="):
            continue
        fields = part.split("__")
        criterion = fields[0].removeprefix("criterion=")
        config = fields[1] if len(fields) > 1 else ""
        if criterion == "cross_entropy":
            return "SFT" + (" (LoRA)" if config.startswith("lora") else "")
        if criterion == "various_divergence" and config:
            return _PRECISION.sub("", config)
        return criterion
    return None


# The recipes' settings a label leaves out (scripts/*/*.sh defaults): the protocol every recipe shares,
# KD's and AdaKD's loss weights, and each student family's lr and epochs (keyed by the folders
# outputs/<family>/<model>/ the scripts save under; runs saved elsewhere never show lr and epochs).
PROTOCOL = {"seed": "10", "data": "dolly", "len": "512-256"}
KD_RECIPE = {"kd^rate": "0.5", "kd^temp": "2.0"}
ADAKD_RECIPE = {"kd^rate": "1.0", "kd^temp": "1.0"}
ADAKD_DEFAULTS = {"c": "0.5", "eps": "0.05", "delta": "0.05", "difficulty": "hellinger"}
_LLAMA_RECIPE = {"lr": "0.001", "epoch": "10"}
FAMILY_RECIPES = {
    "gpt2": {"lr": "0.0005", "epoch": "20"}, "gpt2/gpt2-xlarge": {"lr": "0.00005", "epoch": "10"},
    "tinyllama": _LLAMA_RECIPE, "qwen2.5": _LLAMA_RECIPE, "olmo2": _LLAMA_RECIPE, "gemma3": _LLAMA_RECIPE,
}
LABEL_FIELDS = ("seed", "lr", "epoch", "kd^rate", "kd^temp", "data", "len")  # in this order; teacher, bsz: never


def run_label(checkpoint: Path) -> str:
    """The row label of a checkpoint, from its own path only (the same in every table): the method
    (objective or SFT, ``+ AdaKD``, ``cached teacher``) and, in parentheses, the objective's parameters
    and the settings that differ from the recipe, e.g. ``ToDi + AdaKD, cached teacher (todi-beta=2.0, seed=20)``.
    A folder not named by the training scripts is labelled by its run folder's name (the checkpoint's
    parent for an ``epoch*_step*`` checkpoint), e.g. the demo's ``student_kd_ToDi``."""
    parts = checkpoint.parts
    index = next((i for i in range(len(parts) - 1, -1, -1) if parts[i].startswith("criterion=")), None)
    if index is None:
        return checkpoint.parent.name if CHECKPOINT_NAME.fullmatch(checkpoint.name) and checkpoint.parent.name else checkpoint.name
    fields = parts[index].split("__")
    method, settings = _method_and_params(fields[0].removeprefix("criterion="), fields[1] if len(fields) > 1 else "")
    adakd = next((f for f in fields if f.startswith("adakd^")), None)
    if adakd is not None:
        method += " + AdaKD"
        settings += _adakd_settings(adakd)
    if "cache" in fields:
        method += ", cached teacher"
    values = dict(f.split("=", 1) for f in fields[1:] if "=" in f and not f.startswith("adakd^"))
    recipe = {**PROTOCOL, **(ADAKD_RECIPE if adakd else KD_RECIPE), **_family_recipe(parts[:index])}
    settings += [f"{_flag(k)}={values[k]}" for k in LABEL_FIELDS
                 if k in values and k in recipe and values[k] != recipe[k]]
    return f"{method} ({', '.join(settings)})" if settings else method


def _method_and_params(criterion: str, config: str) -> tuple[str, list[str]]:
    """(method, objective parameters) of a run name's first two fields; ``ToDi-todi^beta=2.0-bf16``
    is ToDi with ``todi-beta=2.0``."""
    if criterion == "cross_entropy":
        return "SFT" + (" (LoRA)" if config.startswith("lora") else ""), []
    if criterion != "various_divergence" or not config:
        return criterion, []
    pieces = _PRECISION.sub("", config).split("-")
    name = "-".join(p for p in pieces if "=" not in p)
    return name, [_flag(p) for p in pieces if "=" in p]


def _adakd_settings(tag: str) -> list[str]:
    """AdaKD's settings that differ from its defaults, from ``adakd^c=0.5^eps=0.05^delta=0.05^hellinger``."""
    given = {}
    for item in tag.removeprefix("adakd^").split("^"):
        key, _, value = item.partition("=")
        given.update({key: value} if value else {"difficulty": key})
    return [f"adakd-{k}={v}" for k, v in given.items() if ADAKD_DEFAULTS.get(k) != v]


def _family_recipe(parents: Sequence[str]) -> dict[str, str]:
    """lr and epochs of the recipe that saved to ``.../<family>/<model>/<task>/<run>``; {} when unknown."""
    if len(parents) < 3:
        return {}
    family, model = parents[-3], parents[-2]
    return FAMILY_RECIPES.get(f"{family}/{model}", FAMILY_RECIPES.get(family, {}))


def _flag(key: str) -> str:
    """A run name's key as its flag reads: ``kd^rate`` -> ``kd-rate``."""
    return key.replace("^", "-")


@dataclass
class Row:
    """One checkpoint: per set, the scores of each seed."""

    label: str
    checkpoint: Path
    seeds: dict[str, dict[int, float]] = field(default_factory=dict)  # set -> seed -> score

    def cell(self, set_name: str) -> tuple[float, float, int] | None:
        """(mean, std, number of seeds) on one set; std is the sample std (0 for a single seed)."""
        values = list(self.seeds.get(set_name, {}).values())
        return _mean_std(values) if values else None

    def average(self, set_names: Sequence[str]) -> tuple[float, float, int] | None:
        """Mean ± std over seeds of the per-seed average across ``set_names``; only when every set
        has a result and they share at least one seed (else None: an average of fewer sets would not
        be comparable)."""
        if not set_names or any(s not in self.seeds for s in set_names):
            return None
        common = set.intersection(*(set(self.seeds[s]) for s in set_names))
        if not common:
            return None
        per_seed = [float(np.mean([self.seeds[s][seed] for s in set_names])) for seed in sorted(common)]
        return _mean_std(per_seed)


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return float(arr.mean()), std, len(arr)


def summarize(results: Sequence[SeedResult], root: str | Path | None = None, metric: str = "rougeL") -> tuple[list[Row], list[str]]:
    """Rows (one per checkpoint, in path order) and the set columns (the paper's five first, in their
    order, then any other set alphabetically). Rows are labelled by :func:`run_label`, from each
    checkpoint's own path; only checkpoints whose labels are identical (the same settings, e.g. in two
    output trees) get what tells their paths apart (relative to ``root``) appended."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    rows: dict[Path, Row] = {}
    for r in results:
        if metric not in r.scores:
            raise ResultError(f"{r.eval_dir / r.set_name / f'seed{r.seed}' / 'metrics.json'}: no {metric!r} score")
        row = rows.setdefault(r.checkpoint, Row(label="", checkpoint=r.checkpoint))
        row.seeds.setdefault(r.set_name, {})[r.seed] = r.scores[metric]
    root = Path(root) if root is not None else None

    def where(path: Path) -> str:
        if root is not None and root.is_dir():
            try:
                rel = path.relative_to(root)
                return rel.as_posix() if rel.parts else path.name
            except ValueError:
                pass
        return path.as_posix()

    ordered = [rows[k] for k in sorted(rows)]
    places = [where(row.checkpoint) for row in ordered]
    labels = distinct_labels([run_label(row.checkpoint) for row in ordered], [_path_tokens(p) for p in places], places)
    for row, label in zip(ordered, labels):
        row.label = label
    present = {s for row in ordered for s in row.seeds}
    columns = [s for s in PAPER_SETS if s in present] + sorted(present - set(PAPER_SETS))
    return ordered, columns


def distinct_labels(
    labels: Sequence[str], tokens: Sequence[Sequence[str]], fallbacks: Sequence[str], sep: str = ", "
) -> list[str]:
    """Make shared labels distinct: each item of a group sharing a label gets, in parentheses, what
    tells it apart (its ``tokens``, e.g. path parts and run-name fields such as lr=..., that not all
    of the group share), or its ``fallback`` when nothing does. Unshared labels stay as they are."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    out = list(labels)
    for label, group in groups.items():
        if len(group) == 1:
            continue
        common = set.intersection(*(set(tokens[i]) for i in group))
        for i in group:
            distinct = [t for t in tokens[i] if t not in common]
            out[i] = f"{label} ({sep.join(distinct)})" if distinct else fallbacks[i]
    return out


def _path_tokens(path: str) -> list[str]:
    """Path components, with run directory names split into their ``__``-separated fields."""
    tokens = []
    for part in path.split("/"):
        tokens += part.split("__") if part.startswith("criterion=") else [part]
    return tokens


def _title(set_name: str) -> str:
    return PAPER_SETS.get(set_name, set_name)


def _fmt(cell: tuple[float, float, int] | None) -> str:
    if cell is None:
        return "–"
    mean, std, n = cell
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def to_markdown(rows: Sequence[Row], columns: Sequence[str], metric: str = "rougeL") -> str:
    """The table as GitHub Markdown: Method | sets... | Avg., cells ``mean ± std`` over seeds."""
    header = ["Method", *(_title(c) for c in columns), "Avg."]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row.label.replace("|", "\\|"), *(_fmt(row.cell(c)) for c in columns), _fmt(row.average(columns))]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({seed for row in rows for per in row.seeds.values() for seed in per})
    note = f"{'ROUGE-L' if metric == 'rougeL' else 'Exact match'} (0–100), mean ± sample std over seeds {', '.join(map(str, seeds))}."
    return "\n".join(lines) + "\n\n" + note + "\n"


def to_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """The table as CSV: method, checkpoint, then ``<set> mean``, ``<set> std``, ``<set> seeds`` per
    set and for the average (empty cells where there is no result)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = [*columns, "avg"]
    writer.writerow(["method", "checkpoint", *(f"{c} {k}" for c in names for k in ("mean", "std", "seeds"))])
    for row in rows:
        cells = [row.cell(c) for c in columns] + [row.average(columns)]
        values = []
        for cell in cells:
            values += ["", "", ""] if cell is None else [f"{cell[0]:.4f}", f"{cell[1]:.4f}", str(cell[2])]
        writer.writerow([row.label, row.checkpoint.as_posix(), *values])
    return buf.getvalue()


def plot(rows: Sequence[Row], columns: Sequence[str], path: str | Path, metric: str = "rougeL") -> None:
    """A grouped bar chart (sets and average on the x axis, one bar per checkpoint, std as error
    bars), saved as a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*columns, "avg"]
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 0.3 * len(rows)), 4.5))
    for i, row in enumerate(rows):
        cells = [row.cell(c) for c in columns] + [row.average(columns)]
        means = [c[0] if c else np.nan for c in cells]
        stds = [c[1] if c else 0.0 for c in cells]
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, label=row.label)
    ax.set_xticks(x, [_title(c) for c in columns] + ["Avg."])
    ax.set_ylabel("ROUGE-L" if metric == "rougeL" else "Exact match")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    try:  # bbox: room for the legend on the right
        atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
