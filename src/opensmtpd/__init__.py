"""py-opensmtpd: extend OpenSMTPD in Python (table backends, filters)."""

__version__ = "0.1.0"
