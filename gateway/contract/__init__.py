"""The contract between the event loop's process and a worker process: both import it, neither imports the other.

``channel`` is the framing of the socket pair between them, ``exits`` the statuses a process ends with, and
``startup`` what a worker is told when it starts.
"""
