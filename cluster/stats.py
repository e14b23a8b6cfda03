"""The statistics docs/results.md reports with its numbers: Wilson intervals, a bootstrap difference, pass@k.

Pure functions of plain numbers (numpy only for the bootstrap), checked in tests/test_stats.py against
hand-computed values. The trainer logs `eval/pass_at_k` with `pass_at_k`; bench/run_summary.py applies the others
to a committed metrics.jsonl.

- `wilson_interval`: 95% interval of a proportion (an eval accuracy) from its successes and sample size. Unlike
  the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n.
- `bootstrap_mean_difference`: the difference mean(b) - mean(a) of two samples (e.g. the per-step
  `rewards/correctness/mean` of the last 20 and the first 20 steps) with a percentile-bootstrap 95% interval:
  `BOOTSTRAP_RESAMPLES` (10,000) resamples of each sample independently, with replacement, from a fixed seed.
- `pass_at_k`: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), from n samples of which
  c are correct; with exactly n = k samples (as the trainer's `eval/pass_at_k`) it is 1 when any sample is correct.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z_95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a two-sided 95% interval."""
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def wilson_interval(successes: int, size: int, z: float = Z_95) -> tuple[float, float]:
    """(low, high) Wilson score interval for `successes` out of `size` trials."""
    if size < 1 or not 0 <= successes <= size:
        raise ValueError(f"need 0 <= successes <= size and size >= 1, got {successes}/{size}")
    p = successes / size
    z2n = z * z / size
    center = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / size + z2n / (4 * size)) / (1 + z2n)
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_mean_difference(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """(mean(b) - mean(a), low, high): the observed difference and its percentile-bootstrap interval."""
    if not a or not b:
        raise ValueError(f"both samples need values, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    # (resamples, len) index draws: each row is one resample of that sample, with replacement.
    means_a = first[rng.integers(0, len(first), size=(resamples, len(first)))].mean(axis=1)
    means_b = second[rng.integers(0, len(second), size=(resamples, len(second)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means_b - means_a, [tail, 1 - tail])
    return float(second.mean() - first.mean()), float(low), float(high)


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from `samples` is correct."""
    if not 0 <= correct <= samples or not 1 <= k <= samples:
        raise ValueError(f"need 0 <= correct <= samples and 1 <= k <= samples, got {correct}, {samples}, {k}")
    return 1.0 - math.comb(samples - correct, k) / math.comb(samples, k)
