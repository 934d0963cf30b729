"""PII redaction: each kind is caught and replaced by its placeholder; ordinary text stays."""

from __future__ import annotations

import time

import pytest

from ownlm.data.redact import (
    RedactConfig,
    Redactions,
    find_pii,
    iban_valid,
    luhn_valid,
    redact_pii,
)

CFG = RedactConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me at jane.doe+work@example.co.uk please", "mail me at <EMAIL> please"),
        ("Call me at (415) 555-2671 tomorrow", "Call me at <PHONE> tomorrow"),
        ("call 212.555.0199", "call <PHONE>"),
        ("my number is +44 20 7946 0958", "my number is <PHONE>"),
        ("card 4111 1111 1111 1111 exp 12/27", "card <CARD> exp 12/27"),
        ("card 5500-0000-0000-0004.", "card <CARD>."),
        ("key sk-proj-abcdefghijklmnop1234567890XYZ ok", "key <SECRET> ok"),
        ("AKIAIOSFODNN7EXAMPLE is my aws key", "<SECRET> is my aws key"),
        ("ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "<SECRET>"),
        ("xoxb-123456789012-abcdefghij", "<SECRET>"),
        ("Authorization: Bearer abc.DEF_123-xyz/9", "Authorization: Bearer <SECRET>"),
        ('{"password": "hunter22!"}', '{"password": "<SECRET>"}'),
        ("api_key=Zx81aa0Qm", "api_key=<SECRET>"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcDEF123", "token <SECRET>"),
        ("blob Qm9vbGVhbk1hdHRlcnM1Tm90SGVyZQ2x9Kp7", "blob <SECRET>"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            "<SECRET>",
        ),
        ("IBAN DE89 3704 0044 0532 0130 00 thanks", "IBAN <IBAN> thanks"),
        ("pay to GB82WEST12345698765432", "pay to <IBAN>"),
    ],
)
def test_each_pii_kind_is_replaced(text: str, expected: str) -> None:
    assert redact_pii(text, CFG) == expected


@pytest.mark.parametrize(
    "text",
    [
        "What is 12 + 34?",
        "Compute 123456789 * 987654321 and 4111111111111112",  # second number fails Luhn
        "The meeting is on 2024-01-15 at 10:30, or 15/01/2024",
        "Where is my order #12345? Ticket 98765432.",
        "It costs $1,299.99 or 1299 EUR, 20% off",
        "Python 3.10.12 and version 1.2.3.4 on port 8080",
        "uuid 550e8400-e29b-41d4-a716-446655440000, sha 3f786850e387550fdab836ed7e6dc881de23001b",
        "internationalization_and_localization_guide_v2",
        "max_tokens: 1024000 and tokens=512",
        "call the function get_order with order_id ORD-2024-000123",
        "DE89 is a prefix, not an IBAN",
        "Use Bearer authentication for the API and keep tokens short.",
    ],
)
def test_ordinary_text_stays(text: str) -> None:
    assert redact_pii(text, CFG) == text


def test_ips_only_when_asked() -> None:
    text = "server 192.168.1.20 and 2001:db8::1"
    assert redact_pii(text, CFG) == text
    assert redact_pii(text, RedactConfig(ips=True)) == "server <IP> and <IP>"


def test_ibans_can_be_turned_off() -> None:
    assert redact_pii("DE89370400440532013000", RedactConfig(ibans=False)) == (
        "DE89370400440532013000"
    )


def test_phone_regions_read_national_formats() -> None:
    text = "ring 020 7946 0958"
    assert redact_pii(text, CFG) == text  # not a valid US number
    assert redact_pii(text, RedactConfig(phone_regions=["US", "GB"])) == "ring <PHONE>"


def test_tally_counts_placeholders_and_changed_texts() -> None:
    tally = Redactions()
    redact_pii("a@b.io and c@d.io, card 4111111111111111", CFG, tally)
    redact_pii("nothing here", CFG, tally)
    assert tally.texts_changed == 1
    assert tally.by_label == {"EMAIL": 2, "CARD": 1}


def test_overlapping_spans_longest_first_wins() -> None:
    # The card number is also a run of digits a phone matcher might see; one placeholder only.
    spans = find_pii("4111 1111 1111 1111", CFG)
    assert [label for _, _, label in spans] == ["CARD"]


def test_luhn_and_iban_checks_by_hand() -> None:
    assert luhn_valid("79927398713")  # the textbook example
    assert not luhn_valid("79927398710")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")


def test_long_runs_take_linear_time() -> None:
    # A quadratic regex needs ~100 s here (each start position rescans the run); linear: ~0.1 s.
    start = time.perf_counter()
    for text in ("A" * 200_000, "a." * 100_000, "7" * 200_000):
        assert redact_pii(text, CFG) == text
    assert time.perf_counter() - start < 10.0
