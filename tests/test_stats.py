"""cluster/stats.py against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest

from cluster.stats import BOOTSTRAP_RESAMPLES, bootstrap_mean_difference, pass_at_k, wilson_interval

# z = 1.95996398, z^2 = 3.84145882. Wilson: center = (p + z^2/2n) / (1 + z^2/n),
# half = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n). For n = 10: z^2/n = 0.38414588, 1 + z^2/n = 1.38414588.
WILSON_CASES = [
    # 0/10: center = half = 0.19207294 / 1.38414588 = 0.13876640 -> (0, z^2 / (n + z^2)) = (0, 3.84145882 / 13.84145882)
    (0, 10, 0.0, 0.2775328),
    # 5/10: center 0.5; half = 1.95996398 * sqrt(0.025 + 0.00960365) / 1.38414588 = 0.36459361 / 1.38414588 = 0.26340690
    (5, 10, 0.2365931, 0.7634069),
    # 10/10: the mirror image of 0/10
    (10, 10, 0.7224672, 1.0),
    # 1/1: z^2/n = 3.84145882; center = (1 + 1.92072941) / 4.84145882 = 0.60327505; half = 1.95996398 *
    #      sqrt(0.96036471) / 4.84145882 = 1.92072941 / 4.84145882 = 0.39672495 -> (0.2065501, 1)
    (1, 1, 0.2065501, 1.0),
]


@pytest.mark.parametrize(("successes", "size", "low", "high"), WILSON_CASES)
def test_wilson_interval_by_hand(successes: int, size: int, low: float, high: float) -> None:
    got = wilson_interval(successes, size)
    assert got == pytest.approx((low, high), abs=1e-6)


def test_wilson_interval_narrows_with_size_and_refuses_bad_counts() -> None:
    small, large = wilson_interval(50, 100), wilson_interval(500, 1000)
    assert small[0] < large[0] < 0.5 < large[1] < small[1]
    for successes, size in ((1, 0), (-1, 10), (11, 10)):
        with pytest.raises(ValueError):
            wilson_interval(successes, size)


def test_bootstrap_of_constant_samples_is_exact() -> None:
    # Every resample of a constant sample has the same mean: the interval is the point.
    assert bootstrap_mean_difference([1.0, 1.0, 1.0], [3.0, 3.0]) == (2.0, 2.0, 2.0)


def test_bootstrap_two_point_sample_spans_its_extremes() -> None:
    # b = [0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the 2.5% quantile of the
    # 10,000 resampled differences is 0 and the 97.5% quantile is 1; a = [0] adds nothing.
    assert bootstrap_mean_difference([0.0], [0.0, 1.0]) == (0.5, 0.0, 1.0)


def test_bootstrap_matches_the_normal_interval_and_repeats() -> None:
    # a = 0..19, b = a + 5: difference 5. Each mean's sampling sd is sigma / sqrt(20) with the population variance
    # sigma^2 = (20^2 - 1) / 12 = 33.25, so the difference's sd is sqrt(2 * 33.25 / 20) = 1.8235 and the normal
    # interval is 5 -+ 1.96 * 1.8235 = 5 -+ 3.574. The percentile bootstrap agrees to well under 10%.
    a = [float(i) for i in range(20)]
    b = [x + 5 for x in a]
    difference, low, high = bootstrap_mean_difference(a, b)
    assert difference == 5.0
    assert low == pytest.approx(5 - 3.574, rel=0.1)
    assert high == pytest.approx(5 + 3.574, rel=0.1)
    assert bootstrap_mean_difference(a, b) == (difference, low, high)  # fixed seed
    assert bootstrap_mean_difference(a, b, seed=1) != (difference, low, high)
    assert BOOTSTRAP_RESAMPLES == 10_000  # the count docs/results.md states
    with pytest.raises(ValueError):
        bootstrap_mean_difference([], b)


PASS_AT_K_CASES = [
    (4, 0, 4, 0.0),  # no correct sample
    (4, 1, 4, 1.0),  # k = n: any correct sample passes
    (4, 4, 1, 1.0),
    (4, 1, 1, 0.25),  # 1 - C(3,1)/C(4,1) = 1 - 3/4
    (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),  # C(7,5) = 21, C(10,5) = 252
]


@pytest.mark.parametrize(("samples", "correct", "k", "expected"), PASS_AT_K_CASES)
def test_pass_at_k_by_hand(samples: int, correct: int, k: int, expected: float) -> None:
    assert math.isclose(pass_at_k(samples, correct, k), expected)


def test_pass_at_k_refuses_bad_counts() -> None:
    for samples, correct, k in ((4, 5, 1), (4, 1, 0), (4, 1, 5)):
        with pytest.raises(ValueError):
            pass_at_k(samples, correct, k)
