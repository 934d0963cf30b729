"""Confidence intervals of proportions, shared by the stages that report accuracies.

`wilson_interval` (Wilson 1927) is good at small n and near 0 or 1; `diff_ci` is the normal
interval of a difference of two accuracies, paired by problem when both saw the same problems.
Train (reward-model pair accuracy) and eval (held-out accuracy, the promotion gate) use them; it
sits beside config.py and errors.py because train may not import eval.
"""

from __future__ import annotations

import math


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (z=1.96: 95%)."""
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def diff_ci(
    acc_a: float,
    n_a: int,
    acc_b: float,
    n_b: int,
    *,
    paired: tuple[list[bool], list[bool]] | None = None,
    z: float = 1.96,
) -> tuple[float, float, float]:
    """(diff, low, high) of acc_b - acc_a, a normal-approximation interval (z=1.96: 95%).

    Unpaired: two independent proportions. With `paired=(correct_a, correct_b)`, per-problem
    outcomes on the same problems, the variance of the mean per-problem difference is used,
    which is narrower when the two models agree on most problems.
    """
    if paired is not None:
        a, b = paired
        if len(a) != len(b) or not a:
            raise ValueError(
                f"paired outcomes must be non-empty and equal length: {len(a)}, {len(b)}"
            )
        d = [float(y) - float(x) for x, y in zip(a, b, strict=True)]
        n = len(d)
        mean = sum(d) / n
        var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
        half = z * math.sqrt(var / n)
        return mean, mean - half, mean + half
    if n_a <= 0 or n_b <= 0:
        raise ValueError(f"diff_ci needs n_a, n_b > 0, got {n_a}, {n_b}")
    diff = acc_b - acc_a
    half = z * math.sqrt(acc_a * (1 - acc_a) / n_a + acc_b * (1 - acc_b) / n_b)
    return diff, diff - half, diff + half
