"""The /metrics port's default bounds, in one place: read by the server (which needs
prometheus_client) and by the command line (which must run without it, to explain that
it is missing)."""

MAX_CONNECTIONS = 16  # connections served at once, one thread each
IDLE_TIMEOUT = 10.0  # seconds a read or write of one connection may wait
