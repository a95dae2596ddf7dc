"""Development tooling, outside the installed package: private nginx, gateway, memcached and nutcracker processes on
loopback, shared by ``make run`` (``python -m devstack``), the tests and the benchmarks.

``ports`` (race-free loopback ports, waiting for a server's own listener), ``processes`` (StackError, stopping and
reaping, GatewayProcess with sd_notify readiness), ``nginx`` (the one config renderer and the Nginx helper),
``servers`` (memcached, nutcracker), ``stack`` (``make run``).
"""
