"""The statistics of ``compare`` and ``report`` against hand computations: subject-level bootstrap, NaN-safe score,
exact permutation p, non-inferiority, seeds, Holm, Kendall's tau and subjects of case keys."""

import itertools
import warnings

import numpy as np
import pytest
from scipy import stats

from unetzoo.errors import UnetzooError
from unetzoo.experiments.statistics import (
    BOOTSTRAP,
    cluster_interval,
    figure,
    holm,
    kendall_tau,
    paired_difference,
    score,
    subjects_of,
    swapped_pairs,
)

SUBJECTS = [f"s{i:02d}" for i in range(20)]  # zero-padded: sorted ids are in case order


def _scores(seed=1, n=20):
    return np.random.default_rng(seed).uniform(0.7, 0.9, n)


def test_cluster_bootstrap_ignores_duplicated_cases_of_a_subject():
    x = _scores()
    single = x[:, None]  # one case per subject, one class
    duplicated = np.repeat(x, 2)[:, None]  # every subject's case twice (ED and ES with the same Dice)
    lo, hi, method = cluster_interval(single, SUBJECTS)
    lo2, hi2, method2 = cluster_interval(duplicated, np.repeat(SUBJECTS, 2))
    assert method == method2 == "BCa"
    assert lo2 == pytest.approx(lo, abs=1e-9) and hi2 == pytest.approx(hi, abs=1e-9)
    # by hand: SciPy's BCa bootstrap of the mean of the subjects' values, the same resamples
    hand = stats.bootstrap((x,), np.mean, n_resamples=BOOTSTRAP, random_state=np.random.default_rng(0))
    assert (lo, hi) == pytest.approx(tuple(hand.confidence_interval), abs=1e-9)
    # cases resampled as if independent: the duplicates look like twice the data, a narrower interval
    cases = stats.bootstrap(
        (np.repeat(x, 2),), np.mean, n_resamples=BOOTSTRAP, method="percentile", random_state=np.random.default_rng(0)
    ).confidence_interval
    assert hi - lo > 1.2 * (cases.high - cases.low)


def test_score_with_missing_values():
    nan = np.nan
    values = np.array(
        [
            [[0.8, nan], [0.6, 0.4], [nan, nan]],  # seed 0: class 0 (0.8 + 0.6) / 2 = 0.7, class 1 0.4
            [[1.0, 0.2], [nan, nan], [0.4, nan]],  # seed 1: class 0 (1.0 + 0.4) / 2 = 0.7, class 1 0.2
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        assert figure(values) == pytest.approx([0.55, 0.45])
        # pooled: class 0 (0.8 + 0.6 + 1.0 + 0.4) / 4 = 0.7, class 1 (0.4 + 0.2) / 2 = 0.3
        assert score(values) == pytest.approx(0.5)
        assert float(figure(np.array([[nan, 0.5], [nan, 0.7]]))) == pytest.approx(0.6)  # absent class skipped
        assert np.isnan(score(np.full((2, 3), nan)))
        assert cluster_interval(np.full((2, 3), nan), ["a", "b"]) == (None, None, "n/a")


def test_paired_permutation_p_is_exact_over_subjects():
    # 4 subjects, the first with two cases: 2**4 = 16 ways to swap whole subjects between the models
    subjects = ["s1", "s1", "s2", "s3", "s4"]
    a = np.array([0.9, 0.85, 0.8, 0.7, 0.95])[:, None]
    b = np.array([0.8, 0.80, 0.7, 0.75, 0.7])[:, None]
    observed = a.mean() - b.mean()
    member = np.array([[s == t for t in ("s1", "s2", "s3", "s4")] for s in subjects])  # (cases, subjects)
    flips = []
    for signs in itertools.product([False, True], repeat=4):
        swap = member[:, list(signs)].any(axis=1)[:, None]
        flips.append(np.where(swap, b, a).mean() - np.where(swap, a, b).mean())
    hand = np.mean(np.abs(flips) >= abs(observed) - 1e-12)
    result = paired_difference(a, b, subjects)
    assert result["p"] == pytest.approx(hand) and hand == pytest.approx(4 / 16)
    assert result["difference"] == pytest.approx(observed)
    assert (result["subjects"], result["cases"]) == (4, 5)


def test_within_margin_decisions():
    x = _scores()[:, None]
    noise = np.random.default_rng(2).normal(0, 1e-4, x.shape)
    close = paired_difference(x - 0.002 + noise, x, SUBJECTS, margin=0.01)
    assert close["difference"] == pytest.approx(-0.002, abs=1e-4) and close["ci_method"] == "BCa"
    assert close["ci"][0] < close["lower_one_sided"] < close["difference"] < close["ci"][1]
    assert close["within_margin"] and close["margin"] == 0.01 and close["p"] < 0.01
    far = paired_difference(x - 0.05 + noise, x, SUBJECTS, margin=0.01)
    assert far["lower_one_sided"] < -0.01 and not far["within_margin"]


def test_seed_spread_widens_the_interval():
    x = _scores()[:, None]
    one = cluster_interval(x + 0.025, SUBJECTS)  # the mean of the two seeds below: the same score
    two = cluster_interval(np.stack([x, x + 0.05]), SUBJECTS)
    assert two[2] == "percentile over seeds and subjects"
    assert two[1] - two[0] > 1.5 * (one[1] - one[0])
    pooled = score(np.stack([x, x + 0.05]))
    assert pooled == pytest.approx(score(x + 0.025)) and two[0] < pooled < two[1]
    paired = paired_difference(np.stack([x, x + 0.05]), x, SUBJECTS)  # 2 seeds against 1
    assert paired["difference"] == pytest.approx(0.025) and paired["ci"] == pytest.approx([0.0, 0.05])


def test_holm_by_hand():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> 0.06 (monotone)
    assert holm([0.01, 0.04, None, 0.03, 0.005]) == pytest.approx([0.03, 0.06, None, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]


def test_kendall_tau_and_swapped_pairs():
    names = ["a", "b", "c", "d"]
    cv, test = [0.9, 0.8, 0.7, 0.6], [0.9, 0.7, 0.8, 0.6]
    tau, p = kendall_tau(cv, test)
    # 5 concordant pairs, 1 discordant: (5 - 1) / 6; exact p: 4 of the 24 orders have at most one swap, two-sided
    assert tau == pytest.approx(4 / 6) and p == pytest.approx(2 * 4 / 24)
    assert swapped_pairs(names, cv, test) == [("b", "c")]
    assert swapped_pairs(names, cv, [0.9, None, 0.8, 0.6]) == []  # b unscored, c's place unchanged otherwise
    assert kendall_tau([0.9], [0.8]) == (None, None)


def test_subjects_of_keys():
    keys = ["patient001_frame01", "patient001_frame12", "patient002_frame01", "other"]
    assert subjects_of(keys, r"patient\d+") == ["patient001", "patient001", "patient002", "other"]
    assert subjects_of(keys) == keys
    assert subjects_of(["p1 frame 0", "p1 frame 9", "p2 frame 0"]) == ["p1", "p1", "p2"]  # 3D+t: frames of one case
    assert subjects_of([], r"patient\d+") == []
    with pytest.raises(UnetzooError, match="matches no case"):
        subjects_of(["a", "b"], r"patient\d+")
    with pytest.raises(ValueError, match="2 subject ids for 3 cases"):
        cluster_interval(np.ones((3, 1)), ["a", "b"])
