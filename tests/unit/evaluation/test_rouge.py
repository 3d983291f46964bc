"""ROUGE-L and exact match: the official aggregation over rouge_score, on real references."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer

from todi.evaluation.rouge import compute_metrics, exact_match, normalize_answer


def _reference_scores(predictions, references):
    """The official rouge_metric.compute_metrics, written out independently."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    em = rouge = 0.0
    for pred, refs in zip(predictions, references):
        em += max(float(normalize_answer(pred) == normalize_answer(r)) for r in refs)
        rouge += max(scorer.score(target=r, prediction=pred)["rougeL"].fmeasure for r in refs)
    n = len(predictions)
    return {"exact_match": round(100 * em / n, 4), "rougeL": round(100 * rouge / n, 4)}


def test_known_values():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 tokens each: F = 5/6
    assert compute_metrics(["the cat sat on the mat"], [["the cat is on the mat"]])["rougeL"] == 83.3333
    # the Porter stemmer makes "running"/"runs" match "run"
    assert compute_metrics(["running dogs"], [["run dog"]])["rougeL"] == 100.0
    # best over references, averaged over examples
    scores = compute_metrics(["a b", "x"], [["c d", "a b"], ["y"]])
    assert scores == {"exact_match": 50.0, "rougeL": 50.0}
    assert exact_match("The  Cat!", "the cat") and not exact_match("the cat", "the cats")


def test_matches_rouge_score_on_real_references(shared_dir):
    dolly = [json.loads(line) for line in open(shared_dir / "data/dolly/valid.jsonl")][:60]
    sinst = [json.loads(line) for line in open(shared_dir / "data/sinst/11_/valid.jsonl")]
    sinst = [r for r in sinst if len(r["output"]) > 2][:40]  # multi-reference examples
    references = [[r["output"]] for r in dolly] + [r["output"] for r in sinst]
    # predictions: another example's reference, a truncated own reference, the exact own reference
    predictions = []
    for i, refs in enumerate(references):
        own = refs[-1]
        predictions.append([references[(i + 1) % len(references)][0], own[: len(own) // 2], own][i % 3])
    got = compute_metrics(predictions, references)
    assert got == _reference_scores(predictions, references)
    assert 0 < got["rougeL"] < 100 and 0 < got["exact_match"] < 100


def test_empty_prediction_or_reference_is_scored():
    scores = compute_metrics(["", "some answer", ""], [["a reference"], [""], [""]])
    # no tokens on either side: ROUGE-L 0; exact match of two empty strings counts
    assert scores == {"exact_match": round(100 / 3, 4), "rougeL": 0.0}


def test_bad_input_is_an_error_not_a_silent_truncation():
    with pytest.raises(ValueError, match="2 predictions but 1"):
        compute_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="example 0"):
        compute_metrics(["a"], ["a"])
    with pytest.raises(ValueError, match="example 0"):
        compute_metrics(["a"], [[]])
