"""Pairwise LLM-as-a-judge comparison of two evaluated checkpoints (the papers' GPT-4 evaluation).

    python code/judge.py CKPT_A CKPT_B --out-dir outputs/judge/todi_vs_fkl            # gpt-4 on api.openai.com
    python code/judge.py CKPT_A CKPT_B --out-dir DIR --base-url http://localhost:8000/v1 --model NAME
    python code/judge.py CKPT_A CKPT_B --out-dir DIR --dry-run                         # the cost estimate and one prompt

Judges every set that both checkpoints answered (``<ckpt>/eval/<set>/seed<seed>/answers.jsonl``,
written by scripts/eval/run_eval.sh) with a common seed, each example in both presentation orders,
and writes ``judge.md``, ``judge.csv``, ``judge.png`` and ``verdicts.jsonl`` (one line per example)
into --out-dir; verdicts are cached under --out-dir/cache, so a rerun asks only what is missing.
Endpoint, key and model also come from OPENAI_BASE_URL, OPENAI_API_KEY and JUDGE_MODEL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from todi.util.atomic import atomic_write_text
from todi.judge.client import JudgeConfig, VerdictCache, build_jobs, estimate, make_client, run_jobs, tally
from todi.judge.inputs import JudgeError, load_pairs
from todi.judge.stats import plot, summary_rows, to_csv, to_markdown
from todi.evaluation.results import run_label

__all__ = ["judge", "main", "parse_args"]

# GPT-4 (8k context) list prices, US$ per 1,000 tokens; pass today's prices for another judge
PRICE_PROMPT_1K = 0.03
PRICE_COMPLETION_1K = 0.06


def parse_args(argv=None) -> argparse.Namespace:
    """The flags of ``code/judge.py``; the endpoint's defaults come from the environment."""
    d = JudgeConfig()
    p = argparse.ArgumentParser(prog="judge.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpt_a", type=Path, help="checkpoint A (the folder holding eval/), or its eval folder")
    p.add_argument("ckpt_b", type=Path, help="checkpoint B, likewise")
    p.add_argument("--out-dir", type=Path, required=True, help="where the table, plot, verdicts and cache go")
    p.add_argument("--name-a", help="model A's name in the table (default: its row label in report.py's table)")
    p.add_argument("--name-b", help="model B's name in the table")
    p.add_argument("--sets", nargs="+", help="only these sets (default: every set both answered)")
    p.add_argument("--seed", type=int, help="the sampling seed judged (default: the smallest common one per set)")
    p.add_argument("--max-examples", type=_non_negative, help="judge only the first N examples of each set")
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL") or None,
                   help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (env OPENAI_BASE_URL)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY") or None, help="(env OPENAI_API_KEY)")
    p.add_argument("--model", default=os.environ.get("JUDGE_MODEL") or d.model, help="judge model (env JUDGE_MODEL)")
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--max-tokens", type=_positive, default=d.max_tokens, help="cap on each judgement's length")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request")
    p.add_argument("--max-retries", type=_non_negative, default=d.max_retries,
                   help="retries of a call after connection errors, 5xx and 429 (exponential backoff)")
    p.add_argument("--retry-delay", type=float, default=d.retry_delay, help="seconds before the first retry")
    p.add_argument("--max-retry-delay", type=float, default=d.max_retry_delay)
    p.add_argument("--workers", type=_positive, default=d.workers, help="requests in flight at once")
    p.add_argument("--price-prompt", type=float, default=PRICE_PROMPT_1K, help="US$ per 1k prompt tokens")
    p.add_argument("--price-completion", type=float, default=PRICE_COMPLETION_1K, help="US$ per 1k completion tokens")
    p.add_argument("--cache-dir", type=Path, help="verdict cache (default: OUT_DIR/cache)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what it would cost and the first call's prompt, and stop (nothing is asked)")
    return p.parse_args(argv)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _name(given: str | None, ckpt: Path) -> str:
    if given:
        return given
    folder = ckpt.resolve()
    folder = folder.parent if folder.name == "eval" else folder
    return run_label(folder)


def judge(args: argparse.Namespace) -> int:
    """Ask the judge what the cache lacks (nothing with --dry-run: the estimate and one prompt), then write the outputs."""
    config = JudgeConfig(model=args.model, base_url=args.base_url, api_key=args.api_key, temperature=args.temperature,
                         max_tokens=args.max_tokens, timeout=args.timeout, max_retries=args.max_retries,
                         retry_delay=args.retry_delay, max_retry_delay=args.max_retry_delay, workers=args.workers)
    pairs = load_pairs(args.ckpt_a, args.ckpt_b, sets=args.sets, seed=args.seed, max_examples=args.max_examples)
    jobs = build_jobs(pairs, config.model)
    cache = VerdictCache(args.cache_dir or args.out_dir / "cache").load([p.name for p in pairs])
    if cache.ignored_lines:
        print(f"cache: {cache.ignored_lines} unreadable line(s) ignored; those verdicts are asked again")
    cost = estimate(jobs, cache, config, args.price_prompt, args.price_completion)
    print(", ".join(f"{p.name} (seed {p.seed}, {len(p.examples)} examples)" for p in pairs))
    print(cost.describe(config.model), flush=True)
    if args.dry_run:
        if jobs:
            print(example_prompt(jobs[0]))
        return 0
    if cost.calls:
        from tqdm import tqdm

        client = make_client(config)
        with tqdm(total=cost.calls, desc="judging", unit="call", disable=None) as bar:  # None: off unless a terminal
            run_jobs(jobs, cache, config, client, progress=bar.update)
    write_outputs(args, pairs, jobs, cache, config.model)
    return 0


def example_prompt(job) -> str:
    """The messages of one call as the judge receives them, each under its role (--dry-run shows the first)."""
    head = f"the first call's prompt ({job.set_name} example {job.index}, order {job.order}; the other order swaps the answers):"
    return "\n".join([head, *(f"--- {m['role']} ---\n{m['content']}" for m in job.messages), "--- end ---"])


def write_outputs(args, pairs, jobs, cache, model: str) -> None:
    """judge.md (printed too), judge.csv, verdicts.jsonl and judge.png in --out-dir."""
    name_a, name_b = _name(args.name_a, args.ckpt_a), _name(args.name_b, args.ckpt_b)
    if name_a == name_b:  # e.g. two runs of one method: keep the columns apart
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    tallies, outcomes = tally(pairs, jobs, cache)
    rows = summary_rows(tallies, {p.name: p.seed for p in pairs})
    out = args.out_dir
    markdown = to_markdown(rows, name_a, name_b, model)
    atomic_write_text(out / "judge.md", markdown)
    atomic_write_text(out / "judge.csv", to_csv(rows))
    atomic_write_text(out / "verdicts.jsonl", "".join(json.dumps(o) + "\n" for o in outcomes))
    plot(rows, out / "judge.png", name_a, name_b)
    print(markdown)
    print(f"wrote {out}/judge.md, judge.csv, judge.png and verdicts.jsonl")


def main(argv=None) -> int:
    """``code/judge.py``: 0; 2 after one ``error:`` line on bad input; 130 when interrupted (verdicts kept)."""
    args = parse_args(argv)
    try:
        return judge(args)
    except (JudgeError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the verdicts so far are cached, rerun the same command to continue", file=sys.stderr)
        return 130

