"""Benchmarks: throughput and slow-client comparisons against peers, and the slowloris load tool.

This package must stay importable by the peers' own virtualenv (``benchmarks/.peers-venv``), whose python runs
``benchmarks.apps``, ``benchmarks.launchers`` and ``benchmarks.charts`` without our project's dependencies: so
nothing is imported here.
"""
