"""The papers' results table from evaluated checkpoints.

    python code/report.py outputs/            # every checkpoint evaluated under outputs/

Finds every ``.../<set>/seed<seed>/metrics.json`` written by scripts/eval/run_eval.sh (or
code/evaluate.py) under the given directories, and writes ``report.md``, ``report.csv`` and
``report.png`` (rows = checkpoints named by method / KD objective, columns = the sets and their
average, mean ± std over seeds) into --out-dir (default: the first directory); prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from todi.results import METRICS, ResultError, atomic_write_text, collect, plot, summarize, to_csv, to_markdown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", type=Path, nargs="+", help="directories searched (recursively) for evaluation results")
    p.add_argument("--out-dir", type=Path, help="where report.{md,csv,png} go (default: the first directory)")
    p.add_argument("--metric", choices=METRICS, default="rougeL")
    p.add_argument("--name", default="report", help="file name stem of the outputs")
    args = p.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
