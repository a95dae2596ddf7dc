"""The session cookie: finding our id in a request's Cookie header, and writing Set-Cookie values.

Parsing is deliberately forgiving (a Cookie header is client input and may hold anything: other applications'
cookies, duplicates of ours set for another path or domain, garbage); it never raises and only ever returns an id
that passed :func:`gateway.sessions.ids.is_valid_session_id`. Writing is strict: settings are validated once, when they
are made, so that no header value can ever be split or smuggled through them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.sessions.ids import is_valid_session_id

SameSite = Literal["Lax", "Strict", "None"]
SecureMode = Literal["auto", "always", "never"]

# RFC 6265 section 4.1.1 makes a cookie name an RFC 2616 token: visible ASCII except separators.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Path and Domain attribute values: visible ASCII except ";" (which would start another attribute) and ",".
_ATTRIBUTE_VALUE = re.compile(r"[!-+\--:<-~]+")
_PAST = "Thu, 01 Jan 1970 00:00:00 GMT"


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """How the session cookie is named and scoped.

    ``secure="auto"`` marks the cookie Secure exactly when the request came over HTTPS (as nginx reports it in the
    ``HTTPS`` / ``REQUEST_SCHEME`` params), so one configuration works behind both an HTTP and an HTTPS listener.
    """

    name: str = "gwsession"
    domain: str | None = None
    path: str = "/"
    same_site: SameSite = "Lax"
    secure: SecureMode = "auto"

    def __post_init__(self) -> None:
        if not _TOKEN.fullmatch(self.name):
            raise ValueError(f"cookie name {self.name!r} must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)")
        if self.domain is not None and not _ATTRIBUTE_VALUE.fullmatch(self.domain):
            raise ValueError(f"cookie domain {self.domain!r} must be visible ASCII without ';' or ','")
        if not self.path.startswith("/") or not _ATTRIBUTE_VALUE.fullmatch(self.path):
            raise ValueError(f"cookie path {self.path!r} must start with '/' and be visible ASCII without ';' or ','")
        if self.same_site not in ("Lax", "Strict", "None"):
            raise ValueError(f"same_site must be 'Lax', 'Strict' or 'None', not {self.same_site!r}")
        if self.secure not in ("auto", "always", "never"):
            raise ValueError(f"secure must be 'auto', 'always' or 'never', not {self.secure!r}")
        if self.same_site == "None" and self.secure == "never":
            # Browsers drop a SameSite=None cookie that is not also Secure.
            raise ValueError("same_site='None' needs a Secure cookie: use secure='auto' or 'always'")


#: Well-formed session ids of one request tried against the store, at most: each costs a load.
MAX_SESSION_CANDIDATES = 4


def session_ids_from_cookies(cookie_header: str, settings: CookieSettings) -> list[str]:
    """The distinct well-formed session ids among the cookies named ``settings.name``, in order, at most
    ``MAX_SESSION_CANDIDATES``.

    A browser sends several cookies of the same name when they were set for different paths or domains (most
    specific first), and anyone who can set a cookie on a sibling domain can add one in front of ours
    (``gwsession=forged; gwsession=real``). So neither a malformed nor a well-formed but unknown id may hide a
    good one behind it: the gateway uses the first that loads, and starts a new session only when none does.
    """
    found: list[str] = []
    for pair in cookie_header.split(";"):
        name, equals, value = pair.partition("=")
        if not equals or name.strip() != settings.name:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':  # RFC 6265 allows a quoted cookie-value
            value = value[1:-1]
        if is_valid_session_id(value) and value not in found:
            found.append(value)
            if len(found) == MAX_SESSION_CANDIDATES:
                break
    return found


def session_id_from_cookies(cookie_header: str, settings: CookieSettings) -> str | None:
    """The first well-formed session id among the cookies named ``settings.name``, or None."""
    found = session_ids_from_cookies(cookie_header, settings)
    return found[0] if found else None


def request_is_https(params: Mapping[str, str]) -> bool:
    """Whether the client reached the front server over HTTPS, from the CGI-style params nginx sends."""
    return params.get("HTTPS", "").lower() in ("on", "1") or params.get("REQUEST_SCHEME", "").lower() == "https"


def set_cookie_value(settings: CookieSettings, session_id: str, *, https: bool, max_age: int | None) -> str:
    """The value of a Set-Cookie header that hands ``session_id`` to the client.

    Always HttpOnly: scripts have no business reading the session id. ``max_age=None`` makes a browser-session
    cookie (gone when the browser closes); the store's own expiry applies either way.
    """
    if not is_valid_session_id(session_id):
        raise ValueError("refusing to put a malformed session id in a Set-Cookie header")
    if max_age is not None and max_age < 0:
        raise ValueError(f"max_age must be >= 0 seconds, not {max_age}")
    parts = [f"{settings.name}={session_id}"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    parts.extend(_attributes(settings, https=https))
    return "; ".join(parts)


def delete_cookie_value(settings: CookieSettings, *, https: bool) -> str:
    """The value of a Set-Cookie header that makes the client forget the session cookie.

    Max-Age=0 for current browsers, an Expires date in the past for the ones that predate Max-Age; Path and
    Domain must be the ones the cookie was set with, or the browser would treat this as a different cookie.
    """
    return "; ".join([f"{settings.name}=", "Max-Age=0", f"Expires={_PAST}", *_attributes(settings, https=https)])


def _attributes(settings: CookieSettings, *, https: bool) -> list[str]:
    attributes = [f"Path={settings.path}"]
    if settings.domain is not None:
        attributes.append(f"Domain={settings.domain}")
    if settings.secure == "always" or (settings.secure == "auto" and https):
        attributes.append("Secure")
    attributes.append("HttpOnly")
    attributes.append(f"SameSite={settings.same_site}")
    return attributes
