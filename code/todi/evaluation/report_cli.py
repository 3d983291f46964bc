"""The papers' results table from evaluated checkpoints.

    python code/report.py outputs/            # every checkpoint evaluated under outputs/

Finds every ``.../<set>/seed<seed>/metrics.json`` written by scripts/eval/run_eval.sh (or
code/evaluate.py) under the given directories, and writes ``report.md``, ``report.csv`` and
``report.png`` (rows = checkpoints named by method / KD objective, columns = the sets and their
average, mean ± std over seeds) into --out-dir (default: the first directory); prints the table.

    python code/report.py --curves RUN_DIR [RUN_DIR ...] [--out curves.png] [--fields loss,kd,dev:rougeL]

With --curves the directories are training runs (each holding metrics.jsonl, and args.json for the
label): plots their train and dev curves on one figure (one panel per metric, one line per run,
x = optimizer step) into --out (default: <out-dir>/<name>.png, else <first run>/curves.png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from todi.util.atomic import atomic_write_text
from todi.evaluation.curves import DEFAULT_FIELDS, CurveError, load_runs, parse_fields, plot_curves, summary
from todi.evaluation.results import METRICS, ResultError, collect, plot, summarize, to_csv, to_markdown

__all__ = ["build_parser", "curves", "main", "table"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``code/report.py``."""
    p = argparse.ArgumentParser(prog="report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", type=Path, nargs="+", help="directories searched (recursively) for evaluation "
                   "results; with --curves, training run directories")
    p.add_argument("--out-dir", type=Path, help="where report.{md,csv,png} go (default: the first directory)")
    p.add_argument("--metric", choices=METRICS, default="rougeL")
    p.add_argument("--name", help="file name stem of the outputs (default: report; curves with --curves)")
    g = p.add_argument_group("training curves")
    g.add_argument("--curves", action="store_true", help="plot the train and dev curves of the given run directories")
    g.add_argument("--out", type=Path,
                   help="the PNG --curves writes (default: <out-dir>/<name>.png, else <first run>/curves.png)")
    g.add_argument("--fields", help="comma-separated [split:]field to plot, split train unless given (default: "
                   + ",".join(n if s == "train" else f"{s}:{n}" for s, n in DEFAULT_FIELDS) + "; those present)")
    return p


def main(argv=None) -> int:
    """``code/report.py``: the results table, or with --curves the training curves; 0, or 2 on bad input."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.curves:
        return curves(args)
    if args.out is not None or args.fields is not None:
        p.error("--out and --fields go with --curves")
    args.name = args.name or "report"
    return table(args)


def table(args: argparse.Namespace) -> int:
    """The results table: <name>.md (printed too), .csv and .png; bad input is one ``error:`` line and 2."""
    try:
        results = collect(args.dirs)
        if not results:
            print(f"error: no evaluation results (<set>/seed<N>/metrics.json) under {', '.join(map(str, args.dirs))}",
                  file=sys.stderr)
            return 2
        rows, columns = summarize(results, root=args.dirs[0], metric=args.metric)
    except (ResultError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out_dir or (args.dirs[0] if args.dirs[0].is_dir() else args.dirs[0].parent)
    markdown = to_markdown(rows, columns, args.metric)
    atomic_write_text(out / f"{args.name}.md", markdown)
    atomic_write_text(out / f"{args.name}.csv", to_csv(rows, columns))
    plot(rows, columns, out / f"{args.name}.png", args.metric)
    print(markdown)
    print(f"wrote {out / args.name}.md, .csv and .png")
    return 0


def curves(args: argparse.Namespace) -> int:
    """--curves: one PNG of the runs' curves; bad input is a one-line error and exit status 2."""
    try:
        runs = load_runs(args.dirs)
        fields = parse_fields(args.fields) if args.fields else DEFAULT_FIELDS
        out = args.out or (args.out_dir or runs[0].path) / f"{args.name or 'curves'}.png"
        plot_curves(runs, out, fields)
    except (CurveError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(runs))
    print(f"wrote {out}")
    return 0
