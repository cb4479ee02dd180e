"""Quality gates: small text rules a new model must pass, checked against its metrics.

Grammar (one gate per string; spaces around the operator are optional)::

    METRIC OP NUMBER                   exact_match >= 0.85, p95_latency_ms <= 500
    not_worse_than: champion [on METRIC[, METRIC...]] [tolerance NUMBER]

OP is one of ``>=``, ``<=``, ``>``, ``<``, ``==``. Gates are parsed (and their
metric names checked) when a config is validated, before any training starts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, cast

from modelyard.errors import ConfigError, GateFailed
from modelyard.evaluation._registry import METRICS, MetricSpec, metric_spec

Op = Literal[">=", "<=", ">", "<", "=="]

_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    ">=": lambda observed, bound: observed >= bound,
    "<=": lambda observed, bound: observed <= bound,
    ">": lambda observed, bound: observed > bound,
    "<": lambda observed, bound: observed < bound,
    "==": lambda observed, bound: math.isclose(observed, bound, rel_tol=1e-9, abs_tol=1e-12),
}
_TIE = 1e-9
"""Relative slack for ``>=``/``<=``: 0.9 - 0.02 is 0.8800000000000001 in floats, and 0.88 passes."""

_THRESHOLD = re.compile(r"(?P<metric>[A-Za-z_][\w.-]*)\s*(?P<op>[<>=!]+)\s*(?P<value>.*)")
_CHAMPION = re.compile(
    r"not_worse_than(?:\s*:\s*|\s+)(?P<reference>\S+)(?P<rest>.*)", re.IGNORECASE
)
_CLAUSE = re.compile(r"\s*(?P<word>on|tolerance)\s+(?P<arg>.+?)(?=\s+(?:on|tolerance)\s|$)")

GRAMMAR_HINT = (
    "Write METRIC OP NUMBER (OP one of >=, <=, >, <, ==), e.g. 'exact_match >= 0.85', or "
    "'not_worse_than: champion [on METRIC, ...] [tolerance NUMBER]'."
)


@dataclass(frozen=True)
class ThresholdGate:
    """``METRIC OP NUMBER``: the metric compared with a fixed number."""

    kind: ClassVar[Literal["threshold"]] = "threshold"
    text: str
    metric: str
    op: Op
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class ChampionGate:
    """``not_worse_than: champion``: no compared metric worse than the champion's.

    ``metrics`` empty means the default set (see ``evaluate_gates``);
    ``tolerance`` None means the ``tolerance`` given to ``evaluate_gates``.
    """

    kind: ClassVar[Literal["not_worse_than"]] = "not_worse_than"
    text: str
    metrics: tuple[str, ...] = ()
    tolerance: float | None = None

    @property
    def metric(self) -> None:
        """None: a champion gate names no single metric (``gated_metrics`` lists all needed)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self), "metrics": list(self.metrics)}


Gate = ThresholdGate | ChampionGate


def _bad(text: str, problem: str, hint: str = GRAMMAR_HINT) -> ConfigError:
    return ConfigError(f"gate {text!r}: {problem}", hint=hint, gate=text)


def _number(text: str, raw: str, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _bad(text, f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise _bad(text, f"{what} must be a finite number, not {raw!r}")
    return value


def _check_metric(text: str, name: str) -> str:
    """``name``'s canonical spelling (``latency_p95_ms`` → ``p95_latency_ms``), or a ConfigError."""
    return metric_spec(name, where=f"gate {text!r}").name


def _parse_threshold(text: str) -> ThresholdGate:
    match = _THRESHOLD.fullmatch(text)
    if match is None:
        raise _bad(text, "not a comparison or a champion rule")
    metric, op, raw = match["metric"], match["op"], match["value"].strip()
    if op not in _COMPARE:
        raise _bad(text, f"{op!r} is not an operator; use one of {', '.join(_COMPARE)}")
    if not raw:
        raise _bad(text, f"nothing after {op!r}; give the number to compare with")
    spec = metric_spec(metric, where=f"gate {text!r}")
    value = _number(text, raw, "the threshold")
    _check_bounds(text, spec, value)
    return ThresholdGate(text, spec.name, cast(Op, op), value)


def _check_bounds(text: str, spec: MetricSpec, value: float) -> None:
    """A threshold the metric can never reach (or always meets) is a typo, such as a
    percentage for a 0-1 share: refused before any training, not failed after it."""
    low, high = spec.bounds
    if low <= value <= high:
        return
    if math.isinf(high):
        problem = f"{spec.name} is never below {low:g}, so {value:g} cannot be its threshold"
    else:
        problem = f"{spec.name} is between {low:g} and {high:g}; {value:g} is outside it"
    hint = GRAMMAR_HINT
    if high == 1.0 and 1.0 < value <= 100.0:
        hint = f"Write a share, not a percentage: {value / 100:g} for {value:g}%."
    elif spec.name.startswith("judge."):
        hint = "A judge scores from 1 to 5: e.g. '" + spec.name + " >= 4.0'."
    raise _bad(text, problem, hint=hint)


def _parse_champion(text: str, reference: str, rest: str) -> ChampionGate:
    if reference.lower() != "champion":
        raise _bad(
            text,
            f"can only compare with 'champion', not {reference!r}",
            hint="Write 'not_worse_than: champion'.",
        )
    metrics: tuple[str, ...] = ()
    tolerance: float | None = None
    seen: set[str] = set()
    position = 0
    while position < len(rest.rstrip()):
        clause = _CLAUSE.match(rest, position)
        if clause is None:
            raise _bad(text, f"unexpected {rest[position:].strip()!r} after 'champion'")
        word, arg = clause["word"], clause["arg"].strip()
        if word in seen:
            raise _bad(text, f"{word!r} is given twice")
        seen.add(word)
        if word == "on":
            names = [name.strip() for name in arg.split(",")]
            if not all(names):
                raise _bad(text, f"'on {arg}' lists an empty metric name")
            metrics = tuple(dict.fromkeys(_check_metric(text, name) for name in names))
        else:
            tolerance = _number(text, arg, "the tolerance")
            if tolerance < 0:
                raise _bad(text, f"the tolerance must not be negative, not {arg}")
        position = clause.end()
    return ChampionGate(text, metrics, tolerance)


def parse_gate(text: str) -> Gate:
    """One gate from its text; a ``ConfigError`` naming the gate and the problem otherwise."""
    stripped = text.strip() if isinstance(text, str) else ""
    if not stripped:
        raise ConfigError(f"empty gate {text!r}", hint=GRAMMAR_HINT, gate=str(text))
    champion = _CHAMPION.fullmatch(stripped)
    if champion is not None:
        return _parse_champion(stripped, champion["reference"], champion["rest"])
    return _parse_threshold(stripped)


def _gate_text(item: str | Mapping[str, Any]) -> str:
    """A YAML ``- not_worse_than: champion`` arrives as a one-key mapping: rebuild the text."""
    if isinstance(item, Mapping):
        if len(item) != 1:
            raise ConfigError(
                f"gate {dict(item)!r} is a mapping with {len(item)} keys",
                hint="Write each gate as one string; " + GRAMMAR_HINT,
            )
        ((key, value),) = item.items()
        return f"{key}: {value}"
    return item


def parse_gates(items: Iterable[str | Mapping[str, Any]]) -> list[Gate]:
    """Every gate parsed, in order; the first bad one raises ``ConfigError`` naming it.

    An item may also be a one-key mapping, which is what YAML makes of an
    unquoted ``- not_worse_than: champion tolerance 0.02`` list entry.
    """
    return [parse_gate(_gate_text(item)) for item in items]


def gated_metrics(gates: Iterable[Gate]) -> list[str]:
    """Metrics the gates name explicitly: evaluate at least these so no gate lacks its value."""
    names: dict[str, None] = {}
    for gate in gates:
        if isinstance(gate, ThresholdGate):
            names[gate.metric] = None
        else:
            names.update(dict.fromkeys(gate.metrics))
    return list(names)


@dataclass(frozen=True)
class GateVerdict:
    """The outcome of one gate on one metric.

    ``threshold`` is the bound the metric had to meet (for a champion gate, the
    champion's value moved by the tolerance); ``margin`` is by how much it
    passed (positive) or failed (negative), in the metric's units.
    """

    gate: str
    metric: str | None
    observed: float | None
    threshold: float | None
    passed: bool
    margin: float | None
    reason: str
    champion: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy; non-finite numbers (an infinite perplexity) become ``None``."""
        data = asdict(self)
        for key in ("observed", "threshold", "margin", "champion"):
            value = data[key]
            if value is not None and not math.isfinite(value):
                data[key] = None
        return data


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _clean(value: float) -> float:
    """12 significant digits: 0.86 - 0.85 is stored as 0.01, not 0.010000000000000009."""
    return float(f"{value:.12g}")


def _missing(gate: str, metric: str) -> GateVerdict:
    reason = f"{metric} was not measured"
    return GateVerdict(gate, metric, None, None, False, None, reason)


def _check_threshold(gate: ThresholdGate, metrics: Mapping[str, float]) -> GateVerdict:
    observed = metrics.get(gate.metric)
    if observed is None:
        return _missing(gate.text, gate.metric)
    bound, op = gate.value, gate.op
    if op == "==":
        margin = -abs(observed - bound)
    else:
        margin = observed - bound if op in (">=", ">") else bound - observed
    passed = _COMPARE[op](observed, bound) or (
        op in (">=", "<=") and margin >= -_TIE * max(1.0, abs(bound))
    )
    verb = op if passed else f"is not {op}"
    reason = f"{gate.metric} {_fmt(observed)} {verb} {bound:g}"
    if math.isnan(observed):
        passed, reason = False, f"{gate.metric} is not a number"
    return GateVerdict(gate.text, gate.metric, observed, bound, passed, _clean(margin), reason)


def _champion_targets(
    gate: ChampionGate, gates: Sequence[Gate], metrics: Mapping[str, float]
) -> list[str]:
    """The explicit ``on`` list, else every quality metric or gated metric that was measured."""
    if gate.metrics:
        return list(gate.metrics)
    gated = set(gated_metrics(g for g in gates if isinstance(g, ThresholdGate)))
    return [
        name
        for name in metrics
        if name in METRICS and (METRICS[name].kind == "quality" or name in gated)
    ]


def _bound(spec: MetricSpec, champion: float, tolerance: float) -> float:
    slack = tolerance * abs(champion) if spec.tolerance_scale == "relative" else tolerance
    return champion - slack if spec.higher_is_better else champion + slack


def _compare_with_champion(
    gate: str, spec: MetricSpec, observed: float, champion: float, tolerance: float
) -> GateVerdict:
    bound = _clean(_bound(spec, champion, tolerance))
    margin = observed - bound if spec.higher_is_better else bound - observed
    passed = not math.isnan(margin) and margin >= -_TIE * max(1.0, abs(bound))
    op = ">=" if spec.higher_is_better else "<="
    scale = f"{tolerance:.0%} of it" if spec.tolerance_scale == "relative" else f"{tolerance:g}"
    reason = (
        f"{spec.name} {_fmt(observed)} vs champion {_fmt(champion)}: needs {op} {_fmt(bound)}"
        + (f" (tolerance {scale})" if tolerance else "")
    )
    return GateVerdict(gate, spec.name, observed, bound, passed, _clean(margin), reason, champion)


def _check_champion(
    gate: ChampionGate,
    gates: Sequence[Gate],
    metrics: Mapping[str, float],
    champion: Mapping[str, float] | None,
    tolerance: float,
) -> list[GateVerdict]:
    if champion is None:
        return [GateVerdict(gate.text, None, None, None, True, None, "no champion to compare with")]
    allowed = gate.tolerance if gate.tolerance is not None else tolerance
    verdicts: list[GateVerdict] = []
    for name in _champion_targets(gate, gates, metrics):
        observed, theirs = metrics.get(name), champion.get(name)
        if observed is None:
            verdicts.append(_missing(gate.text, name))
        elif theirs is None:
            reason = f"the champion has no {name} to compare with"
            verdicts.append(GateVerdict(gate.text, name, observed, None, True, None, reason))
        else:
            spec = metric_spec(name, where=f"gate {gate.text!r}")  # judge.NAME is no METRICS key
            verdicts.append(_compare_with_champion(gate.text, spec, observed, theirs, allowed))
    if not verdicts:
        reason = "no metric in common with the champion"
        verdicts.append(GateVerdict(gate.text, None, None, None, True, None, reason))
    return verdicts


def evaluate_gates(
    gates: Sequence[Gate],
    metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None = None,
    tolerance: float = 0.0,
) -> list[GateVerdict]:
    """One verdict per threshold gate, and one per compared metric of each champion gate.

    A metric a gate needs but ``metrics`` lacks fails the gate. For
    ``not_worse_than: champion``: with no champion (``champion_metrics`` None) it
    passes, reason "no champion to compare with"; otherwise it compares its
    ``on`` metrics, or by default every measured quality metric plus every metric
    a threshold gate names, skipping (passing) those the champion lacks. Better
    means higher for scores and lower for perplexity, latency and memory
    (``METRICS``). ``tolerance`` (the gate's own wins) is absolute points for 0-1
    scores and a share of the champion's value for the others.
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ConfigError(
            f"tolerance must be a finite number of at least 0, not {tolerance}",
            hint="Use e.g. 0.02.",
        )
    verdicts: list[GateVerdict] = []
    for gate in gates:
        if isinstance(gate, ThresholdGate):
            verdicts.append(_check_threshold(gate, metrics))
        else:
            verdicts.extend(_check_champion(gate, gates, metrics, champion_metrics, tolerance))
    return verdicts


def gates_passed(verdicts: Iterable[GateVerdict]) -> bool:
    """True when every verdict passed (and so for no gates at all)."""
    return all(verdict.passed for verdict in verdicts)


def require_gates(verdicts: Sequence[GateVerdict], **context: Any) -> None:
    """Raise ``GateFailed`` listing the failed gates, if any failed; ``context`` is attached."""
    failed = [verdict for verdict in verdicts if not verdict.passed]
    if not failed:
        return
    details = "; ".join(f"{v.gate} ({v.reason})" for v in failed)
    raise GateFailed(
        f"{len(failed)} of {len(verdicts)} gate checks failed: {details}",
        failed=[v.to_dict() for v in failed],
        **context,
    )
