"""Exact and near-duplicate detection of texts (prompts, or prompt + answer), first one kept.

Normalisation for both: Unicode NFKC, case folded, runs of whitespace made one space. Exact
duplicates are equal normalised texts. Near duplicates are texts whose sets of character 5-grams
have Jaccard similarity >= `threshold` (0.8 by default). "...my order 12345 never arrived and I
want a refund." and "...never arrived, I want a refund!" score 0.82 (near); "What is 12 + 35?"
and "What is 99 + 35?" score 0.33, so math prompts that differ in their numbers all stay.

Candidates come from MinHash LSH (64 hash functions in 16 bands of 4 rows, so pairs above ~0.5
similarity collide in some band with high probability), and every candidate is then checked
with the exact Jaccard of the two shingle sets, so a reported near duplicate is always truly
above the threshold; LSH only decides which pairs get compared. We wrote the ~40 lines of
MinHash here rather than add `datasketch` (and its scipy import) for one function; the result
is deterministic (crc32 shingle hashes, fixed seeded permutations).
"""

from __future__ import annotations

import unicodedata
import zlib
from collections import defaultdict
from typing import Literal

import numpy as np

SHINGLE_CHARS = 5
NUM_PERM, BANDS = 64, 16
_ROWS = NUM_PERM // BANDS
_MERSENNE = np.uint64((1 << 61) - 1)

Verdict = Literal["new", "exact", "near"]


def normalize_text(text: str) -> str:
    """NFKC, case folded, whitespace collapsed: the form duplicates are compared in."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def shingles(text: str) -> set[str]:
    """Character 5-grams of a normalised text (the text itself when shorter)."""
    if len(text) <= SHINGLE_CHARS:
        return {text}
    return {text[i : i + SHINGLE_CHARS] for i in range(len(text) - SHINGLE_CHARS + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class DedupeIndex:
    """Texts seen so far; `check_and_add` says whether a new text duplicates one of them."""

    def __init__(self, threshold: float | None = 0.8, seed: int = 0) -> None:
        """threshold: Jaccard at or above which texts are near duplicates; None: exact only."""
        rng = np.random.default_rng(seed)
        # a < 2**31 and a 32-bit hash keep a*h + b below 2**64 (no uint64 overflow).
        self._a = rng.integers(1, 1 << 31, size=NUM_PERM, dtype=np.uint64)
        self._b = rng.integers(0, 1 << 31, size=NUM_PERM, dtype=np.uint64)
        self.threshold = threshold
        self._exact: set[str] = set()
        self._shingles: list[set[str]] = []
        self._buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)

    def _signature(self, grams: set[str]) -> np.ndarray:
        hashes = np.fromiter((zlib.crc32(g.encode()) for g in grams), np.uint64, len(grams))
        return ((np.outer(hashes, self._a) + self._b) % _MERSENNE).min(axis=0)  # (NUM_PERM,)

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
        candidates = {i for key in keys for i in self._buckets.get(key, ())}
        if any(jaccard(grams, self._shingles[i]) >= self.threshold for i in candidates):
            self._exact.discard(norm)
            return "near"
        self._shingles.append(grams)
        for key in keys:
            self._buckets[key].append(len(self._shingles) - 1)
        return "new"
