"""table-procexec: serve smtpd <= 7.5 (imsg) from a table program speaking the line protocol
of smtpd 7.6 or the seed's 2020 dialect, in any language. See docs/table-procexec.md."""

from .bridge import Bridge, Phase
from .settings import PROTOCOLS, Settings

__all__ = ["PROTOCOLS", "Bridge", "Phase", "Settings"]
