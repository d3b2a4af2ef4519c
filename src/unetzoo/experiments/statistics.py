"""Statistics of segmentation scores, one set for ``unetzoo compare`` (the leaderboard) and ``unetzoo report``.

A table of scores is a float array ``values`` of shape (seeds, cases, classes) -- a (cases, classes) array is one
seed -- with NaN where a case has no value for a class (the class absent from reference and prediction: skipped,
nnU-Net's rule). ``subjects`` names the subject of each case. The end-diastole and end-systole volumes of one ACDC
patient, or the frames of one 3D+t case, are one subject: the bootstrap resamples subjects with all their cases and
the permutation test swaps whole subjects, never cases as if they were independent (the cluster bootstrap, Field and
Welsh 2007, J. R. Stat. Soc. B 69:369). Several training seeds of a model add their seed-to-seed spread.

* :func:`figure`, :func:`score`: the model's figure, the mean over classes of each class's mean over cases
  (nnU-Net's foreground mean); :func:`score` pools every (seed, case) with equal weight;
* :func:`cluster_interval`: the confidence interval of :func:`score`, BCa bootstrap over subjects (Efron 1987,
  J. Am. Stat. Assoc. 82:171; SciPy's ``bootstrap``) with one seed, percentile bootstrap over seeds and subjects with
  several;
* :func:`paired_difference`: two models on the same cases: the difference of their scores, its interval, a
  subject-level paired permutation test (SciPy's ``permutation_test``) and a non-inferiority decision with a margin;
* :func:`holm` (Holm 1979, Scand. J. Stat. 6:65), :func:`kendall_tau` and :func:`swapped_pairs` (do two rankings
  agree), :func:`subjects_of` (the subject of each case key).

Every resampling starts from ``numpy.random.default_rng(0)``: the same tables give the same numbers.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np

from unetzoo.data import splits

BOOTSTRAP = 2000  # bootstrap resamples
PERMUTATIONS = 9999  # random permutations of the paired test; exact where 2**subjects is not more
ALPHA = 0.05
TWO_LEVEL = "percentile over seeds and subjects"  # the method of an interval with several seeds
_BATCH = 1000  # permutations evaluated at once: bounds memory on large tables
_FRAME = re.compile(r"^(.*) frame \d+$")  # the case key of one frame of a 3D+t case (leaderboard.case_table)


def _seeds(values) -> np.ndarray:
    """``values`` as a float array (seeds, cases, classes); a (cases, classes) array is one seed."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise ValueError(f"expected values of shape (seeds, cases, classes) or (cases, classes), got {values.shape}")
    return values


def _from_sums(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(..., classes) sums and counts of values -> (...) the mean over classes of each class's mean; a class without
    a value is skipped, NaN without any (no NumPy warning)."""
    has = counts > 0
    means = np.divide(sums, counts, out=np.zeros(np.shape(sums)), where=has)
    n = has.sum(axis=-1)
    return np.divide(means.sum(axis=-1), n, out=np.full(np.shape(n), np.nan), where=n > 0)


def figure(values) -> np.ndarray:
    """(..., cases, classes) -> (...): the mean over classes of each class's mean over the cases (nnU-Net's
    foreground mean); NaN values are skipped, a class without a value is left out of the mean, NaN without any."""
    values = np.asarray(values, dtype=float)
    present = ~np.isnan(values)
    return _from_sums(np.where(present, values, 0.0).sum(axis=-2), present.sum(axis=-2))


def score(values) -> float:
    """The figure of a model over its seeds: the seeds stacked as extra cases, ``figure(values.reshape(-1,
    classes))``, so that every (seed, case) has equal weight (with one value per case and class: the mean over seeds
    of the per-seed figures). NaN without any value."""
    values = _seeds(values)
    seeds, cases, classes = values.shape
    return float(figure(values.reshape(seeds * cases, classes)))


def _subject_sums(values: np.ndarray, index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the values of each subject's cases, (seeds, subjects, classes) each."""
    present = ~np.isnan(values)
    member = (index[None, :] == np.arange(n)[:, None]).astype(float)  # (subjects, cases)
    return member @ np.where(present, values, 0.0), member @ present.astype(float)


def _subject_index(subjects: Sequence[str], cases: int) -> tuple[np.ndarray, int]:
    if len(subjects) != cases:
        raise ValueError(f"{len(subjects)} subject ids for {cases} cases")
    ids, index = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    return index.ravel(), len(ids)


def _resampled(sums: np.ndarray, counts: np.ndarray):
    """The score of drawn subjects given their (subjects, classes) sums and counts: a vectorised SciPy statistic of
    subject indices along the last axis (drawn with multiplicity)."""

    def statistic(index, axis=-1):
        return _from_sums(sums[index].sum(axis=-2), counts[index].sum(axis=-2))

    return statistic


def _none(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """(resamples, k) indices drawn from range(n) -> (resamples, n) how often each was drawn."""
    offsets = np.arange(len(draws))[:, None] * n
    return np.bincount((draws + offsets).ravel(), minlength=len(draws) * n).reshape(len(draws), n).astype(float)


def _subject_bootstrap(
    statistic, n: int, levels: Sequence[float]
) -> tuple[list[tuple[float | None, float | None]], str]:
    """SciPy's BCa bootstrap intervals at ``levels`` of ``statistic`` (vectorised, of subject indices along the last
    axis) over ``n`` subjects, and the method; the percentile intervals of the same resamples where BCa cannot be
    computed at every level (fewer than 3 subjects, a degenerate jackknife or bootstrap distribution: SciPy warns or
    returns NaN)."""
    from scipy import stats

    def run(method: str, level: float) -> tuple[float | None, float | None] | None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ci = stats.bootstrap(
                (np.arange(n),),
                statistic,
                vectorized=True,
                n_resamples=BOOTSTRAP,
                confidence_level=level,
                method=method,
                random_state=np.random.default_rng(0),
            ).confidence_interval
        lo, hi = _none(ci.low), _none(ci.high)
        failed = lo is None or hi is None or any(issubclass(w.category, RuntimeWarning) for w in caught)
        return None if failed and method == "BCa" else (lo, hi)

    if n >= 3:
        intervals = [run("BCa", level) for level in levels]
        if None not in intervals:
            return intervals, "BCa"
    return [run("percentile", level) for level in levels], "percentile"


def _percentiles(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    samples = samples[np.isfinite(samples)]
    if not samples.size:
        return None, None
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _two_level(models: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """``BOOTSTRAP`` resamples of the score of each model given as its (seeds, subjects, classes) sums and counts,
    (models, resamples): each resample draws the subjects with replacement (the same for every model), then each
    model's seeds with replacement; one ``default_rng(0)``."""
    rng = np.random.default_rng(0)
    subjects = _counts(rng.integers(0, n, (BOOTSTRAP, n)), n)
    samples = []
    for sums, counts in models:
        seeds = _counts(rng.integers(0, len(sums), (BOOTSTRAP, len(sums))), len(sums))
        total, number = (np.einsum("br,bs,rsk->bk", seeds, subjects, x) for x in (sums, counts))
        samples.append(_from_sums(total, number))
    return np.array(samples)


def cluster_interval(values, subjects: Sequence[str], level: float = 0.95) -> tuple[float | None, float | None, str]:
    """Confidence interval ``(lo, hi, method)`` of :func:`score` of ``values`` (seeds, cases, classes) whose cases
    belong to ``subjects`` (one id per case).

    One seed: SciPy's bootstrap over subjects (``BOOTSTRAP`` resamples of the subjects with replacement, each bringing
    all its cases, ``default_rng(0)``), method "BCa"; "percentile" (the same resamples) where BCa cannot be computed:
    fewer than 3 subjects, or a degenerate jackknife or bootstrap distribution. Several seeds: a two-level bootstrap,
    each resample drawing the seeds with replacement and the subjects with replacement (``default_rng(0)``), and the
    percentile interval, method "percentile over seeds and subjects": BCa's acceleration comes from a jackknife over
    one factor of independent units, which two crossed factors (seeds, subjects) do not have. With 2 or 3 seeds the
    seed-to-seed spread is estimated coarsely (a bootstrap of a few seeds underestimates it). The subjects are taken
    in the sorted order of their ids, so the order of the cases does not change the resamples. ``(None, None,
    "n/a")`` without any value."""
    values = _seeds(values)
    index, n = _subject_index(subjects, values.shape[1])
    if np.isnan(score(values)):
        return None, None, "n/a"
    sums, counts = _subject_sums(values, index, n)
    if len(values) == 1:
        [(lo, hi)], method = _subject_bootstrap(_resampled(sums[0], counts[0]), n, [level])
        return lo, hi, method
    return (*_percentiles(_two_level([(sums, counts)], n)[0], level), TWO_LEVEL)


def paired_difference(a, b, subjects: Sequence[str], level: float = 0.95, margin: float = 0.0) -> dict:
    """Two models on the same cases (rows aligned, ``a`` (seeds_a, cases, classes) and ``b`` (seeds_b, cases,
    classes); seed counts may differ): the difference ``d = score(a) - score(b)`` and how sure it is.

    * ``ci``, ``ci_method``: two-sided ``level`` interval of d by the bootstrap of :func:`cluster_interval`, subjects
      resampled jointly for a and b (BCa over subjects when both have one seed; else each model's seeds resampled
      independently as well, percentile);
    * ``p``: two-sided paired permutation test of d at the subject level (SciPy's ``permutation_test``,
      ``permutation_type='samples'``, twice the smaller one-sided p): a permutation swaps a's and b's values of all the cases and seeds of a subject
      (their per-subject sums over cases, averaged over seeds, so that the seed counts may differ); exact when
      2**subjects <= ``PERMUTATIONS``, else ``PERMUTATIONS`` random ones (``default_rng(0)``);
    * ``lower_one_sided``: the one-sided ``level`` lower bound of d, the lower end of the two-sided ``2 level - 1``
      interval (90 % for 0.95) of the same bootstrap; ``within_margin``: ``lower_one_sided >= -margin``, so
      ``paired_difference(model, best, ..., margin=m)`` says whether the model is not worse than the best by more than
      m (non-inferiority);
    * ``subjects``, ``cases``: how many of each.

    Without a value for a or b: difference, ci, p and lower_one_sided None, within_margin False."""
    from scipy import stats

    if not 0.5 < level < 1:
        raise ValueError(f"level must lie in (0.5, 1) (its one-sided bound is the two-sided 2 level - 1), got {level}")
    a, b = _seeds(a), _seeds(b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"a (seeds, cases, classes) {a.shape} and b {b.shape} differ in cases or classes")
    index, n = _subject_index(subjects, a.shape[1])
    difference = score(a) - score(b)
    counted = {"margin": margin, "subjects": n, "cases": a.shape[1]}
    if np.isnan(difference):
        none = {"difference": None, "ci": [None, None], "ci_method": "n/a", "p": None, "lower_one_sided": None}
        return none | counted | {"within_margin": False}
    (sa, ca), (sb, cb) = _subject_sums(a, index, n), _subject_sums(b, index, n)
    levels = [level, 2 * level - 1]
    if len(a) == 1 and len(b) == 1:
        score_a, score_b = _resampled(sa[0], ca[0]), _resampled(sb[0], cb[0])
        [(lo, hi), (lower, _)], method = _subject_bootstrap(
            lambda index, axis=-1: score_a(index) - score_b(index), n, levels
        )
    else:
        score_a, score_b = _two_level([(sa, ca), (sb, cb)], n)
        [(lo, hi), (lower, _)], method = [_percentiles(score_a - score_b, x) for x in levels], TWO_LEVEL
    # per subject, each model's sums and counts averaged over its seeds; rows 0..n-1 of a, n..2n-1 of b
    rows = _resampled(np.concatenate([sa.mean(0), sb.mean(0)]), np.concatenate([ca.mean(0), cb.mean(0)]))
    p = stats.permutation_test(
        (np.arange(n), np.arange(n, 2 * n)),
        lambda x, y, axis=-1: rows(x) - rows(y),
        permutation_type="samples",
        vectorized=True,
        n_resamples=PERMUTATIONS,
        batch=_BATCH,
        random_state=np.random.default_rng(0),
    ).pvalue
    return {
        "difference": float(difference),
        "ci": [lo, hi],
        "ci_method": method,
        "p": _none(p),
        "lower_one_sided": lower,
        "within_margin": lower is not None and lower >= -margin,
    } | counted


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None): the i-th smallest of m (i from 0) times
    (m - i), made monotone, at most 1. (SciPy's ``false_discovery_control`` is Benjamini-Hochberg, another error
    rate.)"""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted, running = list(pvalues), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[i] = running
    return adjusted


def _finite_pairs(scores_a, scores_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.array([np.nan if v is None else v for v in scores_a], dtype=float)
    b = np.array([np.nan if v is None else v for v in scores_b], dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} scores against {len(b)}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a, b, keep


def kendall_tau(scores_a, scores_b) -> tuple[float | None, float | None]:
    """Kendall's tau-b between two scorings of the same models, and its two-sided p (SciPy's ``kendalltau``);
    models without both scores (None or NaN) left out; (None, None) where undefined (fewer than two models, or
    one scoring constant)."""
    from scipy import stats

    a, b, keep = _finite_pairs(scores_a, scores_b)
    if keep.sum() < 2 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return None, None
    tau, p = stats.kendalltau(a[keep], b[keep])
    return _none(tau), _none(p)


def swapped_pairs(names: Sequence[str], scores_a, scores_b) -> list[tuple[str, str]]:
    """The pairs of models that the two scorings order oppositely, ``(names[i], names[j])`` with i < j; a tie in
    either scoring, or a missing score (None, NaN), is no swap."""
    a, b, keep = _finite_pairs(scores_a, scores_b)
    return [
        (names[i], names[j])
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if keep[i] and keep[j] and (a[i] - a[j]) * (b[i] - b[j]) < 0
    ]


def subjects_of(case_keys: Sequence[str], group_by: str = "", require_match: bool = True) -> list[str]:
    """The subject id of each case key: a 3D+t frame's key "CASE frame N" belongs to CASE, and a case to its subject
    by ``group_by`` (:func:`unetzoo.data.splits.subjects`: the regular expression's match in the case name; a case it
    does not match, or every case without ``group_by``, is its own subject). A pattern that matches no case is
    :func:`~unetzoo.data.splits.subjects`'s one-line error unless ``require_match`` is False (the cases of a test
    folder, which may be named otherwise: each its own subject)."""
    cases = [match.group(1) if (match := _FRAME.match(key)) else key for key in case_keys]
    if not cases:
        return []
    groups = splits.subjects(sorted(set(cases)), group_by, require_match=require_match)
    subject = {name: s for s, names in groups.items() for name in names}
    return [subject[case] for case in cases]
