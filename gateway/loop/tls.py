"""The TLS context the HTTP listeners serve with (``--certfile``/``--keyfile``), made before anything is bound.

Its own module so that the master loads the HTTP front (and the parser behind it) only when it serves HTTP,
while a bad certificate is still a configuration error at start-up, whatever the listeners.
"""

from __future__ import annotations

import ssl

from gateway.config.errors import ConfigError
from gateway.config.settings import Config


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of the HTTP listeners (``--certfile``/``--keyfile``), or None for plain HTTP."""
    if config.certfile is None and config.keyfile is None:
        return None
    if config.certfile is None or config.keyfile is None:
        raise ConfigError("--certfile and --keyfile go together: give both, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"--certfile/--keyfile: cannot load {config.certfile} with {config.keyfile}: {err}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context
