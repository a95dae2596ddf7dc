"""Session ids: minted from the OS's CSPRNG, and checked before anything else touches them.

An id is 32 random bytes (256 bits, far beyond guessing range) in unpadded base64url, which is always 43
characters. Anything a client sends is checked against exactly that shape before a store sees it: the id becomes
part of a memcached key, and memcached's text protocol (and aiomcache's key check, which raises on it) cannot take
spaces, control characters, non-ASCII or keys over 250 bytes. A forged id of the right shape is harmless: it is
simply not found.
"""

from __future__ import annotations

import re
import secrets

SESSION_ID_BYTES = 32
SESSION_ID_LENGTH = 43  # len(base64url(32 bytes)) without the "=" padding

# ASCII-only on purpose: \w would admit Unicode letters and digits.
_SESSION_ID = re.compile(rf"[A-Za-z0-9_-]{{{SESSION_ID_LENGTH}}}")


def new_session_id() -> str:
    """A fresh, unguessable session id (``secrets.token_urlsafe(32)``)."""
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def is_valid_session_id(value: str) -> bool:
    """Whether ``value`` has the exact shape of an id we mint: 43 base64url characters, nothing else.

    ``fullmatch`` rather than ``match`` with ``$``, which would also accept a trailing newline.
    """
    return len(value) == SESSION_ID_LENGTH and _SESSION_ID.fullmatch(value) is not None
