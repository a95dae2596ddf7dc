"""``--static URL=DIR`` and ``--static URL=package:dir``: a URL prefix and the directory that holds its files.

One parser for both users of a mapping: the web-server rules (``python -m gateway rules``), which tell nginx,
Apache or lighttpd to serve the directory themselves, and the event loop's own static server
(``gateway/loop/static.py``). ``package:dir`` names a directory inside an installed Python package, as Nagare
maps each package's ``static/``; it is resolved once, when the setting is read, to the absolute directory.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

from gateway.config.errors import ConfigError

_PACKAGE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


@dataclass(frozen=True, slots=True)
class StaticMount:
    """Files under ``directory`` answer URLs under ``url`` (``/static``, never with a trailing slash).

    As read, a relative directory is kept as written; :meth:`resolved` makes it absolute once the app's directory
    (``--chdir``) is known, which is what the loop serves and the rules print.
    """

    url: str
    directory: str
    #: As written (``/static=myapp:static``), so the configuration prints back the way the operator wrote it.
    text: str

    def __str__(self) -> str:
        return self.text

    def resolved(self, base: str) -> StaticMount:
        """This mapping with its directory made absolute from ``base`` (the app's directory), symlinks resolved,
        checked to be a directory; a ConfigError otherwise."""
        directory = os.path.realpath(os.path.join(base, self.directory))
        if not os.path.isdir(directory):
            raise ConfigError(f"--static {self.text!r}: {directory} is not a directory")
        return StaticMount(self.url, directory, self.text)


def _package_directory(package: str, relative: str) -> str:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"package {package!r} cannot be found: {err}") from None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{package!r} is not an installed package")
    return os.path.join(next(iter(spec.submodule_search_locations)), relative)


def parse_static(text: str) -> tuple[StaticMount, ...]:
    """One ``URL=DIR`` or ``URL=package:dir``; the directory is checked by :meth:`StaticMount.resolved`, at start
    (a typo fails then, not per request)."""
    url, sep, target = text.partition("=")
    if not sep or not url.startswith("/") or not target:
        raise ConfigError(f"--static {text!r} is not URL=DIR or URL=package:dir, e.g. /static=/srv/app/static")
    url = url.rstrip("/")
    if not url or "//" in url or "/../" in f"{url}/" or "/./" in f"{url}/":
        raise ConfigError(f"--static {text!r}: the URL must be a plain prefix such as /static (not /)")
    package, colon, relative = target.partition(":")
    if colon and _PACKAGE.match(package) and not target.startswith("/"):
        directory = _package_directory(package, relative)
    else:
        directory = target  # a relative DIR is read from --chdir's directory, as the other paths: see resolved()
    return (StaticMount(url, directory, text),)
