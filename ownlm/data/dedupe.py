"""Exact and near-duplicate detection of texts (prompts, or prompt + answer), first one kept.

Normalisation for both: Unicode NFKC, case folded, runs of whitespace made one space. Exact
duplicates are equal normalised texts. Near duplicates are texts whose sets of character 5-grams
have Jaccard similarity >= `threshold` (0.8 by default). "...my order 12345 never arrived and I
want a refund." and "...never arrived, I want a refund!" score 0.82 (near); "What is 12 + 35?"
and "What is 99 + 35?" score 0.33, so math prompts that differ in their numbers all stay.

Candidates come from MinHash LSH (64 hash functions in 16 bands of 4 rows, so pairs above ~0.5
similarity collide in some band with high probability), and every candidate is then checked
with the exact Jaccard of the two shingle sets, so a reported near duplicate is always truly
above the threshold; LSH only decides which pairs get compared. We wrote the ~50 lines of
MinHash here rather than add `datasketch` (and its scipy import) for one function; the result
is deterministic (polynomial shingle hashes, seeded hash functions).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from typing import Literal

import numpy as np

SHINGLE_CHARS = 5
NUM_PERM, BANDS = 64, 16
_ROWS = NUM_PERM // BANDS
_BASE = np.uint64(1_000_003)

Verdict = Literal["new", "exact", "near"]


def normalize_text(text: str) -> str:
    """NFKC, case folded, whitespace collapsed: the form duplicates are compared in."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def shingles(text: str) -> set[int]:
    """64-bit hashes of the character 5-grams of a text (of the text itself when shorter).

    Computed over code points in numpy (uint64 arithmetic wraps); a Python loop over the
    5-gram strings was half of the index's time.
    """
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    width = min(SHINGLE_CHARS, len(points))
    hashes = np.zeros(len(points) - width + 1, dtype=np.uint64)
    for j in range(width):
        hashes = hashes * _BASE + points[j : len(points) - width + 1 + j]
    return set(hashes.tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class DedupeIndex:
    """Texts seen so far; `check_and_add` says whether a new text duplicates one of them."""

    def __init__(self, threshold: float | None = 0.8, seed: int = 0) -> None:
        """threshold: Jaccard at or above which texts are near duplicates; None: exact only."""
        rng = np.random.default_rng(seed)
        # h -> (a*h + b) mod 2**64 with odd a, high 32 bits kept: a multiply-shift hash family.
        self._a = rng.integers(0, 1 << 63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + 1
        self._b = rng.integers(0, 1 << 63, size=NUM_PERM, dtype=np.uint64)
        self.threshold = threshold
        self._exact: set[str] = set()
        self._shingles: list[set[int]] = []
        self._sigs = np.empty((1024, NUM_PERM), dtype=np.uint64)  # (capacity, NUM_PERM), grows
        self._buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)

    def _signature(self, grams: set[int]) -> np.ndarray:
        hashes = np.fromiter(grams, np.uint64, len(grams))
        return ((np.outer(hashes, self._a) + self._b) >> np.uint64(32)).min(axis=0)  # (NUM_PERM,)

    def check_and_add(self, text: str) -> Verdict:
        """'exact' or 'near' if text duplicates a kept text (it is not kept), else 'new' (kept)."""
        norm = normalize_text(text)
        if norm in self._exact:
            return "exact"
        self._exact.add(norm)
        if self.threshold is None:
            return "new"
        grams = shingles(norm)
        sig = self._signature(grams)
        keys = [(band, sig[band * _ROWS : (band + 1) * _ROWS].tobytes()) for band in range(BANDS)]
        candidates = np.fromiter({i for key in keys for i in self._buckets.get(key, ())}, np.int64)
        # The share of equal signature values estimates the Jaccard J (std sqrt(J(1-J)/64), 0.05
        # at J = 0.8): only candidates estimated within 0.15 of the threshold get the exact,
        # costlier check. A pair exactly at the threshold is missed with p ~ 0.001, one at 0.9
        # with p < 1e-9.
        estimate = (self._sigs[candidates] == sig).mean(axis=1)
        for i in candidates[estimate >= self.threshold - 0.15]:
            if jaccard(grams, self._shingles[i]) >= self.threshold:
                self._exact.discard(norm)
                return "near"
        n = len(self._shingles)
        if n == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[n] = sig
        self._shingles.append(grams)
        for key in keys:
            self._buckets[key].append(n)
        return "new"
