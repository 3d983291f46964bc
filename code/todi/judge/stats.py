"""Pairwise-judge statistics: verdicts → per-example outcomes → win/tie/loss tables and a plot.

A verdict is what the judge said about one presentation order: ``"A"`` (the first response shown is
better), ``"B"`` (the second), ``"C"`` (a tie) or ``"unparseable"``. Every example is judged twice,
model A shown first (order ``"AB"``) and model B shown first (``"BA"``); :func:`combine` turns the
two verdicts into one outcome from model A's side:

======================================  ==============
the two orders say (for model A)         outcome
======================================  ==============
win + win, or win + tie                  ``"win"``
loss + loss, or loss + tie               ``"loss"``
tie + tie, or win + loss (inconsistent)  ``"tie"``
either order unparseable                 ``"unparseable"``
======================================  ==============

Unparseable examples are counted but left out of ``n``. Rates over ``n = wins + ties + losses``:
*win rate* ``wins / n`` with a Wilson 95% interval, *score* ``(wins + ties / 2) / n``, and the
two-sided exact sign test of wins against losses (ties dropped), p from Binomial(wins + losses, ½).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from todi.util.atomic import atomic_write_with
from todi.evaluation.results import PAPER_SETS

__all__ = [
    "OUTCOMES", "VERDICTS", "Tally", "combine", "plot", "sign_test_p", "summary_rows", "to_csv", "to_markdown",
    "wilson_interval",
]

VERDICTS = ("A", "B", "C", "unparseable")  # first shown better, second shown better, tie, no verdict
OUTCOMES = ("win", "tie", "loss", "unparseable")  # model A's side
Z_95 = 1.959963984540054  # the standard normal quantile for a two-sided 95% interval
OVERALL = "overall"


def _for_a(verdict: str, order: str) -> str:
    """One order's verdict from model A's side: "win", "loss", "tie" or "unparseable"."""
    if verdict == "C":
        return "tie"
    if verdict not in ("A", "B"):
        return "unparseable"
    first_wins = verdict == "A"
    a_first = order == "AB"
    return "win" if first_wins == a_first else "loss"


def combine(verdict_ab: str, verdict_ba: str) -> tuple[str, bool]:
    """(outcome for model A, whether the two orders contradicted each other); see the module table."""
    sides = {_for_a(verdict_ab, "AB"), _for_a(verdict_ba, "BA")}
    if "unparseable" in sides:
        return "unparseable", False
    if sides == {"win", "loss"}:
        return "tie", True  # position bias, not a preference: count neither side
    for decided in ("win", "loss"):
        if decided in sides:
            return decided, False
    return "tie", False


@dataclass
class Tally:
    """Outcome counts of one set (or all sets together)."""

    wins: int = 0
    ties: int = 0
    losses: int = 0
    unparseable: int = 0
    inconsistent: int = 0  # of the ties: the orders disagreed (win in one, loss in the other)

    def add(self, outcome: str, inconsistent: bool = False) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; expected one of {', '.join(OUTCOMES)}")
        attr = {"win": "wins", "tie": "ties", "loss": "losses", "unparseable": "unparseable"}[outcome]
        setattr(self, attr, getattr(self, attr) + 1)
        self.inconsistent += int(inconsistent)

    def __iadd__(self, other: "Tally") -> "Tally":
        for name in ("wins", "ties", "losses", "unparseable", "inconsistent"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    @property
    def n(self) -> int:
        """Examples with an outcome (unparseable ones excluded)."""
        return self.wins + self.ties + self.losses


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n is 0 (nothing is known)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a result at least as lopsided as this) under Binomial(wins + losses, ½).

    Exact integer arithmetic (Python's int / int division rounds correctly), so any n works.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def summary_rows(tallies: dict[str, Tally], seeds: dict[str, int]) -> list[dict]:
    """One row per set (in the given order) and a pooled ``overall`` row; every rate is in [0, 1].

    Keys: set, seed (None overall), n, wins, ties, losses, unparseable, inconsistent, win_rate,
    win_rate_low, win_rate_high, score, p_value.
    """
    total = Tally()
    rows = []
    for name, tally in tallies.items():
        rows.append(_row(name, seeds.get(name), tally))
        total += tally
    rows.append(_row(OVERALL, None, total))
    return rows


def _row(name: str, seed: int | None, t: Tally) -> dict:
    low, high = wilson_interval(t.wins, t.n)
    rate = t.wins / t.n if t.n else math.nan
    score = (t.wins + t.ties / 2) / t.n if t.n else math.nan
    return {
        "set": name, "seed": seed, "n": t.n, "wins": t.wins, "ties": t.ties, "losses": t.losses,
        "unparseable": t.unparseable, "inconsistent": t.inconsistent, "win_rate": rate,
        "win_rate_low": low, "win_rate_high": high, "score": score, "p_value": sign_test_p(t.wins, t.losses),
    }


def _title(name: str) -> str:
    return "Overall" if name == OVERALL else PAPER_SETS.get(name, name)


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.1f}"


def to_markdown(rows: Sequence[dict], name_a: str, name_b: str, judge: str) -> str:
    """The table as GitHub Markdown, rates in percent, and a note on how they are defined."""
    header = ["Set", "seed", "n", f"{name_a} wins", "ties", f"{name_b} wins", "unparseable",
              "win rate [95% CI]", "(W + T/2)/n", "sign-test p"]
    lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        ci = f"{_pct(r['win_rate'])} [{_pct(r['win_rate_low'])}, {_pct(r['win_rate_high'])}]"
        cells = [_title(r["set"]), "" if r["seed"] is None else str(r["seed"]), str(r["n"]), str(r["wins"]),
                 str(r["ties"]), str(r["losses"]), str(r["unparseable"]), ci, _pct(r["score"]), f"{r['p_value']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"{name_a} (A) vs {name_b} (B), judged by {judge} in both presentation orders. "
            "A wins an example when it wins in both orders or wins one and ties the other; contradicting "
            "orders count as a tie; an example with an unparseable verdict is left out of n. Win rate = A wins / n "
            "(Wilson 95% CI), in percent; sign-test p: two-sided exact binomial test of A wins vs B wins.")
    return "\n".join(lines) + "\n\n" + note + "\n"


CSV_FIELDS = ("set", "seed", "n", "wins", "ties", "losses", "unparseable", "inconsistent",
              "win_rate", "win_rate_low", "win_rate_high", "score", "p_value")


def to_csv(rows: Sequence[dict]) -> str:
    """The rows as CSV with the columns of :data:`CSV_FIELDS`; rates as fractions (0–1)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])
                         for k in CSV_FIELDS})
    return buf.getvalue()


def plot(rows: Sequence[dict], path, name_a: str, name_b: str) -> None:
    """A horizontal stacked bar per set (and overall): A wins / ties / B wins as % of n; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(rows))  # the first set on top
    labels = [_title(r["set"]) for r in rows]
    parts = [(f"{name_a} wins", "wins", "tab:green"), ("tie", "ties", "tab:gray"), (f"{name_b} wins", "losses", "tab:red")]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for label, key, colour in parts:
        widths = [100 * r[key] / r["n"] if r["n"] else 0.0 for r in rows]
        ax.barh(labels, widths, left=left, color=colour, label=label)
        for y, (x0, w) in enumerate(zip(left, widths)):
            if w >= 5:  # label only segments wide enough to hold their number
                ax.text(x0 + w / 2, y, f"{w:.0f}", ha="center", va="center", color="white", fontsize="small")
        left = [a + w for a, w in zip(left, widths)]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of judged examples")
    ax.legend(fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    try:
        atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
