"""User-level statistics of the A/B report (docs/architecture.md §8, "Experiments").

Users, not impressions, are the independent units: one user's impressions share that user's
taste, so an impression-level interval is too narrow. Every estimate here takes one number
per user (numpy arrays of equal length, one row per exposed user of an arm):

- a ratio of sums (CTR = Σ clicks / Σ impressions) with the delta method: with per-user
  numerators c, denominators n, R = Σc / Σn and N users,
  Var(R) ≈ Σ (c_i − R n_i)² / (N (N − 1) n̄²);
- a mean over users (conversion, value per user) with Var = s² / N;
- the difference of two arms' estimates (independent groups): normal interval and a two-sided
  z-test p-value;
- a proportion of users with the Wilson score interval (the arm's own conversion interval);
- the sample-ratio-mismatch check: chi-square of users per arm against the declared weights.
"""

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
SRM_ALPHA = 0.001  # a sample-ratio mismatch is flagged below this p-value


def z_value(confidence: float = CONFIDENCE) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its standard error over `users` users.

    value is None without data (no users, or a zero denominator); se is None with fewer than
    two users (no spread to measure).
    """

    value: float | None
    se: float | None
    users: int

    def interval(self, low: float = -math.inf, high: float = math.inf) -> list[float] | None:
        """The normal interval at CONFIDENCE, clipped to [low, high]; None when the standard
        error is missing or 0 (every user alike: the method gives no width)."""
        if self.value is None or not self.se:
            return None
        half = z_value() * self.se
        return [max(low, self.value - half), min(high, self.value + half)]


def ratio_estimate(numerator: np.ndarray, denominator: np.ndarray) -> Estimate:
    """Σ numerator / Σ denominator over users, with the delta-method standard error."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    users = len(denominator)
    total = float(denominator.sum())
    if users == 0 or total == 0:
        return Estimate(None, None, users)
    ratio = float(numerator.sum()) / total
    if users < 2:
        return Estimate(ratio, None, users)
    residual = numerator - ratio * denominator  # sums to 0 by construction of `ratio`
    mean_denominator = total / users
    variance = float(residual @ residual) / (users * (users - 1) * mean_denominator**2)
    return Estimate(ratio, math.sqrt(variance), users)


def mean_estimate(values: np.ndarray) -> Estimate:
    """The mean over users with the standard error s / √N."""
    values = np.asarray(values, dtype=np.float64)
    users = len(values)
    if users == 0:
        return Estimate(None, None, 0)
    mean = float(values.mean())
    if users < 2:
        return Estimate(mean, None, users)
    return Estimate(mean, float(values.std(ddof=1)) / math.sqrt(users), users)


def wilson_interval(successes: int, trials: int) -> list[float] | None:
    """Wilson score interval of a proportion at CONFIDENCE (scipy), or None without trials."""
    from scipy.stats import binomtest

    if trials == 0 or not 0 <= successes <= trials:
        return None
    ci = binomtest(successes, trials).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return [float(ci.low), float(ci.high)]


def difference(arm: Estimate, control: Estimate) -> dict | None:
    """arm − control: {"diff", "relative", "ci", "p_value"}, or None when either side has no
    estimate. ci and p_value are None when a standard error is missing or both are 0;
    relative (diff / control) is None when the control's value is 0."""
    from scipy.stats import norm

    if arm.value is None or control.value is None:
        return None
    diff = arm.value - control.value
    relative = diff / control.value if control.value else None
    if arm.se is None or control.se is None or not math.hypot(arm.se, control.se):
        return {"diff": diff, "relative": relative, "ci": None, "p_value": None}
    se = math.hypot(arm.se, control.se)
    half = z_value() * se
    return {
        "diff": diff,
        "relative": relative,
        "ci": [diff - half, diff + half],
        "p_value": float(2 * norm.sf(abs(diff) / se)),
    }


def sample_ratio_check(users: dict[str, int], weights: dict[str, float]) -> dict:
    """Chi-square goodness of fit of users per arm against the declared weights.

    users, weights: by arm name (the declared arms; weights need not sum to 1). Returns
    {"users", "expected", "chi2", "p_value", "flagged", "alpha", "note"}; flagged when
    p < SRM_ALPHA. Not computed (p_value None) with fewer than two arms or no users; the note
    warns when an expected count is under 5 (the chi-square approximation is then rough).
    """
    from scipy.stats import chisquare

    names = list(weights)
    total = sum(users.get(name, 0) for name in names)
    out = {"users": {n: users.get(n, 0) for n in names}, "alpha": SRM_ALPHA, "flagged": False}
    out.update(expected=None, chi2=None, p_value=None, note=None)
    if len(names) < 2:
        out["note"] = "one arm: nothing to compare"
        return out
    if total == 0:
        out["note"] = "no users with impressions yet"
        return out
    share = np.array([weights[n] for n in names], dtype=np.float64)
    expected = share / share.sum() * total
    observed = np.array([out["users"][n] for n in names], dtype=np.float64)
    result = chisquare(observed, expected)
    out["expected"] = dict(zip(names, expected.tolist(), strict=True))
    out["chi2"], out["p_value"] = float(result.statistic), float(result.pvalue)
    out["flagged"] = out["p_value"] < SRM_ALPHA
    if out["flagged"]:
        out["note"] = (
            "users per arm do not match the weights: check assignment, logging and "
            "filters before reading any difference"
        )
    elif expected.min() < 5:
        out["note"] = "fewer than 5 users expected in an arm: the check is rough"
    return out
