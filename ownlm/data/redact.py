"""PII redaction of the text an export writes: emails, phones, cards, secrets, IBANs, IPs.

Each found span is replaced by a typed placeholder: `<EMAIL>`, `<PHONE>`, `<CARD>`, `<SECRET>`,
`<IBAN>`, `<IP>`. Detectors:
- email: one regex (local@domain.tld).
- phone: Google's libphonenumber (`phonenumbers.PhoneNumberMatcher`), the matcher scrubadub and
  presidio wrap, at leniency STRICT_GROUPING: a number must be valid in its region and its digit
  groups must follow that region's format, so "12 + 34", dates, "#12345", prices and ids like
  "ORD-2024-000123" stay (VALID alone took that id for 202-400-0123). An ungrouped run of 10
  digits that is a valid number ("4155552671") is still taken. Numbers without "+" are read in
  `phone_regions`.
- card: 13-19 digits (spaces or dashes allowed between them) that pass the Luhn check.
- secret: provider key shapes (OpenAI/Anthropic `sk-`, AWS `AKIA`/`ASIA`, GitHub `ghp_`.., Slack
  `xox?-`, Google `AIza`, JWTs, PEM private keys), `Bearer <token>`, `password=...`-style
  assignments, and any other token of >= 24 chars mixing upper case, lower case and digits
  with Shannon entropy >= 4 bits/char (hex hashes and UUIDs have no upper case, so they stay).
- IBAN (on by default) with the ISO 13616 mod-97 check; IPv4/IPv6 (off by default: version
  strings like 1.2.3.4 look like addresses) validated with `ipaddress`.

Why not a library end to end: scrubadub 2.0.1 installs, but offline it missed the card, the IBAN
and every key, and cut an email in half; presidio-analyzer needs a spaCy model for its engine
(it tries to download one), pulls spaCy even for its pattern recognizers, whose IP recognizer
redacts "version 1.2.3.4", and knows no API keys. Measurements are in docs/export.md.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import phonenumbers
from pydantic import Field

from ownlm.config import Config

Span = tuple[int, int, str]  # (start, end, placeholder label)


class RedactConfig(Config):
    """Which optional detectors run; emails, phones, cards and secrets always do."""

    phone_regions: list[str] = Field(
        ["US"], description="regions whose national formats count as phone numbers"
    )
    ibans: bool = Field(True, description="redact IBANs")
    ips: bool = Field(False, description="redact IP addresses")


@dataclass
class Redactions:
    """What redaction replaced: placeholders per label and texts that had at least one."""

    by_label: Counter[str] = field(default_factory=Counter)
    texts_changed: int = 0


# Start only where a run of local-part characters starts, and never give back what `++` took:
# otherwise a 20k-char run without "@" is rescanned from every position (1 s; now 2 ms).
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_SECRET_SHAPES = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|\bsk-[A-Za-z0-9_-]{16,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{22,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",
    re.DOTALL,
)
# The token after "Bearer" or after a secret-named key; the name itself stays readable.
_SECRET_VALUE = re.compile(
    r"\bBearer\s+([A-Za-z0-9._~+/=-]{8,})"
    r"|\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|token)"
    r"""["']?\s*[:=]\s*["']?([^\s"',;]{6,})""",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{24,}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SEVEN_DIGITS = re.compile(r"\d(?:[\s().\-/]*\d){6}")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


def _entropy_bits(token: str) -> float:
    counts = Counter(token)
    return -sum(c / len(token) * math.log2(c / len(token)) for c in counts.values())


def luhn_valid(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum (payment card numbers do)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """True when the IBAN (spaces allowed) passes the ISO 13616 mod-97 check."""
    compact = text.replace(" ", "")
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in moved)
    return int(number) % 97 == 1


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end(), "EMAIL"


def _secrets(text: str) -> Iterator[Span]:
    for m in _SECRET_SHAPES.finditer(text):
        yield m.start(), m.end(), "SECRET"
    for m in _SECRET_VALUE.finditer(text):
        group = 1 if m.group(1) is not None else 2
        value = m.group(group)
        # "Bearer authentication" is prose: a bearer token has a digit or is long.
        if group == 1 and len(value) < 32 and not any(c.isdigit() for c in value):
            continue
        yield m.start(group), m.end(group), "SECRET"
    for m in _TOKEN.finditer(text):
        token = m.group()
        mixed = (
            any(c.isupper() for c in token)
            and any(c.islower() for c in token)
            and any(c.isdigit() for c in token)
        )
        if mixed and _entropy_bits(token) >= 4.0:
            yield m.start(), m.end(), "SECRET"


def _cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            yield m.start(), m.end(), "CARD"


def _phones(text: str, regions: list[str]) -> Iterator[Span]:
    # libphonenumber's matcher costs ~190 us on a 160-char text; no phone number anywhere has
    # fewer than 7 digits (country code included), so texts without such a run skip it.
    if not _SEVEN_DIGITS.search(text):
        return
    for region in regions:
        matcher = phonenumbers.PhoneNumberMatcher(
            text, region, leniency=phonenumbers.Leniency.STRICT_GROUPING
        )
        for m in matcher:
            yield m.start, m.end, "PHONE"


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        if iban_valid(m.group()):
            yield m.start(), m.end(), "IBAN"


def _ips(text: str) -> Iterator[Span]:
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            yield m.start(), m.end(), "IP"


def _detectors(cfg: RedactConfig) -> list[Callable[[str], Iterator[Span]]]:
    # Order matters only for ties: at one start position the longest span wins, then the first
    # detector listed (a card number is not also reported as a phone).
    found: list[Callable[[str], Iterator[Span]]] = [_secrets, _emails, _cards]
    if cfg.ibans:
        found.append(_ibans)
    found.append(lambda text: _phones(text, cfg.phone_regions))
    if cfg.ips:
        found.append(_ips)
    return found


def find_pii(text: str, cfg: RedactConfig) -> list[Span]:
    """Non-overlapping PII spans in text, left to right (earliest start, then longest, wins)."""
    spans = [s for detect in _detectors(cfg) for s in detect(text)]
    # Stable sort: equal (start, length) keeps detector order.
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    chosen: list[Span] = []
    for span in spans:
        if not chosen or span[0] >= chosen[-1][1]:
            chosen.append(span)
    return chosen


def redact_pii(text: str, cfg: RedactConfig, tally: Redactions | None = None) -> str:
    """text with every PII span replaced by its placeholder, e.g. `<EMAIL>`; counts into tally."""
    spans = find_pii(text, cfg)
    if not spans:
        return text
    parts, pos = [], 0
    for start, end, label in spans:
        parts.append(text[pos:start])
        parts.append(f"<{label}>")
        pos = end
    parts.append(text[pos:])
    if tally is not None:
        tally.texts_changed += 1
        tally.by_label.update(label for _, _, label in spans)
    return "".join(parts)
