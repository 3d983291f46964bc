"""ROUGE-L and exact match, computed as MiniLLM / DSKD / ToDi do (so numbers are comparable)."""

from __future__ import annotations

import string
from collections.abc import Sequence

from rouge_score import rouge_scorer

__all__ = ["compute_metrics", "exact_match", "normalize_answer", "rouge_l"]

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, collapse whitespace."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (rouge_score, Porter stemmer, its default tokenizer) in [0, 1]."""
    return _SCORER.score(target=reference, prediction=prediction)["rougeL"].fmeasure


def compute_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """``{"exact_match", "rougeL"}`` on a 0–100 scale, each the best over an example's references.

    Rounded to 4 decimals like the official code. Unlike it, a length mismatch is an error (the
    official code silently truncates to the shorter list) and so is an example without references.
    An empty prediction or reference is scored (rouge_score gives ROUGE-L 0 when either side has
    no tokens), never a crash.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    em = rouge = 0.0
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"example {i}: references must be a non-empty list of strings, got {refs!r}")
        em += max(float(exact_match(pred, ref)) for ref in refs)
        rouge += max(rouge_l(pred, ref) for ref in refs)
    n = len(predictions)
    return {"exact_match": round(100.0 * em / n, 4), "rougeL": round(100.0 * rouge / n, 4)}
