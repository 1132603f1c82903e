"""filter-prometheus: OpenSMTPD smtp-in and smtp-out activity as Prometheus metrics."""
