"""scripts/bench/bench_generate.py runs on CPU with a tiny model and reports both ways (no timings asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_reports_both_ways_and_their_ratio(shared_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "scripts/bench/bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    gpt2 = shared_dir / "model_hub/gpt2/gpt2-base"
    out = tmp_path / "bench.json"
    rc = bench.main(["--model-config", str(gpt2), "--config-overrides", "n_layer=1,n_embd=32,n_head=2",
                     "--tokenizer", str(gpt2), "--data", str(shared_dir / "data/dolly/valid.jsonl"),
                     "--num-prompts", "3", "--batch-size", "2", "--extra-batch-sizes", "3",
                     "--max-length", "262", "--max-prompt-length", "256", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["num_prompts"] == 3 and result["batch_size"] == 2 and result["dtype"] == "float32"
    assert result["config_overrides"] == {"n_layer": 1, "n_embd": 32, "n_head": 2}
    for way in ("official", "ours"):
        assert result[way]["seconds"] > 0 and result[way]["examples_per_second"] > 0
        assert 0 < result[way]["avg_answer_tokens"] <= 12  # at most 6 new tokens (a token may decode into 2)
    assert result["speedup"] > 0
    [extra] = result["extra_batch_sizes"]
    assert extra["batch_size"] == 3 and extra["identical_answers"] == 3  # batch size does not change answers
    printed = capsys.readouterr().out
    assert "official:" in printed and "ours:" in printed and "speed-up:" in printed
