"""The event loop's side of the master process: listeners, front connections, buffered requests, dispatch,
the session hook and the access log. Nothing here runs in a worker."""
