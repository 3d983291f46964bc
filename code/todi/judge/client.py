"""LLM-as-a-judge pairwise comparison of two evaluated checkpoints (the papers' GPT-4 evaluation).

The examples come paired from :func:`todi.judge.inputs.load_pairs` (the two checkpoints' answers to
the same prompts, set by set). The judge, any OpenAI-compatible chat endpoint, sees every example
twice: model A's answer first (order ``AB``) and model B's first (``BA``), to cancel position bias
(:func:`todi.judge.stats.combine` turns the two verdicts into one outcome).

The prompt is not the ToDi paper's (the official code ships none, and no public copy of the paper's
was found). It is written for this project in the style of MT-Bench's pairwise judge (Zheng et al.,
2023): a system message asking for an impartial comparison and a short explanation, the instruction
and the two responses in delimited blocks, and a final verdict ``[[A]]``, ``[[B]]`` or ``[[C]]``
(tie). No reference answer is shown. Change the wording → bump :data:`PROMPT_VERSION`.

Every verdict is cached, one JSON line appended (and fsynced) per call to
``<cache_dir>/<set>.jsonl``, under a key that hashes the judge model, the prompt version and the
exact messages; a rerun asks only what is missing, and another judge or prompt never reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from todi.util.jsonl import BadLine, parse_objects
from todi.judge.inputs import JudgeError, SetPair
from todi.judge.stats import Tally, combine
from todi.evaluation.results import check_set_name

__all__ = [
    "ORDERS", "PROMPT_VERSION", "Estimate", "JudgeConfig", "Job", "VerdictCache", "ask", "build_jobs",
    "estimate", "make_client", "messages", "parse_verdict", "run_jobs", "tally",
]

PROMPT_VERSION = "todi-pairwise-v1"
ORDERS = ("AB", "BA")
CHARS_PER_TOKEN = 4  # the usual rough size of an English token, for the cost estimate only
RETRY_STATUS = (408, 409, 429)  # plus every 5xx: timeouts, conflicts and rate limits pass
JITTER = 0.25  # up to +25% on each backoff, so parallel workers do not retry in lockstep

SYSTEM_PROMPT = (
    "You are an impartial judge. You will see a user's instruction and two responses to it, written "
    "by two AI assistants. Decide which response follows the instruction better. Weigh helpfulness, "
    "relevance, correctness, depth and level of detail; a response that is off-topic, repetitive or "
    "truncated is worse. Ignore the order in which the responses appear and their length as such, and "
    "do not favour either assistant. Explain your comparison in a few sentences, then give your verdict "
    "on the last line, exactly one of: \"[[A]]\" if response A is better, \"[[B]]\" if response B is "
    "better, \"[[C]]\" if they are equally good."
)
USER_TEMPLATE = (
    "[Instruction]\n{question}\n\n"
    "[Response A]\n{first}\n[End of Response A]\n\n"
    "[Response B]\n{second}\n[End of Response B]"
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


# ------------------------------------------------------------------------------ prompt and verdict


def messages(question: str, first: str, second: str) -> list[dict]:
    """The chat messages for one comparison: ``[{"role": "system", ...}, {"role": "user", ...}]``."""
    user = USER_TEMPLATE.format(question=question, first=first.strip(), second=second.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> str:
    """``"A"``, ``"B"``, ``"C"`` (tie) from the ``[[X]]`` marks in the reply, or ``"unparseable"``:
    when there is none, or marks that contradict each other (never guessed)."""
    marks = set(_VERDICT.findall(text or ""))
    return marks.pop() if len(marks) == 1 else "unparseable"


@dataclass(frozen=True)
class Job:
    """One call: an example of a set in one order, and its cache key."""

    set_name: str
    index: int
    order: str  # "AB": model A's answer shown first; "BA": model B's
    messages: list
    key: str


def _key(model: str, msgs: list) -> str:
    blob = json.dumps({"model": model, "prompt_version": PROMPT_VERSION, "messages": msgs}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def build_jobs(pairs: Sequence[SetPair], model: str) -> list[Job]:
    """Both orders of every example of every set, in set / index / order order."""
    jobs = []
    for pair in pairs:
        for ex in pair.examples:
            for order in ORDERS:
                first, second = (ex.answer_a, ex.answer_b) if order == "AB" else (ex.answer_b, ex.answer_a)
                msgs = messages(ex.question, first, second)
                jobs.append(Job(pair.name, ex.index, order, msgs, _key(model, msgs)))
    return jobs


# ------------------------------------------------------------------------------------------ cache


class VerdictCache:
    """Append-only JSONL files, one per set, ``<root>/<set>.jsonl``; one record per verdict:
    ``{"key", "set", "index", "order", "model", "prompt_version", "verdict", "response", "usage", "time"}``.

    A line that does not parse (a crash mid-write) is ignored, so that verdict is asked again.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.records: dict[str, dict] = {}
        self.ignored_lines = 0

    def path(self, set_name: str) -> Path:
        return self.root / f"{check_set_name(set_name)}.jsonl"

    def load(self, set_names: Sequence[str]) -> "VerdictCache":
        for name in set_names:
            path = self.path(name)
            if not path.is_file():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")  # a crash may cut a character too
            for _, record in parse_objects(text, str(path), JudgeError, on_bad=self._ignore):
                if isinstance(record.get("key"), str):
                    self.records[record["key"]] = record
                else:
                    self.ignored_lines += 1
        return self

    def _ignore(self, bad: BadLine) -> None:
        self.ignored_lines += 1

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def append(self, record: dict) -> None:
        path = self.path(record["set"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() and not _ends_with_newline(f):
                f.write(b"\n")  # close a line cut short by a crash, so this record stays readable
            f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())  # a verdict is paid for: make it survive a crash
        self.records[record["key"]] = record


def _ends_with_newline(f) -> bool:
    f.seek(-1, os.SEEK_END)
    last = f.read(1)
    f.seek(0, os.SEEK_END)
    return last == b"\n"


# ----------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class JudgeConfig:
    """The judge endpoint and how to call it."""

    model: str = "gpt-4"
    base_url: str | None = None  # None: the OpenAI API
    api_key: str | None = None
    temperature: float = 0.0  # deterministic-as-possible verdicts, as in MT-Bench
    max_tokens: int = 512
    timeout: float = 120.0  # seconds per request
    max_retries: int = 6  # retries after the first attempt, for transient errors and rate limits
    retry_delay: float = 1.0  # seconds before the first retry; doubled each time
    max_retry_delay: float = 60.0
    workers: int = 4  # requests in flight at once


def make_client(config: JudgeConfig):
    """An ``openai.OpenAI`` client without its own retries (:func:`ask` does them, visibly)."""
    try:
        import openai
    except ImportError:
        raise JudgeError("the judge needs the openai package: pip install -e '.[judge]'") from None
    api_key = config.api_key
    if not api_key:
        if config.base_url is None:
            raise JudgeError("no API key: set OPENAI_API_KEY or --api-key (a local server takes any dummy)")
        api_key = "not-needed"  # local OpenAI-compatible servers ignore it, the client insists on one
    return openai.OpenAI(base_url=config.base_url, api_key=api_key, max_retries=0, timeout=config.timeout)


def _retryable(error: Exception) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return True
    return isinstance(error, openai.APIStatusError) and (error.status_code in RETRY_STATUS or error.status_code >= 500)


def _delay(attempt: int, error: Exception, config: JudgeConfig) -> float:
    """Exponential backoff with jitter, at least the server's Retry-After (seconds), at most the cap."""
    delay = config.retry_delay * 2**attempt * (1 + JITTER * random.random())
    response = getattr(error, "response", None)
    retry_after = response.headers.get("retry-after") if response is not None else None
    if retry_after and retry_after.replace(".", "", 1).isdigit():
        delay = max(delay, float(retry_after))
    return min(delay, config.max_retry_delay)


def ask(client, config: JudgeConfig, msgs: list, sleep: Callable[[float], None] = time.sleep) -> tuple[str, dict]:
    """The judge's reply text and token usage for one comparison, retrying transient failures."""
    import openai

    attempt = 0
    while True:
        try:
            reply = client.chat.completions.create(
                model=config.model, messages=msgs, temperature=config.temperature, max_tokens=config.max_tokens,
            )
            break
        except openai.OpenAIError as e:
            if not _retryable(e):
                raise JudgeError(f"the judge endpoint refused the request: {_describe(e)}") from None
            if attempt >= config.max_retries:
                raise JudgeError(f"judge endpoint {config.base_url or 'api.openai.com'} failed after "
                                 f"{attempt + 1} attempts: {_describe(e)}") from None
            sleep(_delay(attempt, e, config))
            attempt += 1
    choices = reply.choices or []
    text = (choices[0].message.content or "") if choices else ""
    usage = reply.usage.model_dump() if getattr(reply, "usage", None) is not None else {}
    return text, usage


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}" + (f" ({status})" if status else "") + f": {message}"


# -------------------------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Estimate:
    calls: int  # requests still to make (not cached)
    cached: int
    prompt_tokens: int  # estimated: characters / CHARS_PER_TOKEN
    max_completion_tokens: int
    dollars: float

    def describe(self, model: str) -> str:
        return (f"judge {model}: {self.calls + self.cached} verdicts, {self.cached} cached, {self.calls} calls to make; "
                f"~{self.prompt_tokens:,} prompt tokens (chars/{CHARS_PER_TOKEN}) + at most "
                f"{self.max_completion_tokens:,} completion tokens; estimated cost up to ${self.dollars:,.2f}")


def estimate(jobs: Sequence[Job], cache: VerdictCache, config: JudgeConfig,
             price_prompt_1k: float, price_completion_1k: float) -> Estimate:
    """What the uncached jobs will cost, with completions at their ``max_tokens`` cap (an upper bound)."""
    todo = [j for j in jobs if cache.get(j.key) is None]
    chars = sum(len(m["content"]) for j in todo for m in j.messages)
    prompt_tokens = chars // CHARS_PER_TOKEN
    completion = len(todo) * config.max_tokens
    dollars = prompt_tokens / 1000 * price_prompt_1k + completion / 1000 * price_completion_1k
    return Estimate(len(todo), len(jobs) - len(todo), prompt_tokens, completion, dollars)


def run_jobs(jobs: Sequence[Job], cache: VerdictCache, config: JudgeConfig, client,
             progress: Callable[[int], None] = lambda n: None) -> int:
    """Ask every uncached job (``config.workers`` at a time), caching each verdict as it arrives;
    returns the number of calls made. After an endpoint failure no new call starts, the calls in
    flight finish and are cached (they are paid for), then the failure is raised."""
    todo = [j for j in jobs if cache.get(j.key) is None]
    done, failure = 0, None
    pool = ThreadPoolExecutor(max_workers=max(1, config.workers))
    pending = {pool.submit(ask, client, config, j.messages): j for j in todo}
    try:
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                if future.cancelled():
                    continue
                if future.exception() is not None:
                    failure = failure or future.exception()
                    for queued in pending:
                        queued.cancel()  # only those not yet started
                    continue
                text, usage = future.result()
                cache.append(_record(job, config.model, text, usage))  # only this thread writes
                done += 1
                progress(1)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C: drop the queue, do not wait here
    if failure is not None:
        raise failure
    return done


def _record(job: Job, model: str, text: str, usage: dict) -> dict:
    return {"key": job.key, "set": job.set_name, "index": job.index, "order": job.order, "model": model,
            "prompt_version": PROMPT_VERSION, "verdict": parse_verdict(text), "response": text, "usage": usage,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def tally(pairs: Sequence[SetPair], jobs: Sequence[Job], cache: VerdictCache) -> tuple[dict[str, Tally], list[dict]]:
    """Per set, the outcome counts, and per example ``{"set", "seed", "index", "verdict_ab",
    "verdict_ba", "outcome", "inconsistent"}``; every job must be cached."""
    verdicts = {(j.set_name, j.index, j.order): cache.get(j.key)["verdict"] for j in jobs}
    tallies, outcomes = {}, []
    for pair in pairs:
        t = tallies[pair.name] = Tally()
        for ex in pair.examples:
            ab, ba = verdicts[(pair.name, ex.index, "AB")], verdicts[(pair.name, ex.index, "BA")]
            outcome, inconsistent = combine(ab, ba)
            t.add(outcome, inconsistent)
            outcomes.append({"set": pair.name, "seed": pair.seed, "index": ex.index, "verdict_ab": ab,
                             "verdict_ba": ba, "outcome": outcome, "inconsistent": inconsistent})
    return tallies, outcomes
