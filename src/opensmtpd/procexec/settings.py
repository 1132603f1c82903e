"""table-procexec's settings: how the bridge treats its child (validated once, here)."""

from __future__ import annotations

from dataclasses import dataclass

from ..table.wire.procexec2020 import FORMS

PROTOCOLS = ("auto", "native", "2020")


@dataclass(frozen=True)
class Settings:
    """How the bridge treats its child; every duration is in seconds.

    ``protocol`` "auto": each child is first offered the 0.1 handshake; one that
    registers speaks 0.1 from then on. One that answers anything else, stays silent for
    ``handshake_timeout`` or exits is restarted at once and spoken to in the 2020
    dialect, which holds once the child answers a request with ``table-result|``; a 2020
    attempt that fails (exit, garbage, deadline) goes back to the 0.1 handshake
    (dialect.py).
    """

    protocol: str = "auto"
    form_2020: str = "named"  # or "unnamed": the never-merged C branch's requests (§2)
    deadline: float = 5.0
    handshake_timeout: float = 2.0  # a loaded host can take a second to start Python
    min_backoff: float = 0.25
    max_backoff: float = 5.0
    restart_after: int = 3  # consecutive deadline misses before a hung child is restarted

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, "
                             f"not {self.protocol!r}")
        if self.form_2020 not in FORMS:
            raise ValueError(f"form-2020 must be one of {', '.join(FORMS)}, "
                             f"not {self.form_2020!r}")
        for name in ("deadline", "handshake_timeout", "min_backoff", "max_backoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', '-')} must be a positive number of seconds")
        if self.max_backoff < self.min_backoff:
            raise ValueError("max-backoff must not be below min-backoff")
        if self.restart_after < 1:
            raise ValueError("restart-after must be at least 1")
