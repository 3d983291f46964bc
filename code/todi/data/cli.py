"""Prepare an instruction data set the way MiniLLM / DSKD / ToDi use it.

    python code/prepare_data.py dolly --output-dir data                    # downloads the raw files
    python code/prepare_data.py self-inst --output-dir data --raw-dir RAW  # uses RAW/self-instruct/...

Writes <output-dir>/dolly/{train,dev,valid}.jsonl, self-inst/valid.jsonl, vicuna/valid.jsonl,
sinst/11_/valid.jsonl or uinst/11_/valid.jsonl. See data/README.md for the sources, the processing
rules and the licences.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from todi.data.instructions import DataError
from todi.util.failures import fail
from todi.data.prepare import DATASETS, SOURCES, PrepareError, download_raw_files, find_raw_files, prepare

__all__ = ["REPO", "build_parser", "main"]

REPO = Path(__file__).resolve().parents[3]  # the checkout: code/todi/data/cli.py -> .


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``code/prepare_data.py``."""
    p = argparse.ArgumentParser(prog="prepare_data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="+", choices=[*DATASETS, "all"], metavar="DATASET",
                   help=f"one or more of {', '.join(DATASETS)}, or all")
    p.add_argument("--output-dir", type=Path, default=REPO / "data", help="default: the repository's data/")
    p.add_argument("--raw-dir", type=Path, help="where the raw files are; without it they are downloaded into "
                   "<output-dir>/raw (kept for later runs). Raw paths: " + "; ".join(
                       f"{d}: {', '.join(files)}" for d, files in SOURCES.items()))
    p.add_argument("--tokenizer", type=Path, default=REPO / "model_hub/gpt2/gpt2-base",
                   help="tokenizer whose token counts decide the length filters (default: GPT-2's, as MiniLLM)")
    return p


def main(argv=None) -> int:
    """``code/prepare_data.py``: 0, or 2 after one ``error:`` line on bad input (recorded for the launchers)."""
    args = build_parser().parse_args(argv)
    datasets = list(DATASETS) if "all" in args.datasets else list(dict.fromkeys(args.datasets))
    try:
        from todi.models import load_tokenizer  # loads transformers: not for --help or a bad flag

        tokenizer = load_tokenizer(args.tokenizer)
        for dataset in datasets:
            if args.raw_dir is not None:
                raw_files = find_raw_files(dataset, args.raw_dir)
            else:
                raw_files = download_raw_files(dataset, args.output_dir / "raw")
            for path, n in prepare(dataset, raw_files, args.output_dir, tokenizer).items():
                print(f"{dataset}: wrote {n} examples to {path}")
    except (PrepareError, DataError, OSError) as e:
        return fail(f"error: {e}")
    return 0
