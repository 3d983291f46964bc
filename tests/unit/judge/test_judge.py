"""The pairwise judge against a local OpenAI-compatible server: counts, order swap, cache, retries,
unparseable verdicts, outputs, clear errors, the entry point and its script."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("openai")

from todi.judge import cli as judge_cli  # noqa: E402  (code/judge.py)
from todi.judge.client import messages, parse_verdict  # noqa: E402
from todi.judge.inputs import question_of  # noqa: E402
from todi.judge.stats import combine, sign_test_p, wilson_interval  # noqa: E402
from todi.evaluation.results import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[3]

MARK = "EXCELLENT"  # the fake judge prefers the response that contains it, wherever it is shown
FAST = ["--retry-delay", "0.001", "--max-retry-delay", "0.01", "--timeout", "10"]
TODI_DIR = "criterion=various_divergence__ToDi-bf16__teacher=gpt2-xlarge__kd^rate=0.5"


# ------------------------------------------------------------------------------ the fake endpoint


class FakeJudge:
    """Scripted replies first (an int: that HTTP status; a str: that reply text), then the marker rule
    (``mode="marker"``) or always the first response (``mode="first"``, a position-biased judge)."""

    def __init__(self):
        self.script: list = []
        self.mode = "marker"
        self.requests: list[tuple[str, str, str]] = []  # (instruction, first response shown, second)
        self.lock = threading.Lock()

    def reply(self, body: dict) -> tuple[int, dict]:
        user = body["messages"][-1]["content"]
        question = re.search(r"\[Instruction\]\n(.*?)\n\n\[Response A\]", user, re.DOTALL).group(1)
        first = re.search(r"\[Response A\]\n(.*)\n\[End of Response A\]", user, re.DOTALL).group(1)
        second = re.search(r"\[Response B\]\n(.*)\n\[End of Response B\]", user, re.DOTALL).group(1)
        with self.lock:
            self.requests.append((question, first, second))
            step = self.script.pop(0) if self.script else None
        if isinstance(step, int):
            return step, {"error": {"message": f"scripted {step}", "type": "server_error"}}
        if step is None:
            a, b = MARK in first, MARK in second
            step = "Both equal. [[C]]" if self.mode == "marker" and a == b else \
                "A is better.\n[[A]]" if self.mode == "first" or a else "B is better.\n[[B]]"
        return 200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": step}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }


@pytest.fixture
def server():
    fake = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, payload = fake.reply(body) if self.path == "/v1/chat/completions" else (404, {})
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch):
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# ------------------------------------------------------------------------- two evaluated checkpoints

# per set: which examples carry the marker in A's and in B's answer
DOLLY = {"a": {0, 1, 2, 4}, "b": {3, 4}, "n": 6}  # A wins 0-2, B wins 3, ties 4 (both) and 5 (neither)
VICUNA = {"a": {0}, "b": {1, 2, 3}, "n": 4}


def _answers(spec: dict, side: str, set_name: str) -> tuple[list, list, list]:
    prompts = [f"{set_name} question {i}?" for i in range(spec["n"])]
    preds = [f"{side} answer {i}" + (f" {MARK}" if i in spec[side] else "") for i in range(spec["n"])]
    return prompts, [["ref"]] * spec["n"], preds


@pytest.fixture
def ckpts(tmp_path) -> tuple[Path, Path]:
    """A (a ToDi run) and B, written by todi.evaluation.results.write_result as run_eval.sh does.

    dolly: both have seeds 10 and 20 (A's seed-20 answers have no marker: judging it would change the
    counts); vicuna: both have seed 20 only; self-inst: only A (not judged)."""
    a = tmp_path / "outputs" / TODI_DIR / "epoch1_step10"
    b = tmp_path / "outputs" / TODI_DIR.replace("ToDi", "forward_kl") / "epoch1_step10"
    for side, ckpt in (("a", a), ("b", b)):
        for seed in (10, 20):
            prompts, refs, preds = _answers(DOLLY, side, "dolly")
            if side == "a" and seed == 20:
                preds = [p.replace(MARK, "") for p in preds]
            write_result(ckpt / "eval", "dolly", seed, prompts, refs, preds, {"rougeL": 1.0})
        write_result(ckpt / "eval", "vicuna", 20, *_answers(VICUNA, side, "vicuna"), {"rougeL": 1.0})
    write_result(a / "eval", "self-inst", 10, ["q"], [["r"]], ["x"], {"rougeL": 1.0})
    return a, b


def run(ckpts, out: Path, server, *extra: str) -> int:
    return judge_cli.main([str(ckpts[0]), str(ckpts[1]), "--out-dir", str(out), "--base-url", server.url,
                           "--api-key", "dummy", *FAST, *extra])


def read_csv(out: Path) -> dict[str, dict]:
    return {r["set"]: r for r in csv.DictReader(io.StringIO((out / "judge.csv").read_text()))}


def counts(row: dict) -> tuple[int, int, int, int]:
    return int(row["wins"]), int(row["ties"]), int(row["losses"]), int(row["unparseable"])


# ------------------------------------------------------------------------------------ unit checks


@pytest.mark.parametrize("text, verdict", [
    ("A is clearly better.\n[[A]]", "A"), ("[[B]]", "B"), ("tie: [[C]]", "C"), ("[[A]] ... final: [[A]]", "A"),
    ("", "unparseable"), (None, "unparseable"), ("Response A", "unparseable"), ("[[A]] or [[B]]", "unparseable"),
    ("[A]", "unparseable"),
])
def test_parse_verdict_never_guesses(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("ab, ba, outcome, inconsistent", [
    ("A", "B", "win", False),   # A shown first wins; then B-first: the second shown (A) wins
    ("A", "C", "win", False), ("C", "B", "win", False),
    ("B", "A", "loss", False), ("B", "C", "loss", False),
    ("C", "C", "tie", False),
    ("A", "A", "tie", True),    # the first shown always wins: position bias, no preference
    ("unparseable", "B", "unparseable", False), ("A", "unparseable", "unparseable", False),
])
def test_combine_rule(ab, ba, outcome, inconsistent):
    assert combine(ab, ba) == (outcome, inconsistent)


def test_wilson_interval_and_sign_test():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook example
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert sign_test_p(9, 1) == pytest.approx(2 * 11 / 1024)
    assert sign_test_p(1, 9) == sign_test_p(9, 1)
    assert sign_test_p(5, 5) == 1.0 and sign_test_p(0, 0) == 1.0
    p = sign_test_p(3000, 2000)  # large n: exact integers, no overflow or underflow to nonsense
    assert 0.0 <= p < 1e-40 and math.isfinite(p)


def test_question_of_strips_the_alpaca_template():
    with_input = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                  "Write a response that appropriately completes the request.\n\n"
                  "### Instruction:\nSummarise.\n\n### Input:\nA long text.\n\n### Response:\n")
    assert question_of(with_input) == "Summarise.\n\nA long text."
    assert question_of("Just a question?\n") == "Just a question?"
    msgs = messages("Q?", "first answer", "second answer")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "[[A]]" in msgs[0]["content"] and "first answer" in msgs[1]["content"]


# ------------------------------------------------------------------------------ end to end, in process


def test_counts_orders_and_outputs(ckpts, tmp_path, server, capsys):
    out = tmp_path / "judge"
    assert run(ckpts, out, server) == 0
    rows = read_csv(out)
    assert list(rows) == ["dolly", "vicuna", "overall"]  # self-inst: only A has it
    assert counts(rows["dolly"]) == (3, 2, 1, 0) and rows["dolly"]["seed"] == "10"
    assert counts(rows["vicuna"]) == (1, 0, 3, 0) and rows["vicuna"]["seed"] == "20"
    assert counts(rows["overall"]) == (4, 2, 4, 0) and rows["overall"]["n"] == "10"
    assert float(rows["dolly"]["win_rate"]) == pytest.approx(0.5)
    assert float(rows["dolly"]["score"]) == pytest.approx((3 + 1) / 6)
    assert float(rows["overall"]["p_value"]) == pytest.approx(1.0)

    # every example asked twice, once in each order
    assert len(server.requests) == 2 * (6 + 4)
    orders: dict[str, list] = {}
    for question, first, second in server.requests:
        assert first.split()[2] == second.split()[2]  # the same example
        orders.setdefault(question, []).append(first[0] + second[0])
    assert len(orders) == 10 and all(sorted(o) == ["ab", "ba"] for o in orders.values())

    printed = capsys.readouterr().out
    assert "calls to make" in printed and "$" in printed  # the estimate came first
    assert printed.index("calls to make") < printed.index("| Set |")
    md = (out / "judge.md").read_text()
    assert "| ToDi wins |" in md and "| forward_kl wins |" in md  # names from the run directories
    assert "| Dolly | 10 | 6 | 3 | 2 | 1 | 0 | 50.0 [" in md
    assert (out / "judge.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verdicts = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 10 and {v["outcome"] for v in verdicts} == {"win", "tie", "loss"}


def test_position_biased_judge_cancels_out(ckpts, tmp_path, server):
    server.mode = "first"  # always prefers whichever response is shown first
    assert run(ckpts, tmp_path / "j", server) == 0
    overall = read_csv(tmp_path / "j")["overall"]
    assert counts(overall) == (0, 10, 0, 0) and overall["inconsistent"] == "10"


def test_cache_rerun_asks_only_what_is_missing(ckpts, tmp_path, server):
    out = tmp_path / "j"
    assert run(ckpts, out, server) == 0
    assert len(server.requests) == 20
    assert run(ckpts, out, server) == 0
    assert len(server.requests) == 20  # everything cached: no call

    cache = out / "cache" / "dolly.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == 12
    cache.write_text("\n".join(lines[:9]) + "\n" + lines[9][:20])  # 3 lost, the last one cut mid-line
    assert run(ckpts, out, server) == 0
    assert len(server.requests) == 23
    assert counts(read_csv(out)["overall"]) == (4, 2, 4, 0)
    assert len([json.loads(line) for line in cache.read_text().splitlines() if line.endswith("}")]) == 12

    assert run(ckpts, out, server, "--model", "other-judge") == 0
    assert len(server.requests) == 43  # another judge never reuses verdicts


def test_transient_errors_and_rate_limits_are_retried(ckpts, tmp_path, server):
    server.script = [500, 429, 503]
    assert run(ckpts, tmp_path / "j", server, "--workers", "1") == 0
    assert len(server.requests) == 20 + 3
    assert counts(read_csv(tmp_path / "j")["overall"]) == (4, 2, 4, 0)


def test_retries_exhausted_and_refusals_fail_clearly(ckpts, tmp_path, server, capsys):
    server.script = [500, 500, 500]
    out = tmp_path / "j"
    assert run(ckpts, out, server, "--workers", "1", "--max-retries", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: judge endpoint") and "after 3 attempts" in err[-1] and "500" in err[-1]
    # no call starts after the failure; one already in flight may finish, and is kept
    cached = (out / "cache" / "dolly.jsonl").read_text().splitlines() if (out / "cache").exists() else []
    assert len(server.requests) - 3 == len(cached) <= 1

    server.script = [401]  # retrying would succeed: an exit code of 2 means it was not retried
    assert run(ckpts, out, server, "--workers", "1") == 2
    assert "refused the request: AuthenticationError (401)" in capsys.readouterr().err.strip().splitlines()[-1]

    assert run(ckpts, out, server) == 0  # the endpoint is back: the run completes
    assert counts(read_csv(out)["overall"]) == (4, 2, 4, 0)


def test_unparseable_verdicts_are_counted_and_cached(ckpts, tmp_path, server):
    # with one worker the calls go in order: dolly example 0 in order AB, then BA, ...
    server.script = ["I cannot decide.", "[[A]] no wait, [[B]]"]
    out = tmp_path / "j"
    assert run(ckpts, out, server, "--workers", "1") == 0
    rows = read_csv(out)
    assert counts(rows["dolly"]) == (2, 2, 1, 1) and rows["dolly"]["n"] == "5"
    records = [json.loads(line) for line in (out / "cache" / "dolly.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in records if r["index"] == 0] == ["unparseable", "unparseable"]
    assert {r["order"] for r in records if r["index"] == 0} == {"AB", "BA"}
    assert run(ckpts, out, server) == 0
    assert len(server.requests) == 20  # cached as unparseable: not asked again


def test_dry_run_and_max_examples(ckpts, tmp_path, server, capsys):
    out = tmp_path / "j"
    assert run(ckpts, out, server, "--dry-run", "--max-examples", "2", "--price-prompt", "1", "--price-completion", "0") == 0
    printed = capsys.readouterr().out
    assert "8 verdicts, 0 cached, 8 calls to make" in printed
    tokens = int(re.search(r"~([\d,]+) prompt tokens", printed).group(1).replace(",", ""))
    assert f"${tokens / 1000:,.2f}" in printed
    assert server.requests == [] and not (out / "judge.md").exists()
    # one example prompt, as README promises: the first call's messages, each under its role
    first = printed[printed.index("the first call's prompt (dolly example 0, order AB"):]
    assert "--- system ---\n" in first and "--- user ---\n" in first and "dolly question 0?" in first
    assert first.rstrip().endswith("--- end ---")
    assert run(ckpts, out, server, "--max-examples", "2", "--sets", "vicuna") == 0
    assert len(server.requests) == 4 and list(read_csv(out)) == ["vicuna", "overall"]


def test_seed_flag(ckpts, tmp_path, server, capsys):
    assert run(ckpts, tmp_path / "j", server, "--seed", "20") == 0
    rows = read_csv(tmp_path / "j")
    assert counts(rows["dolly"]) == (0, 4, 2, 0)  # A's seed-20 answers carry no marker
    assert "skipping" not in capsys.readouterr().out
    assert run(ckpts, tmp_path / "k", server, "--seed", "30") == 2
    assert "for seed 30" in capsys.readouterr().err


def _last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_inputs_give_one_line_errors(ckpts, tmp_path, server, capsys):
    a, b = ckpts
    out = tmp_path / "j"
    assert judge_cli.main([str(tmp_path / "nope"), str(b), "--out-dir", str(out)]) == 2
    assert _last_error(capsys) == f"error: {tmp_path / 'nope'}: no such directory"

    other = tmp_path / "other"
    write_result(other / "eval", "uinst/11_", 10, ["q"], [["r"]], ["x"], {"rougeL": 1.0})
    assert judge_cli.main([str(a), str(other), "--out-dir", str(out)]) == 2
    assert _last_error(capsys).startswith("error: no set with answers of both")

    empty = tmp_path / "empty"
    empty.mkdir()
    assert judge_cli.main([str(a), str(empty), "--out-dir", str(out)]) == 2
    assert "no answers" in _last_error(capsys)

    assert judge_cli.main([str(a), str(b), "--out-dir", str(out), "--sets", "dolly", "sinst/11_"]) == 2
    assert "sinst/11_" in _last_error(capsys)

    answers = b / "eval/vicuna/seed20/answers.jsonl"
    good = answers.read_text()
    answers.write_text(good.replace("vicuna question 2?", "a different question"))
    assert judge_cli.main([str(a), str(b), "--out-dir", str(out)]) == 2
    assert _last_error(capsys).startswith(f"error: {answers}:3: prompt differs from")

    lines = good.splitlines()
    answers.write_text("\n".join(lines[:1] + ['{"prompt": "x", "prediction"'] + lines[2:]) + "\n")
    assert judge_cli.main([str(a), str(b), "--out-dir", str(out)]) == 2
    assert _last_error(capsys).startswith(f"error: {answers}:2: malformed JSON")

    answers.write_text(good + json.dumps({"prompt": "x"}) + "\n")
    assert judge_cli.main([str(a), str(b), "--out-dir", str(out)]) == 2
    assert _last_error(capsys) == f"error: {answers}:5: field 'prediction' missing or not a string"
    assert server.requests == []


# --------------------------------------------------------------------- entry point and script, as processes


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_") and k != "JUDGE_MODEL"}
    env.update(NO_PROXY="127.0.0.1,localhost", **extra)
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_entry_point_end_to_end_and_errors(ckpts, tmp_path, server):
    a, b = ckpts
    cmd = [sys.executable, str(REPO / "code/judge.py"), str(a), str(b), *FAST]
    done = subprocess.run([*cmd, "--out-dir", str(tmp_path / "j"), "--name-a", "ToDi", "--name-b", "FKL"],
                          env=_env(OPENAI_BASE_URL=server.url), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "| Overall |  | 10 | 4 | 2 | 4 | 0 |" in done.stdout and len(server.requests) == 20

    dead = f"http://127.0.0.1:{_closed_port()}/v1"
    done = subprocess.run([*cmd, "--out-dir", str(tmp_path / "k"), "--base-url", dead, "--max-retries", "1"],
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: judge endpoint {dead} failed after 2 attempts: APIConnectionError")

    done = subprocess.run([*cmd, "--out-dir", str(tmp_path / "k")], env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: no API key")


def test_run_judge_script(ckpts, tmp_path, server):
    script = REPO / "scripts/eval/run_judge.sh"
    assert os.access(script, os.X_OK)
    settings = script.read_text().split("set -euo pipefail\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(settings) > 8
    for line in settings:  # every setting is an environment override, as in the other scripts
        name = line.split("=", 1)[0]
        if name not in ("CKPT_A", "CKPT_B", "OUT_DIR"):  # the positional arguments
            assert line.startswith(f"{name}=${{{name}:-"), line
    out = tmp_path / "j"
    env = _env(OPENAI_BASE_URL=server.url, PYTHON=sys.executable, EVAL_SETS="dolly", MAX_EXAMPLES="3",
               JUDGE_OPTS=" ".join(FAST))
    done = subprocess.run(["bash", str(script), *map(str, ckpts), str(out)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert counts(read_csv(out)["dolly"]) == (3, 0, 0, 0) and len(server.requests) == 6
    assert (out / "judge.md").is_file() and (out / "judge.png").is_file()
