"""The objective registry: one :class:`Objective` record per divergence, the one place it is defined.

A record holds the per-entry math (``terms``), optionally its hand-derived gradient for the
chunked kernel (``grad``), its parameters (default, valid range, command-line flag, help), named
diagnostics, the parameter values at which it *is* another objective (``reduces_to``), and the
name of a Triton kernel branch if it has one. Everything else reads the registry: the
command-line flags and their validation, the run identity used by resume, the chunked and Triton
kernels, the criterion's statistics, the benchmarks and the tests' case list.

Adding an objective (see README, "Adding an objective")::

    from todi.objectives import Objective, Param, register

    register(Objective(
        name="my_kl", summary="KL(p || q) with a twist",
        terms=lambda s, t, keep, *, gamma: t.exp() * (t - s) * gamma,
        params=(Param("gamma", 1.0, low=0.0, flag="--my-gamma", help="the twist"),),
    ))

``terms(s, t, keep, **params)`` gets the sanitized log-probabilities ``[..., V]`` (see
:mod:`todi.objectives.math`) and returns the per-entry terms whose sum over the vocabulary is the
divergence; it must be differentiable with respect to ``s`` (detach what should not be).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

from torch import Tensor

__all__ = ["Objective", "Param", "aliases", "all_objectives", "canonical_name", "get", "register", "unregister"]

Terms = Callable[..., Tensor]


@dataclass(frozen=True)
class Param:
    """A float parameter of an objective: keyword of ``divergence()`` and command-line flag.

    ``low``/``high`` bound the valid values (inclusive unless ``*_open``); NaN and ±inf are never valid.
    Parameter names may repeat across objectives (ToDi's and GKD's ``beta``); flags are what the
    command line sees, so objectives that share a flag (the skewed KLs' ``--skew-lambda``) share its
    value and must agree on its default and range.
    """

    name: str
    default: float
    low: float = -math.inf
    high: float = math.inf
    flag: str = ""
    help: str = ""
    low_open: bool = False
    high_open: bool = False

    @property
    def range_text(self) -> str:
        lo = "(" if self.low_open or self.low == -math.inf else "["
        hi = ")" if self.high_open or self.high == math.inf else "]"
        return f"{lo}{self.low:g}, {self.high:g}{hi}"

    def check(self, value, objective: str) -> float:
        """The value as a float, or a ValueError naming the parameter, its flag and its range."""
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{objective}: {self.name} must be a number, got {value!r}") from None
        below = x < self.low or (self.low_open and x == self.low)
        above = x > self.high or (self.high_open and x == self.high)
        if not math.isfinite(x) or below or above:
            flag = f" ({self.flag})" if self.flag else ""
            raise ValueError(f"{objective}: {self.name}{flag} must be finite and in {self.range_text}, got {value}")
        return x


@dataclass(frozen=True)
class Objective:
    """One divergence D(p, q) = Σ_i terms_i, p the teacher and q the student.

    name: the official (canonical) name; aliases: other accepted names (case-insensitive).
    terms: ``(s, t, keep, **params) -> [..., V]`` per-entry terms (``keep`` may be None: all count).
    params: its parameters, in the order a Triton branch receives them.
    grad: optional ``(s, t, q, keep, **params) -> (f, g)``: the terms and g = ∂f/∂s, for the chunked
        kernel (``q`` is the student's probabilities, read only); without it the chunked kernel
        takes g from autograd on ``terms``, one chunk at a time.
    diagnostics: name → ``(s, t, keep, **params) -> [..., V]``, per-entry contributions whose sum
        is a per-position statistic, logged as its mean over the KD positions (e.g. ToDi's α).
    reduces_to: optional ``params -> (name, params) | None``: where the objective *is* another one
        (e.g. a skewed KL at λ = 0 is the plain KL); every implementation then runs that one.
    triton: optional name of the Triton kernel branch, or ``params -> name | None``; without one
        the chunked kernel runs (``impl="auto"`` picks it, with a log line).
    check: optional cross-parameter validation ``params -> None`` (raises ValueError).
    cases: parameter values worth testing and benchmarking besides the defaults (limits, extremes);
        the test suite runs every implementation on each (``tests/_cases.py`` reads them).
    """

    name: str
    terms: Terms
    summary: str = ""
    aliases: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    grad: Callable | None = None
    diagnostics: Mapping[str, Terms] = field(default_factory=dict)
    reduces_to: Callable[[dict], tuple[str, dict] | None] | None = None
    triton: str | Callable[[dict], str | None] | None = None
    check: Callable[[dict], None] | None = None
    cases: tuple[Mapping[str, float], ...] = ()

    @property
    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: Mapping[str, float]) -> dict[str, float]:
        """All parameters with defaults filled in and every value checked."""
        known = {p.name: p for p in self.params}
        unknown = set(params) - set(known)
        if unknown:
            takes = ", ".join(known) or "no parameters"
            raise TypeError(f"divergence {self.name!r} got unexpected parameter(s) {sorted(unknown)}; it takes {takes}")
        full = {name: p.check(params.get(name, p.default), self.name) for name, p in known.items()}
        if self.check is not None:
            self.check(full)
        return full

    def triton_branch(self, params: Mapping[str, float]) -> str | None:
        return self.triton(dict(params)) if callable(self.triton) else self.triton


_REGISTRY: dict[str, Objective] = {}
_ALIASES: dict[str, str] = {}


def register(objective: Objective, *, replace: bool = False) -> Objective:
    """Add ``objective`` to the registry (``replace=True`` to redefine a name); returns it."""
    names = [objective.name, *objective.aliases]
    if not replace:
        taken = [n for n in names if n in _REGISTRY or n.lower() in _ALIASES]
        if taken:
            raise ValueError(f"objective name(s) {taken} already registered (pass replace=True to redefine)")
    shared = {p.flag: p for o in _REGISTRY.values() if o.name != objective.name for p in o.params if p.flag}
    for p in objective.params:
        if p.flag and not p.flag.startswith("--"):
            raise ValueError(f"parameter {p.name!r} of {objective.name!r}: flag {p.flag!r} must start with --")
        other = shared.get(p.flag)
        if other is not None and (other.default, other.range_text) != (p.default, p.range_text):
            raise ValueError(f"flag {p.flag} of {objective.name!r} is shared with another objective that gives it "
                             f"default {other.default} and range {other.range_text}")
    if replace:
        unregister(objective.name, missing_ok=True)
    _REGISTRY[objective.name] = objective
    for alias in objective.aliases:
        _ALIASES[alias.lower()] = objective.name
    return objective


def unregister(name: str, *, missing_ok: bool = False) -> None:
    """Remove an objective and its aliases (for tests and plug-ins that redefine one)."""
    if name not in _REGISTRY:
        if missing_ok:
            return
        raise KeyError(name)
    objective = _REGISTRY.pop(name)
    for alias in objective.aliases:
        _ALIASES.pop(alias.lower(), None)


def canonical_name(name: str) -> str:
    """Map an official name or an alias (case-insensitive for aliases) to the official name."""
    if isinstance(name, str):
        if name in _REGISTRY:
            return name
        if name.lower() in _ALIASES:
            return _ALIASES[name.lower()]
    valid = ", ".join(_REGISTRY) + " (aliases: " + ", ".join(_ALIASES) + ")"
    raise ValueError(f"unknown divergence {name!r}; valid names: {valid}")


def get(name: str) -> Objective:
    """The record of an objective, by official name or alias."""
    return _REGISTRY[canonical_name(name)]


def all_objectives() -> Iterator[Objective]:
    """Every registered objective, in registration order."""
    return iter(list(_REGISTRY.values()))


def aliases() -> dict[str, str]:
    return dict(_ALIASES)
