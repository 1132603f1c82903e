"""Test harnesses: a real smtpd per root filesystem (smtpd.py) and real Consul agents
(consul.py). They start, stop and wipe smtpd and its spool: never installed, used by the
tests, the benches and the demo only."""
