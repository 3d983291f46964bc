"""Training and dev curves of one or several training runs, from their ``metrics.jsonl``.

    python code/report.py --curves outputs/.../run_a outputs/.../run_b --out curves.png

A run directory holds ``metrics.jsonl`` (written by :class:`todi.util.log.MetricsLog`: one JSON object per
line with ``split`` — ``train``, ``train_epoch`` or ``dev`` — the optimizer ``step`` and numeric fields)
and usually ``args.json``. :func:`load_runs` reads them into :class:`Run` objects holding one
:class:`Series` per (split, field), keeping the last record per (split, step): a resumed run re-logs the
steps after its last saved state. :func:`plot_curves` draws one panel per field, one line per run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from todi.util.atomic import atomic_write_with
from todi.util.jsonl import BadLine, read_objects
from todi.evaluation.results import distinct_labels, method_name

__all__ = [
    "ARGS_FILE", "DEFAULT_FIELDS", "METRICS_FILE", "CurveError", "Run", "Series", "build_series",
    "load_runs", "panels", "parse_fields", "plot_curves", "read_records", "read_run", "summary",
]

METRICS_FILE = "metrics.jsonl"
ARGS_FILE = "args.json"
# What is worth watching, in panel order; fields a run does not log are left out.
TRAIN_FIELDS = ("loss", "ce", "kd", "acc", "todi_alpha", "adakd_ratio", "lr", "grad_norm", "tokens_per_s")
DEV_FIELDS = ("loss", "acc", "rougeL")
DEFAULT_FIELDS = tuple(("train", f) for f in TRAIN_FIELDS) + tuple(("dev", f) for f in DEV_FIELDS)
# MetricsLog writes non-finite floats as these strings (JSON has no NaN/inf).
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
LINE_AT = "{name} line {line}"  # where a bad line is, in an error
# Runs trained before the fix logged AdaKD's metrics with a doubled prefix (adakd_adakd_ratio): read as today's.
LEGACY_PREFIXES = {"adakd_adakd_": "adakd_"}

PANEL_COLUMNS = 3
PANEL_INCHES = (4.2, 3.0)  # width, height of one panel
DPI = 120
MARKER_MAX_POINTS = 40  # sparse series (dev evaluations, short runs) get markers so single points show
COLOR_CYCLE = 10  # matplotlib's default colours C0..C9; after that, the line style changes
LINE_STYLES = ("-", "--", ":", "-.")
LEGEND_COLUMNS = 4


class CurveError(ValueError):
    """A run that cannot be plotted; the message names the path (and line) and the problem."""


@dataclass(frozen=True)
class Series:
    """One field of one split over optimizer steps, in increasing step order."""

    steps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass
class Run:
    """A training run directory: its label and its series keyed by (split, field)."""

    path: Path
    label: str
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    incomplete_last_line: bool = False  # a run still being written may end in half a line

    def get(self, split: str, name: str) -> Series | None:
        return self.series.get((split, name))


def _number(value) -> float | None:
    """The value as a float if it is numeric (bools are not), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    return None


def _check_record(record: dict, where: str) -> dict:
    if not isinstance(record.get("split"), str):
        raise CurveError(f"{where}: missing or non-string 'split'")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise CurveError(f"{where}: 'step' must be an integer, got {step!r}")
    return {_current_name(name): value for name, value in record.items()}


def _current_name(name: str) -> str:
    for old, new in LEGACY_PREFIXES.items():
        if name.startswith(old):
            return new + name.removeprefix(old)
    return name


def read_records(path: str | Path) -> tuple[list[dict], bool]:
    """The records of a ``metrics.jsonl`` in file order, and whether an incomplete last line was skipped.

    Blank lines are skipped. A last line without its newline that does not parse is a record being
    written right now (the run is live) and is skipped; any other bad line is a :class:`CurveError`.
    """
    skipped: list[BadLine] = []

    def skip_live_tail(bad: BadLine) -> None:
        if not bad.unterminated:
            raise CurveError(bad.message)
        skipped.append(bad)

    records = [_check_record(record, LINE_AT.format(name=path, line=number))
               for number, record in read_objects(path, CurveError, where=LINE_AT, on_bad=skip_live_tail)]
    return records, bool(skipped)


def build_series(records: Iterable[dict]) -> dict[tuple[str, str], Series]:
    """One series per (split, numeric field); the last record of each (split, step) wins, whole."""
    last: dict[tuple[str, int], dict] = {}
    for record in records:
        last[(record["split"], record["step"])] = record
    columns: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for (split, step), record in sorted(last.items()):
        for name, raw in record.items():
            value = _number(raw)
            if name not in ("split", "step") and value is not None:
                columns.setdefault((split, name), []).append((step, value))
    return {key: Series(tuple(s for s, _ in points), tuple(v for _, v in points)) for key, points in columns.items()}


def _label_from_args(run_dir: Path) -> str | None:
    """The method a run's args.json names (SFT, or the KD objective, + AdaKD / LoRA), or None."""
    path = run_dir / ARGS_FILE
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a label is not worth failing the plot for: fall back to the directory name
    if not isinstance(args, dict):
        return None
    objective = args.get("kd_objective")
    if args.get("criterion") == "cross_entropy":
        label = "SFT"
    elif isinstance(objective, str) and objective:
        label = objective
    else:
        return None
    if args.get("adakd") is True:
        label += " + AdaKD"
    if args.get("peft") == "lora":
        label += " (LoRA)"
    return label


def _run_dir(path: Path) -> Path:
    """The run directory for ``path`` (a run directory, or its metrics.jsonl), checked."""
    if path.is_file() and path.name == METRICS_FILE:
        return path.parent
    if not path.exists():
        raise CurveError(f"{path}: no such run directory")
    if not path.is_dir():
        raise CurveError(f"{path}: not a run directory (pass the directory that holds {METRICS_FILE})")
    if not (path / METRICS_FILE).is_file():
        below = sorted(p.parent for p in path.glob(f"*/**/{METRICS_FILE}"))
        hint = f"; runs below it: {', '.join(map(str, below[:3]))}{', ...' if len(below) > 3 else ''}" if below else ""
        raise CurveError(f"{path}: no {METRICS_FILE} (not a training run directory{hint})")
    return path


def read_run(path: str | Path) -> Run:
    """One run: its series, labelled by args.json, else by its directory name's method, else its name."""
    run_dir = _run_dir(Path(path))
    records, incomplete = read_records(run_dir / METRICS_FILE)
    label = _label_from_args(run_dir) or method_name(run_dir.resolve()) or run_dir.resolve().name
    return Run(run_dir, label, build_series(records), incomplete)


def _path_tokens(path: Path) -> list[str]:
    """Path components, with run names (``criterion=...__lr=...``) split into their fields."""
    tokens = []
    for part in path.resolve().parts:
        tokens += part.split("__") if "__" in part else [part]
    return tokens


def _disambiguate(runs: Sequence[Run]) -> None:
    """Runs sharing a label get the path components (or run-name fields) the others lack appended."""
    labels = distinct_labels([run.label for run in runs], [_path_tokens(run.path) for run in runs],
                             [run.path.as_posix() for run in runs], sep="/")
    for run, label in zip(runs, labels):
        run.label = label


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs in the given order (a directory given twice counts once), with distinct labels."""
    runs, seen = [], set()
    for path in paths:
        run = read_run(path)
        if run.path.resolve() not in seen:
            seen.add(run.path.resolve())
            runs.append(run)
    if not runs:
        raise CurveError("no run directories given")
    _disambiguate(runs)
    return runs


def parse_fields(text: str) -> tuple[tuple[str, str], ...]:
    """``loss,kd,dev:rougeL`` → ((train, loss), (train, kd), (dev, rougeL)); no split means train."""
    fields = []
    for item in text.split(","):
        split, _, name = item.strip().rpartition(":")
        if not name:
            raise CurveError(f"--fields: empty field name in {text!r} (expected e.g. loss,kd,dev:rougeL)")
        fields.append((split or "train", name))
    return tuple(fields)


def _finite(series: Series | None) -> bool:
    return series is not None and any(math.isfinite(v) for v in series.values)


def panels(runs: Sequence[Run], fields: Sequence[tuple[str, str]] = DEFAULT_FIELDS) -> list[tuple[str, str]]:
    """The fields (in the given order) for which at least one run has a finite value."""
    chosen = [f for f in dict.fromkeys(fields) if any(_finite(run.get(*f)) for run in runs)]
    if not chosen:
        names = ", ".join(f"{s}:{n}" for s, n in fields)
        raise CurveError(f"no numeric data to plot in {', '.join(str(r.path / METRICS_FILE) for r in runs)} "
                         f"(looked for {names})")
    return chosen


def _style(index: int) -> dict:
    """Colour and line style of the ``index``-th run: the default colours, then other line styles."""
    return {"color": f"C{index % COLOR_CYCLE}", "linestyle": LINE_STYLES[index // COLOR_CYCLE % len(LINE_STYLES)]}


def _draw(ax, series: Series, style: dict) -> None:
    # non-finite values (a NaN loss, an inf grad norm) are gaps rather than axis-wrecking points
    values = [v if math.isfinite(v) else math.nan for v in series.values]
    marker = "o" if len(values) <= MARKER_MAX_POINTS else None
    ax.plot(series.steps, values, marker=marker, markersize=3, linewidth=1.2, **style)


def plot_curves(
    runs: Sequence[Run], path: str | Path, fields: Sequence[tuple[str, str]] = DEFAULT_FIELDS
) -> list[tuple[str, str]]:
    """One panel per field that some run has (x = optimizer step), one line per run, a shared legend;
    saved as a PNG atomically. Returns the fields drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    chosen = panels(runs, fields)
    ncols = min(PANEL_COLUMNS, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PANEL_INCHES[0] * ncols, PANEL_INCHES[1] * nrows), squeeze=False)
    for ax, (split, name) in zip(axes.flat, chosen):
        for i, run in enumerate(runs):
            series = run.get(split, name)
            if series is not None:
                _draw(ax, series, _style(i))
        ax.set_title(f"{split} {name}", fontsize="medium")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    handles = [Line2D([], [], linewidth=1.5, **_style(i)) for i in range(len(runs))]
    fig.legend(handles, [run.label for run in runs], loc="lower center", bbox_to_anchor=(0.5, 1.0),
               ncol=min(LEGEND_COLUMNS, len(runs)), fontsize="small", frameon=False)
    fig.tight_layout()
    try:  # bbox: room for the legend above
        atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return chosen


def _best(series: Series | None, higher_is_better: bool) -> tuple[float, int] | None:
    points = [(v, s) for s, v in zip(series.steps, series.values) if math.isfinite(v)] if series else []
    if not points:
        return None
    return max(points) if higher_is_better else min(points, key=lambda p: (p[0], -p[1]))


def summary(runs: Sequence[Run]) -> str:
    """One line per run: label, directory, last step, and its best dev score (ROUGE-L, else loss)."""
    lines = []
    for run in runs:
        steps = [s for series in run.series.values() for s in series.steps]
        text = f"{run.label}: {run.path} (to step {max(steps) if steps else '-'}"
        rouge, loss = _best(run.get("dev", "rougeL"), True), _best(run.get("dev", "loss"), False)
        if rouge or loss:
            name, (value, step) = ("rougeL", rouge) if rouge else ("loss", loss)
            text += f"; best dev {name} {value:.4g} at step {step}"
        text += ")" + ("; skipped an incomplete last line (run still writing?)" if run.incomplete_last_line else "")
        lines.append(text)
    return "\n".join(lines)
