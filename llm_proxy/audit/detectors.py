"""The built-in redaction detectors: each finds one kind of secret and replaces it (pure).

The patterns and checksums (Luhn for cards, ISO 13616 lengths and mod-97 for
IBANs) that :class:`~.redact.Redactor` runs; it decides which texts they see
(its cheap pre-checks) and how JSON bodies are walked. ``DETECTORS`` is in the
order they must run: keys and bearer tokens before the digit detectors, which
could take a piece of a key; cards and IBANs before phone numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def marker(kind: str) -> str:
    """What a redacted value is replaced by."""
    return f"[redacted:{kind}]"


KEY_SHAPES = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"sk-(?:ant-|proj-|svcacct-)?[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|hf_[A-Za-z0-9]{30,}"
    r"|[spr]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r")",
    re.ASCII,
)
# A JSON key whose string value is a secret: {"password": "hunter22"}.
SECRET_KEY = re.compile(
    r"(?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|refresh[_-]?token|secret(?:[_-]?key)?"
    r"|client[_-]?secret|password|passwd|pwd|token)",
    re.IGNORECASE | re.ASCII,
)
# "password: hunter2", "api_key=...", "secret = '...'": the value goes, the name stays.
ASSIGNED = re.compile(
    r"\b((?:api[_-]?key|apikey|access[_-]?token|auth[_-]?token|secret(?:[_-]?key)?|password|passwd|pwd|token)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;]{6,})",
    re.IGNORECASE | re.ASCII,
)
BEARER = re.compile(r"\b((?:bearer|basic)\s+)([A-Za-z0-9._~+/=-]{12,})", re.IGNORECASE | re.ASCII)
EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", re.ASCII
)
PHONE = re.compile(
    r"(?<![\w+])(?<!\d[ .-])(?:"  # not the middle of a longer run of digit groups
    r"\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,5}"  # +49 30 1234567, +1 (555) 123-4567
    r"|\(\d{3}\)\s?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4}"  # (555) 123-4567, 555-123-4567
    r"|0\d{1,4}[ /-]\d{2,8}(?:[ -]\d{2,8}){0,3}"  # 030 1234567, 0171-1234567
    r")(?!\w|[ .-]\d)",
    re.ASCII,
)
# Not the decimals of a number (3.1415926535897932).
CARD = re.compile(r"(?<![\d-])(?<!\d\.)\d(?:[ -]?\d){12,18}(?!\d|\.\d)", re.ASCII)
IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{2})(\d{2})(?=[ ]?[A-Za-z0-9])", re.ASCII)

# ISO 13616 lengths by country.
_IBAN_LENGTH = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25,
    "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18,
    "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33,
    "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def luhn(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (no spaces) has its country's length and a valid mod-97 checksum."""
    iban = iban.upper()
    if _IBAN_LENGTH.get(iban[:2]) != len(iban) or not iban.isalnum():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _sub_card(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        digits = m.group().replace(" ", "").replace("-", "")
        return marker("card") if 13 <= len(digits) <= 19 and luhn(digits) else m.group()

    return CARD.sub(repl, text)


def _sub_iban(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in IBAN_START.finditer(text):
        if m.start() < pos:
            continue
        length = _IBAN_LENGTH.get(m.group(1).upper())
        if length is None:
            continue
        chars, i = [m.group(1), m.group(2)], m.end()
        need = length - 4
        while need and i < len(text):
            c = text[i]
            if c == " " and i + 1 < len(text) and text[i + 1].isalnum() and text[i + 1].isascii():
                i += 1
                continue
            if not (c.isascii() and c.isalnum()):
                break
            chars.append(c)
            need -= 1
            i += 1
        if need or (i < len(text) and text[i].isascii() and text[i].isalnum()):
            continue  # too short, or runs on into more letters and digits
        if iban_valid("".join(chars)):
            out += [text[pos : m.start()], marker("iban")]
            pos = i
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _sub_phone(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        digits = sum(c.isdigit() for c in m.group())
        return marker("phone") if 7 <= digits <= 15 else m.group()

    return PHONE.sub(repl, text)


def _keep_prefix(pattern: re.Pattern[str], kind: str) -> Callable[[str], str]:
    repl = rf"\g<1>{marker(kind)}"
    return lambda text: pattern.sub(repl, text)


def whole(pattern: re.Pattern[str], kind: str) -> Callable[[str], str]:
    return lambda text: pattern.sub(marker(kind), text)


def _api_key(text: str) -> str:
    return ASSIGNED.sub(rf"\g<1>{marker('api_key')}", KEY_SHAPES.sub(marker("api_key"), text))


# Order matters: keys and bearer tokens before the digit detectors, which
# could take a piece of a key; cards and IBANs before phone numbers.
DETECTORS: dict[str, Callable[[str], str]] = {
    "api_key": _api_key,
    "bearer": _keep_prefix(BEARER, "bearer"),
    "email": whole(EMAIL, "email"),
    "iban": _sub_iban,
    "card": _sub_card,
    "phone": _sub_phone,
}
