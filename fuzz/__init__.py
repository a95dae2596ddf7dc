"""Fuzzers that stay (``make fuzz``; a seconds-long smoke of each runs in the suite, tests/test_fuzz_smoke.py).

- ``fuzz.codecs``: coverage-guided (atheris) fuzzing of the FastCGI and uwsgi codecs and the channel's frame
  decoder, with the rule "parse or raise the protocol error, nothing else, and never hold more than the limits
  allow". It runs the codecs' Python sources (the compiled build is the same source, but atheris only sees the
  coverage of bytecode).
- ``fuzz.gateway``: a structured mutation fuzzer against a running gateway over both protocols, while a checker
  sends correct requests and verifies every answer byte for byte; then the master's descriptors and memory are
  compared with their baseline.

Crashes and slow inputs found become regression tests (tests/test_fuzz_regressions.py).
"""
