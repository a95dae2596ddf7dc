"""Wire codecs for the protocols a web server speaks to the gateway.

Everything below this package is sans-IO: bytes in, events out; calls in, bytes out. No asyncio, no sockets, no
clock, so each codec can be tested exhaustively and reused by any I/O layer (the gateway, the test clients, the
benchmark load tool).
"""
