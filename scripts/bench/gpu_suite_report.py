"""The report of scripts/bench/gpu_suite.sh: its steps' results as one JSON and one Markdown table.

    python scripts/bench/gpu_suite_report.py OUT_DIR

Reads OUT_DIR/status.tsv (step, status, seconds) and what each step wrote there (triton.xml,
loss.json, step.json, epoch/bench.json, generation.json, onpolicy.json); a step without results shows its status.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

RESULT_FILES = {"loss": "loss.json", "step": "step.json", "epoch": "epoch/bench.json", "generation": "generation.json",
                "onpolicy": "onpolicy.json"}
MAX_ROWS = 60  # a table longer than this is left to the JSON


def load(out: Path) -> dict:
    """{step: {"status", "seconds", "results"}} in the suite's order."""
    suite = {}
    for line in (out / "status.tsv").read_text().splitlines():
        step, status, seconds = line.split("\t")
        suite[step] = {"status": status, "seconds": int(seconds), "results": None}
    xml = out / "triton.xml"
    if "triton" in suite and xml.is_file():
        cases = list(ET.parse(xml).getroot().iter("testsuite"))
        suite["triton"]["results"] = {k: sum(int(c.get(k, 0)) for c in cases)
                                      for k in ("tests", "failures", "errors", "skipped")}
    for step, name in RESULT_FILES.items():
        if step in suite and (out / name).is_file():
            suite[step]["results"] = json.loads((out / name).read_text())
    return suite


def table(rows: list[dict]) -> list[str]:
    """A Markdown table of homogeneous records (the first record's keys)."""
    if not rows or not isinstance(rows[0], dict):
        return []
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows[:MAX_ROWS]]
    return lines + ([f"({len(rows) - MAX_ROWS} more rows in gpu_suite.json)"] if len(rows) > MAX_ROWS else [])


def generation_lines(g: dict) -> list[str]:
    speed, exact = g["speed"], g["exactness"]
    return [
        "| figure | value |", "|---|---|",
        f"| fp32 identical answers, HF vs vLLM | {exact['fp32']['identical_answers']}/{exact['fp32']['prompts']} |",
        f"| bf16 identical answers, HF vs vLLM | {exact['bf16']['identical_answers']}/{exact['bf16']['prompts']} |",
        f"| HF sampler, prompts/s ({speed['dtype']}, {speed['prompts']} prompts) | {speed['hf']['prompts_per_second']} |",
        f"| vLLM engine, prompts/s ({speed['dtype']}) | {speed['vllm']['prompts_per_second']} |",
        f"| vLLM / HF | {speed['speedup']}x (engine start {speed['vllm_start_seconds']} s) |",
    ]


def markdown(suite: dict) -> str:
    lines = ["# GPU suite", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {step} | {s['status']} | {s['seconds']} |" for step, s in suite.items()]
    for step, s in suite.items():
        results = s["results"]
        if results is None:
            continue
        lines += ["", f"## {step}", ""]
        if step == "generation":
            lines += generation_lines(results)
        elif step == "triton":
            lines += [", ".join(f"{k}: {v}" for k, v in results.items())]
        else:
            rows = results if isinstance(results, list) else results.get("results", results.get("rows", []))
            lines += table(rows) or ["(see gpu_suite.json)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/bench/gpu_suite_report.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    suite = load(out)
    (out / "gpu_suite.json").write_text(json.dumps(suite, indent=1) + "\n", encoding="utf-8")
    (out / "gpu_suite.md").write_text(markdown(suite), encoding="utf-8")
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
