"""The master's supervision: the gateway process's life cycle, the worker pool and systemd integration.

The master runs the event loop too (``gateway.loop``); it never imports the worker side (``gateway.worker``),
only the contract both share (``gateway.contract``).
"""
