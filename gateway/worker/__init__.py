"""The worker process's side: import the app, run one buffered request at a time through PEP 3333, send the
response back over the channel. Never imported by the master (``tests/test_layout.py`` checks)."""
