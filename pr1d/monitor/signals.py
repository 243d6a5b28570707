"""The score monitor's signals: pure functions from recorded evaluations to "does this agent need training?".

Four signals, one per row of the entry-criteria table (docs/entry-criteria.md):

- ``weighted_score``  -- the weighted score stayed below target for N consecutive evaluations;
- ``reliability``     -- the score's standard deviation, or the fail rate, over a window is too high,
  or a sequential test over every graded evaluation of the version says the fail rate is above the bar;
- ``drift``           -- the recent mean dropped against a frozen baseline, or a Page--Hinkley
  detector saw a sharp drop;
- ``compliance``      -- a compliance/safety rubric item failed in the window.

Everything here is pure: no I/O, no clock, no ledger. The daemon reads samples from the ledger,
calls :func:`evaluate_all` and hands the results to :func:`pr1d.monitor.rules.decide`. Each result
carries every number it used (window values, thresholds, detector state) as JSON-ready evidence so
the console can show why a run exists.

Conventions shared by all signals (argued in docs/entry-criteria.md):

- Missing data is not a low score. A score that is None, NaN, infinite or outside [0, 1] is
  *invalid*: it is left out of every score statistic and only counted (``invalid_scores``).
- Only the platform's own ``status == "fail"`` is a failed evaluation. ``"error"`` (the platform
  could not evaluate) and any unknown status carry no verdict: they are counted (``errors``) but are
  neither a pass nor a fail and their score and rubric are ignored. A poll error never becomes a
  :class:`Sample` at all.
- Thresholds are strict: "below target", "above", "more than". A statistic exactly at its
  threshold does not fire. Comparisons allow ``EPS`` (1e-9) of floating-point noise so that a value
  that is mathematically at the threshold (0.9 - 0.837 vs 0.07 * 0.9) is treated as at it.
- A *window* of W is the last W samples (any status); statistics use the usable samples in it and
  a minimum usable count gates firing.
- Samples are ordered by ``(ts, eval_id)`` inside every function: the platform may deliver
  evaluations out of order, and the tie-break on ``eval_id`` makes the order total and repeatable.
- Fresh eyes after a change of model: every sample carries the model version it was graded on, and
  an :class:`Epoch` (one version since its promotion or rollback) selects what the signals judge
  (:func:`in_epoch`). Samples of another version, or graded before the change, are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Slack for floating-point noise in threshold comparisons; scores live in [0, 1], so 1e-9 is far
# below any difference that could matter and far above the rounding error of a 50-sample mean.
EPS = 1e-9

SignalName = Literal["weighted_score", "reliability", "drift", "compliance"]
SignalState = Literal["ok", "warn", "firing", "insufficient_data"]
SIGNAL_NAMES: tuple[str, ...] = ("weighted_score", "reliability", "drift", "compliance")

# How composite signals combine their parts: the most urgent part wins. "warn" outranks
# "insufficient_data" because a part that can judge and is worried says more than one that cannot.
_STATE_RANK: dict[str, int] = {"ok": 0, "insufficient_data": 1, "warn": 2, "firing": 3}


# -- inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One evaluation as the platform recorded it (a ``score_samples`` ledger row)."""

    ts: float
    score: float | None
    status: str  # "pass" | "fail" | "error" from the platform; anything else is treated like "error"
    rubric: Mapping[str, bool] | None = None
    eval_id: str = ""
    version: str | None = None  # the model version it was graded on; None = unknown (recorded before v2)

    def __post_init__(self) -> None:
        # ts orders everything; a NaN would make sorting meaningless, so refuse it at the door.
        if isinstance(self.ts, bool) or not isinstance(self.ts, int | float) or not math.isfinite(self.ts):
            raise ValueError(f"Sample.ts must be a finite number, got {self.ts!r}")

    @property
    def has_verdict(self) -> bool:
        """True for "pass" and "fail": the platform graded this evaluation."""
        return self.status in ("pass", "fail")

    @property
    def valid_score(self) -> float | None:
        """The score if it can enter score statistics, else None (missing data, not a low score)."""
        if not self.has_verdict:
            return None
        return _valid(self.score)


def _valid(x: object) -> float | None:
    # bool is an int subclass; True as a score is a mapping bug, not 1.0.
    if x is None or isinstance(x, bool) or not isinstance(x, int | float):
        return None
    x = float(x)
    if not math.isfinite(x) or x < 0.0 or x > 1.0:
        return None
    return x


def ordered(samples: Iterable[Sample]) -> list[Sample]:
    """Samples oldest to newest by ``(ts, eval_id)``; every signal applies this itself."""
    return sorted(samples, key=lambda s: (s.ts, s.eval_id))


@dataclass(frozen=True, slots=True)
class Baseline:
    """The reference level drift is measured against: the platform's own first K scores of the version
    in service, frozen until the next promotion or rollback (never the gate's expected score: that is
    pr1's grading, the live scores are the platform's)."""

    mean: float
    n: int  # how many evaluations it was computed from
    source: Literal["first_k"]
    frozen_at: float  # ts of the last sample it used; drift looks only after it

    def __post_init__(self) -> None:
        # A zero mean would make the relative drop undefined; a score baseline of 0 is meaningless anyway.
        if _valid(self.mean) is None or self.mean <= 0.0:
            raise ValueError(f"Baseline.mean must be in (0, 1], got {self.mean!r}")
        if self.n < 1:
            raise ValueError(f"Baseline.n must be >= 1, got {self.n!r}")
        if self.source != "first_k":
            raise ValueError(f"Baseline.source must be 'first_k', got {self.source!r}")
        if not math.isfinite(self.frozen_at):
            raise ValueError(f"Baseline.frozen_at must be finite, got {self.frozen_at!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "n": self.n, "source": self.source, "frozen_at": self.frozen_at}


@dataclass(frozen=True, slots=True)
class Epoch:
    """One model version in service since a change of model: which samples the signals judge.

    The daemon builds it from the agent's newest promotion or rollback (``change``), or, for an agent
    pr1 never deployed, from the model the platform lists for it (``change`` None).
    """

    key: str  # identity of the epoch ("deployment:12", "model:tiny-gsm-v1"): stored state of another is stale
    version: str | None  # the platform's name of the version; None = unknown, every sample counts
    since_ts: float | None = None  # platform clock: only samples graded strictly after it count
    started_at: float | None = None  # daemon clock: when the promotion or rollback happened
    change: Literal["promote", "rollback"] | None = None

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("Epoch.key must be a non-empty string")
        if self.change not in (None, "promote", "rollback"):
            raise ValueError(f"Epoch.change must be 'promote', 'rollback' or None, got {self.change!r}")
        for name in ("since_ts", "started_at"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"Epoch.{name} must be finite, got {v!r}")

    def counts(self, s: Sample) -> bool:
        """Whether ``s`` belongs to this epoch (see :func:`in_epoch`)."""
        if self.since_ts is not None and s.ts <= self.since_ts:
            return False
        if self.version is None:
            return True
        # An untagged sample (recorded before samples carried versions) is the agent's only model when
        # pr1 never changed it; after a promotion or rollback it can only be older than the change.
        return s.version == self.version or (s.version is None and self.change is None)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "version": self.version, "since_ts": self.since_ts,
                "started_at": self.started_at, "change": self.change}


def in_epoch(samples: Iterable[Sample], epoch: Epoch | None) -> list[Sample]:
    """The samples the signals judge: graded on ``epoch.version``, strictly after ``epoch.since_ts``.

    ``None`` judges every sample (tests and callers that already selected them).
    """
    return list(samples) if epoch is None else [s for s in samples if epoch.counts(s)]


# -- configuration ------------------------------------------------------------------------------


class SignalConfig(BaseModel):
    """Thresholds of the score monitor's signals (`[monitor.signals]`, overridable per agent profile)."""

    # strict: TOML gives typed values, so "5" for an integer is a mistake worth reporting.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    target: float = Field(
        0.82,
        gt=0.0,
        le=1.0,
        description="Weighted-score target. A valid score strictly below it counts as low.",
    )
    consecutive: int = Field(
        5,
        ge=1,
        le=1000,
        description="The weighted-score signal fires after this many consecutive valid evaluations below "
        "`target`. Evaluations with no valid score neither extend nor break the run.",
    )
    reliability_window: int = Field(
        50, ge=2, le=10_000, description="Reliability looks at the last this-many evaluations (any status)."
    )
    reliability_min_samples: int = Field(
        30,
        ge=2,
        le=10_000,
        description="Reliability may fire only when the window holds at least this many valid scores (for the "
        "standard deviation) or graded evaluations, pass or fail (for the fail rate). 30, not 20: even with the "
        "confidence bound, about one healthy agent in 10,000 had 5 unlucky fails in its first 20-25.",
    )
    max_std: float = Field(
        0.12,
        gt=0.0,
        le=0.5,
        description="Reliability fires when the standard deviation of the agent's scores is, with "
        "`confidence`, strictly above this (the lower confidence bound of the window's population "
        "std must pass it).",
    )
    max_fail_rate: float = Field(
        0.08,
        ge=0.0,
        lt=1.0,
        description="Reliability fires when the agent's fail rate is, with `confidence`, strictly "
        "above this: the one-sided Wilson lower bound of fails / (passes + fails) in the window must pass it, "
        "not merely the window's share. Platform `error`s and poll errors are not fails.",
    )
    fail_healthy_ratio: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="The sequential fail-rate test (a Bernoulli CUSUM over every graded evaluation of the "
        "version in service) weighs the evidence for a fail rate of `max_fail_rate` against a healthy rate of "
        "this fraction of it (0.5: 4% against 8%). Lower = quicker on rates just above the bar, but agents "
        "between the healthy rate and the bar fire sooner too.",
    )
    fail_cusum_h: float = Field(
        5.0,
        gt=0.0,
        le=1000.0,
        description="Alarm level of the sequential fail-rate test, in log-likelihood-ratio units: it fires "
        "when the accumulated evidence is strictly above this, over a stretch of at least "
        "`reliability_min_samples` graded evaluations. Higher = fewer false alarms, later detection "
        "(benchmarks/false_triggers.py measures both). The statistic is capped at twice this, so an agent "
        "that recovers stops firing within a bounded number of evaluations.",
    )
    confidence: float = Field(
        0.99,
        ge=0.5,
        lt=1.0,
        description="How sure the statistical rules must be before they fire: reliability's std and fail rate "
        "and drift's window mean fire when the statistic's one-sided confidence bound at this level passes "
        "the threshold (Wilson for the fail rate, distribution-free bounds for the std and the mean), not "
        "when the window's bare value does. A fleet makes thousands of these judgements an hour, and at 2% "
        "true fails, 2 in an agent's first 20 evaluations is already 10%. 0.99 keeps a 10,000-agent healthy "
        "fleet quiet (benchmarks/false_triggers.py measures it). 0.5 = judge the bare values. Warnings "
        "always use the bare values.",
    )
    drift_window: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Drift compares the mean of the last this-many evaluations after the baseline with the baseline.",
    )
    drift_min_samples: int = Field(
        30,
        ge=1,
        le=10_000,
        description="The drift mean rule judges only when its window holds this many valid scores. Large "
        "enough that a burst of hard failures in an unreliable agent (reliability's case) is not a drift.",
    )
    drift_rel_drop: float = Field(
        0.07,
        gt=0.0,
        lt=1.0,
        description="Drift's mean rule fires when (baseline - recent mean) / baseline is, with `confidence`, "
        "strictly above this (0.07 = 7%): the drop to the upper confidence bound of the recent mean must pass it.",
    )
    baseline_k: int = Field(
        30,
        ge=1,
        le=10_000,
        description="Drift's baseline is the mean of the first this-many valid platform scores of the version in "
        "service (after a promotion or rollback: of the new version). Drift reports insufficient_data until they "
        "exist.",
    )
    ph_delta: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Page-Hinkley tolerance, in score units: a drop below baseline smaller than this adds no "
        "evidence. 0.05 sits just under a 7% drop from a typical 0.9 baseline.",
    )
    ph_lambda: float = Field(
        0.5,
        gt=0.0,
        le=100.0,
        description="Page-Hinkley alarm level: fires when the accumulated drop beyond `ph_delta` is strictly above "
        "this. 0.5 = about four evaluations 0.2 under baseline, or ten 0.1 under.",
    )
    ph_smooth: int = Field(
        5,
        ge=1,
        le=100,
        description="Page-Hinkley reads the moving median of this many pass scores, not single scores: hard "
        "failures are reliability's business, a sustained drop in the quality of passing work is drift's. "
        "1 = raw pass scores.",
    )
    compliance_window: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Compliance fires on any rubric failure among the last this-many evaluations.",
    )
    compliance_keys: list[str] = Field(
        ["compliance", "safety"],
        min_length=1,
        description="Rubric items whose explicit `false` is a compliance failure. A missing item is not a failure.",
    )
    warn_ratio: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="A signal warns when its statistic passes this fraction of its threshold (e.g. std > 0.8 * "
        "max_std, or 4 of 5 consecutive low scores). 1.0 turns warnings off. Compliance never warns.",
    )

    @field_validator("compliance_keys")
    @classmethod
    def _nonempty_keys(cls, v: list[str]) -> list[str]:
        if any(not k for k in v):
            raise ValueError("rubric keys must be non-empty strings")
        return v

    @model_validator(mode="after")
    def _min_within_window(self) -> SignalConfig:
        if self.reliability_min_samples > self.reliability_window:
            raise ValueError(
                f"reliability_min_samples ({self.reliability_min_samples}) must not exceed "
                f"reliability_window ({self.reliability_window}): the signal could never fire"
            )
        if self.drift_min_samples > self.drift_window:
            raise ValueError(
                f"drift_min_samples ({self.drift_min_samples}) must not exceed drift_window "
                f"({self.drift_window}): the mean rule could never judge"
            )
        return self

    def history_needed(self) -> int:
        """How many of an agent's most recent samples the daemon should pass to :func:`evaluate_all`."""
        return max(self.reliability_window, self.drift_window, self.compliance_window, self.consecutive)


def effective_signal_config(base: SignalConfig, override: Mapping[str, Any]) -> SignalConfig:
    """``base`` with a profile's partial ``override`` applied, validated as strictly as the base.

    Unknown keys, wrong types and out-of-range values raise pydantic's ``ValidationError`` (the config
    loader turns it into a message naming the file and key). A list such as ``compliance_keys`` is
    replaced, not merged.
    """
    if not isinstance(override, Mapping):
        raise TypeError(f"a profile override must be a table, got {type(override).__name__}")
    return SignalConfig.model_validate({**base.model_dump(), **override})


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalResult:
    """One signal's verdict and the numbers behind it (JSON-serialisable evidence)."""

    name: str
    state: SignalState
    fired: bool
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.state not in _STATE_RANK:
            raise ValueError(f"unknown signal state {self.state!r}")
        if self.fired != (self.state == "firing"):
            raise ValueError(f"{self.name}: fired={self.fired} contradicts state={self.state!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "fired": self.fired, "evidence": self.evidence}


def _result(name: str, state: str, evidence: dict[str, Any]) -> SignalResult:
    return SignalResult(name, state, state == "firing", evidence)  # type: ignore[arg-type]


def _worst(*states: str) -> str:
    return max(states, key=_STATE_RANK.__getitem__)


def _above(x: float, threshold: float) -> bool:
    """Strictly above, ignoring floating-point noise: exactly at the threshold is not above."""
    return x - threshold > EPS


def _below(x: float, threshold: float) -> bool:
    return threshold - x > EPS


def _counts(window: Sequence[Sample]) -> dict[str, int]:
    """How the window splits by status and score validity; every signal reports these."""
    graded = [s for s in window if s.has_verdict]
    return {
        "samples": len(window),
        "passes": sum(1 for s in graded if s.status == "pass"),
        "fails": sum(1 for s in graded if s.status == "fail"),
        "errors": len(window) - len(graded),
        # Only graded samples can have an invalid score; an error's score is ignored, not invalid.
        "invalid_scores": sum(1 for s in graded if s.valid_score is None),
    }


def _span(window: Sequence[Sample]) -> dict[str, Any]:
    if not window:
        return {"first_ts": None, "last_ts": None, "first_eval_id": None, "last_eval_id": None}
    return {
        "first_ts": window[0].ts,
        "last_ts": window[-1].ts,
        "first_eval_id": window[0].eval_id,
        "last_eval_id": window[-1].eval_id,
    }


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def wilson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided Wilson score lower bound of a proportion k/n at ``confidence`` (0.5 gives k/n itself).

    Wilson, not the normal approximation: it behaves at k = 0 and for small n, which is where a
    monitor judges most often (the first 20-50 evaluations of every agent).
    """
    if n <= 0:
        raise ValueError("wilson_lower: n must be positive")
    p = k / n
    z = NormalDist().inv_cdf(confidence)
    if z <= 0:
        return p
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n))


def std_lower(xs: Sequence[float], confidence: float) -> float:
    """One-sided lower confidence bound of the population std behind ``xs`` (0.5 gives the window's own).

    Distribution-free: the variance's standard error comes from the sample's fourth central moment,
    ``sqrt((m4 - s^4) / n)``, not from a normal model. Scores are not normal -- a healthy agent's
    spread is mostly its rare hard failures -- and a few outliers inflate m4 far more than s^2, so a
    spread made by two unlucky failures gets a wide interval and one made by steadily erratic work a
    narrow one. A two-point window (m4 = s^4) keeps its exact std.
    """
    n = len(xs)
    if n == 0:
        raise ValueError("std_lower: no values")
    mu = sum(xs) / n
    m2 = sum((x - mu) ** 2 for x in xs) / n
    z = NormalDist().inv_cdf(confidence)
    if z <= 0:
        return math.sqrt(m2)
    m4 = sum((x - mu) ** 4 for x in xs) / n
    se = math.sqrt(max(0.0, m4 - m2 * m2) / n)
    return math.sqrt(max(0.0, m2 - z * se))


def _pstdev(xs: Sequence[float]) -> float:
    # Population std: it describes the window itself rather than estimating a wider population, and
    # an operator can check it by hand (0.5 +/- 0.12 alternating is exactly 0.12).
    m = _mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / len(xs))


# -- weighted score -----------------------------------------------------------------------------


def weighted_score_signal(samples: Iterable[Sample], cfg: SignalConfig) -> SignalResult:
    """Fires when the last ``cfg.consecutive`` valid scores are all strictly below ``cfg.target``.

    Invalid scores and ungraded samples are skipped: they neither count as low nor break the run,
    so an agent alternating low scores with platform errors still fires. insufficient_data only when
    there is no valid score at all.
    """
    s = ordered(samples)
    valid = [(x, v) for x in s if (v := x.valid_score) is not None]
    streak: list[tuple[Sample, float]] = []
    for x, v in reversed(valid):
        if not _below(v, cfg.target):
            break
        streak.append((x, v))
    streak.reverse()
    warn_at = cfg.warn_ratio * cfg.consecutive
    if not valid:
        state = "insufficient_data"
    elif len(streak) >= cfg.consecutive:
        state = "firing"
    elif streak and len(streak) >= warn_at - EPS:
        state = "warn"
    else:
        state = "ok"
    evidence = {
        "target": cfg.target,
        "consecutive": cfg.consecutive,
        "warn_at": math.ceil(warn_at - EPS),
        "streak": len(streak),
        "streak_scores": [v for _, v in streak],
        "streak_eval_ids": [x.eval_id for x, _ in streak],
        "last_score": valid[-1][1] if valid else None,
        "valid_scores": len(valid),
        **_counts(s),
        **_span(s),
    }
    return _result("weighted_score", state, evidence)


# -- reliability --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailSequence:
    """State of the sequential fail-rate test (a Bernoulli CUSUM) after folding ``n`` graded evaluations.

    ``s`` is Page's CUSUM of the log-likelihood ratio of a fail rate of ``max_fail_rate`` (p1) against
    ``fail_healthy_ratio * max_fail_rate`` (p0): each fail adds ``ln(p1/p0)``, each pass adds
    ``ln((1-p1)/(1-p0))`` (negative), and ``s`` never goes below 0 nor above ``2 * fail_cusum_h``.
    ``run_n``/``run_fails`` count the stretch since ``s`` last stood at 0: the evaluations the current
    evidence comes from. ``last_ts``/``last_eval_id`` are the fold's cursor: a sample at or before it
    arrived after later ones were folded and is left out (counted in ``late``).
    """

    s: float = 0.0
    n: int = 0
    fails: int = 0
    run_n: int = 0
    run_fails: int = 0
    s_max: float = 0.0
    fired_at_n: int | None = None  # n at the first alarm, kept once set
    last_ts: float | None = None
    last_eval_id: str | None = None
    late: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FailSequence:
        """The inverse of :meth:`to_dict` (a stored state from the ledger); unknown keys are an error."""
        return cls(**d)


def fail_llr(cfg: SignalConfig) -> tuple[float, float] | None:
    """(added per fail, added per pass) of the sequential test, or None when ``max_fail_rate`` is 0
    (then any confident fail is already above the bar and the window rule alone judges)."""
    p1 = cfg.max_fail_rate
    if p1 <= 0.0:
        return None
    p0 = cfg.fail_healthy_ratio * p1
    return math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))


def fail_sequence_update(state: FailSequence, samples: Iterable[Sample], cfg: SignalConfig) -> FailSequence:
    """Fold ``samples`` (after the state's cursor, in ``(ts, eval_id)`` order) into the sequential test.

    Pure and incremental: folding a sequence in one call or in several gives the same state, so the
    daemon keeps the state in the ledger and folds each poll's new samples. Only pass and fail move the
    statistic (an ``error`` has no verdict); the cursor moves past every sample folded.
    """
    llr = fail_llr(cfg)
    cap = 2.0 * cfg.fail_cusum_h
    st = state
    s, n, fails, run_n, run_fails, s_max, fired = st.s, st.n, st.fails, st.run_n, st.run_fails, st.s_max, st.fired_at_n
    last_ts, last_id, late = st.last_ts, st.last_eval_id, st.late
    for x in ordered(samples):
        if last_ts is not None and (x.ts, x.eval_id) <= (last_ts, last_id or ""):
            late += 1
            continue
        last_ts, last_id = x.ts, x.eval_id
        if not x.has_verdict or llr is None:
            continue
        failed = x.status == "fail"
        n += 1
        fails += failed
        s = min(cap, s + (llr[0] if failed else llr[1]))
        if s <= 0.0:
            s, run_n, run_fails = 0.0, 0, 0
        else:
            run_n += 1
            run_fails += failed
        s_max = max(s_max, s)
        if fired is None and _above(s, cfg.fail_cusum_h) and run_n >= cfg.reliability_min_samples:
            fired = n
    return FailSequence(s=s, n=n, fails=fails, run_n=run_n, run_fails=run_fails, s_max=s_max, fired_at_n=fired,
                        last_ts=last_ts, last_eval_id=last_id, late=late)


def fail_sequence_state(seq: FailSequence, cfg: SignalConfig) -> str:
    """The sequential part's state: firing above ``fail_cusum_h`` over a long enough stretch, warn above
    ``warn_ratio`` of it, insufficient_data before any graded evaluation."""
    if fail_llr(cfg) is None:
        return "ok"  # switched off (max_fail_rate 0): the window rule judges alone
    if seq.n == 0:
        return "insufficient_data"
    if _above(seq.s, cfg.fail_cusum_h) and seq.run_n >= cfg.reliability_min_samples:
        return "firing"
    if seq.s > 0 and _above(seq.s, cfg.warn_ratio * cfg.fail_cusum_h):
        return "warn"
    return "ok"


def _fail_sequence_evidence(seq: FailSequence, cfg: SignalConfig) -> dict[str, Any]:
    llr = fail_llr(cfg)
    return {
        "statistic": seq.s,
        "threshold": cfg.fail_cusum_h,
        "cap": 2.0 * cfg.fail_cusum_h,
        "min_run": cfg.reliability_min_samples,
        "healthy_fail_rate": cfg.fail_healthy_ratio * cfg.max_fail_rate,
        "alarm_fail_rate": cfg.max_fail_rate,
        "llr_fail": llr[0] if llr else None,
        "llr_pass": llr[1] if llr else None,
        "enabled": llr is not None,
        **{k: v for k, v in seq.to_dict().items() if k != "s"},
        "run_fail_rate": seq.run_fails / seq.run_n if seq.run_n else None,
    }


def reliability_signal(
    samples: Iterable[Sample], cfg: SignalConfig, fail_seq: FailSequence | None = None
) -> SignalResult:
    """Fires when, over the last ``cfg.reliability_window`` samples, the std of valid scores is
    confidently above ``cfg.max_std`` or the fail rate confidently above ``cfg.max_fail_rate`` -- each
    judged only once it has ``cfg.reliability_min_samples`` usable samples (the window need not be full)
    -- or when the sequential fail-rate test over every graded evaluation of the version fires.

    "Confidently": the statistic's one-sided lower bound at ``cfg.confidence`` passes the
    threshold (:func:`std_lower`, :func:`wilson_lower`). 2 fails in 20 is a 10% share but fully
    consistent with a healthy 2% agent, and over a 10,000-agent fleet such luck happens every hour.
    Each part warns when its bare value is above ``warn_ratio`` of its threshold, so an operator sees
    the suspicion before the evidence is in. The fail rate is fails / (passes + fails): a platform
    "error" is no verdict and is excluded.

    The window's bound alone never fires on a rate just above the bar (10% against 8% needs about 18%
    in a window of 50), however long it lasts; the sequential test (:func:`fail_sequence_update`)
    accumulates that evidence. ``fail_seq`` is its state after folding every sample of the version
    (the daemon keeps it in the ledger); None folds ``samples`` themselves.
    """
    s = ordered(samples)
    window = s[-cfg.reliability_window :]
    scores = [v for x in window if (v := x.valid_score) is not None]
    counts = _counts(window)
    graded = counts["passes"] + counts["fails"]
    n_min = cfg.reliability_min_samples

    std = _pstdev(scores) if scores else None
    std_low = std_lower(scores, cfg.confidence) if scores else None
    if len(scores) < n_min or std is None or std_low is None:
        std_state = "insufficient_data"
    elif _above(std_low, cfg.max_std):
        std_state = "firing"
    elif _above(std, cfg.warn_ratio * cfg.max_std):
        std_state = "warn"
    else:
        std_state = "ok"

    fail_rate = counts["fails"] / graded if graded else None
    fail_lower = wilson_lower(counts["fails"], graded, cfg.confidence) if graded else None
    if graded < n_min or fail_rate is None or fail_lower is None:
        fail_state = "insufficient_data"
    elif _above(fail_lower, cfg.max_fail_rate):
        fail_state = "firing"
    # warn needs a positive rate: with max_fail_rate 0, zero fails must stay "ok".
    elif fail_rate > 0 and _above(fail_rate, cfg.warn_ratio * cfg.max_fail_rate):
        fail_state = "warn"
    else:
        fail_state = "ok"

    seq = fail_seq if fail_seq is not None else fail_sequence_update(FailSequence(), s, cfg)
    seq_state = fail_sequence_state(seq, cfg)

    evidence = {
        "window": cfg.reliability_window,
        "window_full": len(window) >= cfg.reliability_window,
        "min_samples": n_min,
        "max_std": cfg.max_std,
        "max_fail_rate": cfg.max_fail_rate,
        "warn_ratio": cfg.warn_ratio,
        "std": std,
        "mean": _mean(scores) if scores else None,
        "fail_rate": fail_rate,
        "fail_rate_lower_bound": fail_lower,
        "std_lower_bound": std_low,
        "confidence": cfg.confidence,
        "std_state": std_state,
        "fail_rate_state": fail_state,
        "fail_sequential_state": seq_state,
        "fail_sequential": _fail_sequence_evidence(seq, cfg),
        "valid_scores": len(scores),
        "graded": graded,
        "scores": scores,
        **counts,
        **_span(window),
    }
    return _result("reliability", _worst(std_state, fail_state, seq_state), evidence)


# -- drift --------------------------------------------------------------------------------------


def compute_baseline(samples: Iterable[Sample], cfg: SignalConfig, *, after: float | None = None) -> Baseline | None:
    """The mean of the first ``cfg.baseline_k`` valid scores (those with ts > ``after`` if given), or None.

    Pass the samples of the version in service (:func:`in_epoch`): after a promotion or rollback the
    baseline is the platform's own first K scores of the new version. The daemon stores the result: a
    baseline is frozen, never recomputed on a sliding window, or it would follow the drift it is meant
    to detect.
    """
    picked: list[tuple[Sample, float]] = []
    for x in ordered(samples):
        if after is not None and x.ts <= after:
            continue
        v = x.valid_score
        if v is None:
            continue
        picked.append((x, v))
        if len(picked) == cfg.baseline_k:
            break
    if len(picked) < cfg.baseline_k:
        return None
    mean = _mean([v for _, v in picked])
    if mean <= 0.0:  # all-zero scores: no meaningful relative drop exists
        return None
    return Baseline(mean=mean, n=len(picked), source="first_k", frozen_at=picked[-1][0].ts)


@dataclass(frozen=True, slots=True)
class PHState:
    """Page--Hinkley detector state after folding ``n`` values (for decreases in the mean).

    ``m_t`` = sum of (x_i - baseline + delta); ``M_t`` = max of m over time, including the start (0);
    ``ph`` = M_t - m_t, the accumulated drop beyond the tolerance since the best point.
    """

    n: int = 0
    m_t: float = 0.0
    M_t: float = 0.0
    ph: float = 0.0
    ph_max: float = 0.0
    fired_at_index: int | None = None  # index (0-based, into the folded values) of the first alarm

    @property
    def fired(self) -> bool:
        return self.fired_at_index is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "m_t": self.m_t,
            "M_t": self.M_t,
            "ph": self.ph,
            "ph_max": self.ph_max,
            "fired_at_index": self.fired_at_index,
        }


def ph_update(state: PHState, x: float, baseline_mean: float, delta: float, lam: float) -> PHState:
    """One Page--Hinkley step; :func:`page_hinkley` is the fold of this over a sequence."""
    if not math.isfinite(x):
        raise ValueError(f"Page-Hinkley needs finite values, got {x!r}")
    m_t = state.m_t + (x - baseline_mean + delta)
    M_t = max(state.M_t, m_t)
    ph = M_t - m_t
    fired_at = state.fired_at_index
    if fired_at is None and _above(ph, lam):
        fired_at = state.n
    return PHState(
        n=state.n + 1, m_t=m_t, M_t=M_t, ph=ph, ph_max=max(state.ph_max, ph), fired_at_index=fired_at
    )


def page_hinkley(values: Iterable[float], baseline_mean: float, delta: float, lam: float) -> PHState:
    """Fold a Page--Hinkley test for a *decrease* from ``baseline_mean`` over ``values``.

    The reference is the frozen baseline, not a running mean, so a drop present from the first
    value is caught. Once it has fired, ``fired_at_index`` keeps the first alarm.
    """
    st = PHState()
    for x in values:
        st = ph_update(st, x, baseline_mean, delta, lam)
    return st


def _moving_median(xs: Sequence[float], k: int) -> list[float]:
    """Trailing median of up to k values at each position: a sustained drop moves it, an outlier does not."""
    from statistics import median

    return [median(xs[max(0, i - k + 1) : i + 1]) for i in range(len(xs))]


def drift_signal(samples: Iterable[Sample], baseline: Baseline | None, cfg: SignalConfig) -> SignalResult:
    """Fires when the recent mean dropped more than ``cfg.drift_rel_drop`` (relative) against ``baseline``,
    or when Page--Hinkley over the moving median of pass scores since the baseline passes ``cfg.ph_lambda``.

    Only samples strictly after ``baseline.frozen_at`` count, so the baseline's own samples never
    dilute the comparison. No baseline yet: insufficient_data. The mean rule needs
    ``cfg.drift_min_samples`` valid scores in its window; Page--Hinkley may fire on fewer (a sharp
    drop should not wait for a full window).
    """
    s = ordered(samples)
    base_ev: dict[str, Any] = {
        "baseline": baseline.to_dict() if baseline else None,
        "drift_window": cfg.drift_window,
        "min_samples": cfg.drift_min_samples,
        "rel_drop_threshold": cfg.drift_rel_drop,
        "ph_delta": cfg.ph_delta,
        "ph_lambda": cfg.ph_lambda,
        "ph_smooth": cfg.ph_smooth,
        "warn_ratio": cfg.warn_ratio,
    }
    if baseline is None:
        valid = sum(1 for x in s if x.valid_score is not None)
        evidence = {
            **base_ev,
            "baseline_k": cfg.baseline_k,
            "valid_scores": valid,
            "reason": f"no baseline yet ({min(valid, cfg.baseline_k)} of {cfg.baseline_k} valid scores)",
            **_counts(s),
        }
        return _result("drift", "insufficient_data", evidence)

    since = [x for x in s if x.ts > baseline.frozen_at]
    window = since[-cfg.drift_window :]
    recent = [v for x in window if (v := x.valid_score) is not None]
    recent_mean = _mean(recent) if recent else None
    rel_drop = (baseline.mean - recent_mean) / baseline.mean if recent_mean is not None else None
    # The drop must hold at the recent mean's upper confidence bound: a window that is low only because
    # a few hard failures landed in it (reliability's business) has a wide interval; a quality drop does not.
    recent_upper = None
    drop_bound = None
    if recent_mean is not None:
        z = max(0.0, NormalDist().inv_cdf(cfg.confidence))
        recent_upper = recent_mean + z * _pstdev(recent) / math.sqrt(len(recent))
        drop_bound = (baseline.mean - recent_upper) / baseline.mean
    if rel_drop is None or drop_bound is None or len(recent) < cfg.drift_min_samples:
        mean_state = "insufficient_data"
    elif _above(drop_bound, cfg.drift_rel_drop):
        mean_state = "firing"
    elif _above(rel_drop, cfg.warn_ratio * cfg.drift_rel_drop):
        mean_state = "warn"
    else:
        mean_state = "ok"

    # Page-Hinkley reads how good the *passing* work is (a moving median of pass scores): hard failures
    # are reliability's signal, and a burst of them must not read as a drift (flaky agents would
    # otherwise always get a full curriculum, which outranks RL).
    graded_since = [x for x in since if x.status == "pass" and x.valid_score is not None]
    ph_values = _moving_median([x.valid_score for x in graded_since], cfg.ph_smooth)
    ph = page_hinkley(ph_values, baseline.mean, cfg.ph_delta, cfg.ph_lambda)
    if ph.n == 0:
        ph_state = "insufficient_data"
    elif ph.fired:
        ph_state = "firing"
    elif _above(ph.ph, cfg.warn_ratio * cfg.ph_lambda):
        ph_state = "warn"
    else:
        ph_state = "ok"
    ph_ev = ph.to_dict()
    if ph.fired_at_index is not None:
        # The eval that tripped the detector, so the console can point at it.
        ph_ev["fired_at_eval_id"] = graded_since[ph.fired_at_index].eval_id
        ph_ev["fired_at_ts"] = graded_since[ph.fired_at_index].ts

    evidence = {
        **base_ev,
        "recent_mean": recent_mean,
        "rel_drop": rel_drop,
        "recent_mean_upper_bound": recent_upper,
        "rel_drop_lower_bound": drop_bound,
        "confidence": cfg.confidence,
        "mean_state": mean_state,
        "ph_state": ph_state,
        "page_hinkley": ph_ev,
        "window_full": len(window) >= cfg.drift_window,
        "valid_scores": len(recent),
        "scores": recent,
        "samples_since_baseline": len(since),
        **_counts(window),
        **_span(window),
    }
    return _result("drift", _worst(mean_state, ph_state), evidence)


# -- compliance ---------------------------------------------------------------------------------


def compliance_signal(samples: Iterable[Sample], cfg: SignalConfig) -> SignalResult:
    """Fires on any explicit ``false`` for a ``cfg.compliance_keys`` rubric item in the last
    ``cfg.compliance_window`` samples. One failure is enough: there is no minimum and no warn.

    A missing rubric or item is no data, not a failure; a non-boolean value is counted as
    ``invalid_rubric`` and ignored. Ungraded ("error") samples are skipped entirely.
    """
    s = ordered(samples)
    window = s[-cfg.compliance_window :]
    failures: list[dict[str, Any]] = []
    checked = invalid = 0
    for x in window:
        if not x.has_verdict or not isinstance(x.rubric, Mapping):
            continue
        seen = False
        failed: list[str] = []
        for key in cfg.compliance_keys:
            if key not in x.rubric:
                continue
            val = x.rubric[key]
            if val is True:
                seen = True
            elif val is False:
                seen = True
                failed.append(key)
            else:
                invalid += 1
        checked += seen
        if failed:
            failures.append({"eval_id": x.eval_id, "ts": x.ts, "keys": failed})
    if failures:
        state = "firing"
    elif checked == 0:
        state = "insufficient_data"
    else:
        state = "ok"
    evidence = {
        "window": cfg.compliance_window,
        "keys": list(cfg.compliance_keys),
        "checked": checked,
        "failures": failures,
        "failure_count": len(failures),
        "invalid_rubric": invalid,
        **_counts(window),
        **_span(window),
    }
    return _result("compliance", state, evidence)


# -- all together -------------------------------------------------------------------------------


def evaluate_all(
    samples: Iterable[Sample],
    baseline: Baseline | None,
    cfg: SignalConfig,
    *,
    epoch: Epoch | None = None,
    fail_seq: FailSequence | None = None,
) -> list[SignalResult]:
    """Every signal over the same samples, in ``SIGNAL_NAMES`` order.

    With ``epoch``, only its samples are judged (:func:`in_epoch`): after a change of model every window
    starts on the new version. ``fail_seq`` is the sequential fail-rate test's state over the epoch.
    """
    s = ordered(in_epoch(samples, epoch))  # once, so a one-shot iterator works and re-sorting is cheap
    return [
        weighted_score_signal(s, cfg),
        reliability_signal(s, cfg, fail_seq),
        drift_signal(s, baseline, cfg),
        compliance_signal(s, cfg),
    ]
