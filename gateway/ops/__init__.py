"""Tools the operator runs beside the gateway, never the event loop: ``rules`` (web-server configuration) and
``probe`` (one request over FastCGI or uwsgi, for health checks and debugging)."""
