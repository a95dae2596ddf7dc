"""An asyncio gateway that serves WSGI applications over FastCGI and uwsgi.

One event loop (uvloop) accepts connections and buffers each request whole; a pool of worker processes runs the
WSGI application; the loop writes responses back with flow control. See ARCHITECTURE.md for the request path.
"""

__version__ = "0.1.0"
