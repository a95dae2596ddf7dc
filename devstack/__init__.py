"""Development tooling, outside the installed package: a private nginx, gateway and memcached processes on
loopback, shared by ``make run``, the tests and the benchmarks."""
