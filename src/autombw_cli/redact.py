"""Keeping secrets out of what autombw prints and logs: URLs lose their credentials and query.

`redact_url` turns ``http://user:secret@host:7860/api?token=abc#x`` into
``http://***@host:7860/api?***#***``: the host, port and path stay (they say which instance),
the user-info, query and fragment (passwords, API tokens) do not. `redact_urls` does that to
every URL inside a text (an error message from a library, a log line). Every message or log
line that shows a URL a user typed goes through one of them.
"""

from __future__ import annotations

import re

MASK = "***"
_URL_IN_TEXT = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s'\"<>`]+")


def redact_url(url: object) -> str:
    """``url`` without user-info, query or fragment (each replaced by ``***``); never raises,
    also for a URL too broken to parse (scheme-less ``user:pw@host`` included)."""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    rest, hash_, _fragment = rest.partition("#")
    rest, qmark, _query = rest.partition("?")
    if "@" in rest:  # up to the last "@": a password may hold "/" (over-masking is fine)
        rest = f"{MASK}@{rest.rsplit('@', 1)[1]}"
    out = f"{scheme}{sep}{rest}"
    if qmark:
        out += f"?{MASK}"
    if hash_:
        out += f"#{MASK}"
    return out


def redact_urls(text: str) -> str:
    """``text`` with every ``scheme://...`` URL in it redacted (`redact_url`)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
