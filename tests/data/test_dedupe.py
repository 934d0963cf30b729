"""Duplicate detection: normalised exact matches, near matches by 5-gram Jaccard, first kept."""

from __future__ import annotations

from ownlm.data.dedupe import DedupeIndex, jaccard, normalize_text, shingles

TICKET = "Summarise this support ticket: my order 12345 never arrived and I want a refund."


def test_normalize_folds_case_width_and_spaces() -> None:
    assert normalize_text("  What\tIS\n12 + 34？ ") == "what is 12 + 34?"  # fullwidth ? -> ?


def test_jaccard_by_hand() -> None:
    # "abcdef" -> {abcde, bcdef}; "abcdeg" -> {abcde, bcdeg}: 1 shared of 3
    assert len(shingles("abcdef")) == 2
    assert jaccard(shingles("abcdef"), shingles("abcdeg")) == 1 / 3
    assert len(shingles("abc")) == 1 and shingles("abc") != shingles("abd")
    assert shingles("ééééé") == shingles("éééééé")  # one 5-gram, whatever the code points


def test_exact_and_near_duplicates_are_flagged_first_kept() -> None:
    index = DedupeIndex(threshold=0.8)
    assert index.check_and_add(TICKET) == "new"
    assert (
        index.check_and_add(
            "  summarise THIS support ticket: my order 12345 never arrived and I want a refund."
        )
        == "exact"
    )
    near = "Summarise this support ticket: my order 12345 never arrived, I want a refund!"
    assert jaccard(shingles(normalize_text(TICKET)), shingles(normalize_text(near))) > 0.8
    assert index.check_and_add(near) == "near"
    other = "Summarise this support ticket: the app crashes when I open settings on Android."
    assert index.check_and_add(other) == "new"


def test_math_prompts_that_differ_in_numbers_stay() -> None:
    index = DedupeIndex(threshold=0.8)
    verdicts = [
        index.check_and_add(f"What is {a} + {b}?") for a, b in [(12, 35), (99, 35), (12, 34)]
    ]
    assert verdicts == ["new", "new", "new"]


def test_exact_only_when_threshold_is_none() -> None:
    index = DedupeIndex(threshold=None)
    assert index.check_and_add(TICKET) == "new"
    assert index.check_and_add(TICKET.upper()) == "exact"
    assert index.check_and_add(TICKET.replace(" and", ",")) == "new"


def test_near_duplicates_found_among_many() -> None:
    # 300 distinct texts, then a one-word edit of each: LSH must surface every pair.
    texts = [
        f"Customer {i} writes: the parcel with tracking code TRK{i * 7919 % 100000:05d} has "
        f"been stuck in the depot in city number {i % 17} for {i % 9 + 2} days now."
        for i in range(300)
    ]
    index = DedupeIndex(threshold=0.8)
    assert [index.check_and_add(t) for t in texts] == ["new"] * 300
    edited = [t.replace("stuck", "blocked") for t in texts]
    assert [index.check_and_add(t) for t in edited] == ["near"] * 300
