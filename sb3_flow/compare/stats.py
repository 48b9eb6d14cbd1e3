"""
The statistics of a comparison, with rliable (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice", https://arxiv.org/abs/2108.13264): interquartile mean (IQM) and mean with 95% stratified
bootstrap confidence intervals, probability of improvement, sample-efficiency curves and performance profiles.

Scores are arrays of shape (runs, tasks) as rliable expects; a comparison has one task, so (seeds, 1). Every bootstrap
is seeded afresh per method (or pair), so a method's interval does not change when another method is added, and a
report is reproducible. (rliable 1.2 draws its stratified resamples from numpy's global generator whatever
``random_state`` it is given, so the global generator is seeded for each call and the caller's state restored after.)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from sb3_flow.common.utils import check_positive_int
from sb3_flow.compare.config import COMPARE_INSTALL_HINT

# rliable's own default is 50,000 replications; 2,000 keeps a 7-method report (21 pairs of Mann-Whitney tests per
# replication) to seconds, and moves a 95% interval's ends by about 0.01 normalized score on 5 seeds.
DEFAULT_REPS = 2_000
DEFAULT_BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

Interval = tuple[float, float, float]  # (point estimate, lower, upper)


def import_rliable() -> tuple[Any, Any]:
    """
    rliable's ``library`` and ``metrics`` modules.

    :raises ImportError: naming the extra that installs rliable, when it is missing
    """
    try:
        from rliable import library, metrics
    except ImportError as error:
        raise ImportError(f"the comparison's statistics need rliable: {COMPARE_INSTALL_HINT}") from error
    return library, metrics


def normalize(returns: np.ndarray | list[float], base_return: float | None, expert_return: float | None) -> np.ndarray:
    """
    Scores between the base (0) and the expert (1): ``(R - R_base) / (R_expert - R_base)``, so that tasks with other
    reward scales can be aggregated; the raw returns when either reference is unknown or they are equal.

    :param returns: episode returns
    :param base_return: the base's return on the same starts
    :param expert_return: the expert's return on the same starts
    """
    returns = np.asarray(returns, dtype=np.float64)
    if not is_normalizable(base_return, expert_return):
        return returns
    return (returns - base_return) / (expert_return - base_return)


def is_normalizable(base_return: float | None, expert_return: float | None) -> bool:
    """True when both references are known and differ."""
    return base_return is not None and expert_return is not None and expert_return != base_return


# A base-to-expert scale needs the expert's return to differ from the base's by more than this many standard errors of
# their paired per-start difference: closer references would blow evaluation noise up into large scores.
REFERENCE_GAP_STANDARD_ERRORS = 2.0


def reference_gap(base_returns: list[float], expert_returns: list[float]) -> tuple[float, float]:
    """
    The expert's return minus the base's on the same starts, and the standard error of that paired mean difference.

    :param base_returns: the base's return on each start
    :param expert_returns: the expert's return on the same starts, in the same order
    """
    differences = np.asarray(expert_returns, dtype=np.float64) - np.asarray(base_returns, dtype=np.float64)
    if differences.size < 2:
        return float(differences.mean()), 0.0
    return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(differences.size))


def normalization_references(references: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """
    The base's and the expert's returns to normalize scores with, or ``(None, None)`` for raw returns, and a sentence
    saying which and why. Where both were evaluated on every start, the two must be apart by more than
    :data:`REFERENCE_GAP_STANDARD_ERRORS` standard errors of their paired difference (an expert no better than the
    base would turn every score into noise divided by almost nothing).

    :param references: ``base_return``, ``expert_return`` and, where evaluated, ``base_returns`` / ``expert_returns``
    """
    base, expert = references.get("base_return"), references.get("expert_return")
    if not is_normalizable(base, expert):
        return None, None, "Scores are raw returns (normalizing needs both the base's and the expert's return)."
    per_start = references.get("base_returns"), references.get("expert_returns")
    if per_start[0] and per_start[1] and len(per_start[0]) == len(per_start[1]):
        gap, standard_error = reference_gap(*per_start)
        if abs(gap) <= REFERENCE_GAP_STANDARD_ERRORS * standard_error:
            why = (
                f"Scores are raw returns: on these starts the expert's return differs from the base's by {gap:.1f} "
                f"(standard error {standard_error:.1f}, paired), within {REFERENCE_GAP_STANDARD_ERRORS:g} standard "
                "errors, so a base-to-expert scale would measure noise."
            )
            return None, None, why
    return base, expert, "Scores are normalized: (R - R_base) / (R_expert - R_base), 0 = the base, 1 = the expert."


@contextlib.contextmanager
def seeded_bootstrap(seed: int) -> Iterator[np.random.RandomState]:
    """
    Seed rliable's bootstrap: numpy's global generator (which rliable's resampling draws from) for the block, restored
    afterwards, and a ``RandomState(seed)`` for its ``random_state`` argument.

    :param seed: the bootstrap's seed
    """
    seed = check_positive_int(seed, "seed", minimum=0)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            # rliable hands arch 7 a RandomState, which arch accepts with a FutureWarning.
            warnings.simplefilter("ignore", FutureWarning)
            yield np.random.RandomState(seed)
    finally:
        np.random.set_state(state)


def _interval_estimates(
    scores: dict[str, Any], func: Any, reps: int, seed: int, **kwargs: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's ``get_interval_estimates``, one method at a time, each seeded afresh (:func:`seeded_bootstrap`)."""
    library, _ = import_rliable()
    reps = check_positive_int(reps, "reps")
    points, intervals = {}, {}
    for name, values in scores.items():
        with seeded_bootstrap(seed) as random_state:
            point, interval = library.get_interval_estimates(
                {name: values}, func, reps=reps, confidence_interval_size=CONFIDENCE, random_state=random_state, **kwargs
            )
        points[name], intervals[name] = point[name], interval[name]
    return points, intervals


def iqm_and_mean(
    scores: dict[str, np.ndarray], reps: int = DEFAULT_REPS, seed: int = DEFAULT_BOOTSTRAP_SEED
) -> dict[str, dict[str, Interval]]:
    """
    The IQM (the mean of the middle 50% of runs: robust to an outlier seed, less noisy than the median) and the mean of
    each method's scores, with 95% stratified bootstrap confidence intervals.

    :param scores: per method, an array (runs, tasks)
    :param reps: bootstrap replications
    :param seed: the bootstrap's seed
    :return: per method, ``{"iqm": (point, lower, upper), "mean": (...)}``
    """
    _, metrics = import_rliable()

    def aggregates(values: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(values), metrics.aggregate_mean(values)])

    points, intervals = _interval_estimates(scores, aggregates, reps, seed)
    return {
        name: {
            metric: (float(points[name][index]), float(intervals[name][0, index]), float(intervals[name][1, index]))
            for index, metric in enumerate(("iqm", "mean"))
        }
        for name in scores
    }


def probability_of_improvement(
    scores: dict[str, np.ndarray],
    pairs: list[tuple[str, str]],
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_BOOTSTRAP_SEED,
) -> dict[tuple[str, str], Interval]:
    """
    P(X > Y): the probability that a run of X scores higher than a run of Y (the Mann-Whitney U statistic over all
    pairs of runs; 0.5 is no difference), with a 95% interval from bootstrapping X's and Y's runs independently.

    :param scores: per method, an array (runs, tasks)
    :param pairs: the (X, Y) pairs
    :param reps: bootstrap replications
    :param seed: the bootstrap's seed
    :return: per pair, (point, lower, upper)
    """
    _, metrics = import_rliable()
    pair_scores = {f"{x},{y}": [scores[x], scores[y]] for x, y in pairs}
    points, intervals = _interval_estimates(pair_scores, metrics.probability_of_improvement, reps, seed)
    result = {}
    for x, y in pairs:
        lower, upper = np.ravel(intervals[f"{x},{y}"])  # arch returns the interval as (2, 1)
        result[(x, y)] = (float(points[f"{x},{y}"]), float(lower), float(upper))
    return result


def iqm_curves(
    curves: dict[str, np.ndarray], reps: int = DEFAULT_REPS, seed: int = DEFAULT_BOOTSTRAP_SEED
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """
    Sample-efficiency curves: the IQM over runs at every evaluation point, with 95% stratified bootstrap bands.

    :param curves: per method, an array (runs, tasks, points)
    :param reps: bootstrap replications
    :param seed: the bootstrap's seed
    :return: per method, (IQM, lower, upper), each of shape (points,)
    """
    _, metrics = import_rliable()

    def iqm_per_point(values: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(values[..., point]) for point in range(values.shape[-1])])

    points, intervals = _interval_estimates(curves, iqm_per_point, reps, seed)
    return {name: (points[name], intervals[name][0], intervals[name][1]) for name in curves}


def performance_profile(
    scores: dict[str, np.ndarray], taus: np.ndarray, reps: int = DEFAULT_REPS, seed: int = DEFAULT_BOOTSTRAP_SEED
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """
    The fraction of runs scoring above each threshold tau (the run-score distribution), with 95% bands: rliable's
    ``create_performance_profile``, one method at a time, each seeded afresh (:func:`seeded_bootstrap`).

    :param scores: per method, an array (runs, tasks)
    :param taus: the thresholds
    :param reps: bootstrap replications
    :param seed: the bootstrap's seed
    :return: (profiles, bands): per method, an array (len(taus),) and an array (2, len(taus))
    """
    library, _ = import_rliable()
    reps = check_positive_int(reps, "reps")
    taus = np.asarray(taus, dtype=np.float64)
    profiles, bands = {}, {}
    for name, values in scores.items():
        with seeded_bootstrap(seed):
            profile, band = library.create_performance_profile(
                {name: values}, taus, reps=reps, confidence_interval_size=CONFIDENCE
            )
        profiles[name], bands[name] = profile[name], band[name]
    return profiles, bands


def profile_thresholds(scores: dict[str, np.ndarray], normalized: bool, n: int = 101) -> np.ndarray:
    """Thresholds spanning every score (and [0, 1], base to expert, for normalized scores)."""
    values = np.concatenate([np.ravel(array) for array in scores.values()])
    low, high = float(values.min()), float(values.max())
    if normalized:
        low, high = min(low, 0.0), max(high, 1.0)
    if high == low:
        high = low + 1.0
    return np.linspace(low, high, n)
