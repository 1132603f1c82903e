"""The filter's end of the pipe, sans-IO: smtpd's bytes in, events out; answers in, bytes
out. Reference: filter-protocol.md §0–§5.

    side = FilterSide()
    side.receive_data(data)
    while (event := side.next_event()) is not None:
        ...
        out = side.send(Result(query, reject("550 5.7.1 No")))

Every line this side writes is one smtpd accepts (§5.1: it exits on anything else):
``send`` refuses a decision smtpd would refuse (``InvalidDecision``), registers only
names and subsystems this smtpd knows, keeps data lines dot-stuffed and cut to what smtpd
takes back, and orders the ids as the query's version wants.
"""

from __future__ import annotations

from collections import deque

from ...wire import ENCODING, ERRORS
from .dataline import END, for_smtpd
from .decisions import PROCEED, fit, to_wire
from .events import (
    PHASES,
    REPORT_EVENTS,
    SMTP_IN,
    SMTP_OUT,
    SUBSYSTEMS,
    Answer,
    Config,
    DataLines,
    Event,
    Malformed,
    Registration,
    Result,
)
from .parse import excerpt, max_line, order, parse_config, parse_line, parse_report

# smtpd -> filter lines reach ~66 KB (a 65535-byte DATA line plus the prefix, §5.6).
# Anything far beyond is not from smtpd: it is dropped, so memory stays bounded.
MAX_LINE = 256 * 1024
# smtpd sends about six config lines (§2.1); more are ignored and values are cut, so the
# handshake state stays bounded whatever arrives (docs/limits.md).
MAX_CONFIG_ITEMS = 64
MAX_CONFIG_VALUE = 2048
MIN_ROOM = 1024  # bytes of a data line per output line, whatever the ids' length
_KEEP = 1024  # of a line past MAX_LINE: enough to say what it was


class FilterSide:
    """The filter's end: ``receive_data(bytes)``, ``next_event()`` (or ``next_events()``),
    ``send(event)``.

    Lines are split at ``\\n`` only (smtpd does so too, §0). Until ``config|ready`` the
    lines are configuration; the ``Config`` event marks the end of the handshake, and
    ``config`` keeps it (what smtpd is decides what ``send`` may write).
    """

    __slots__ = ("_buffer", "_config", "_overlong", "_ready", "_skipping", "config")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ready: deque[Event] = deque()  # parsed, not yet handed out
        self._skipping = False  # inside a line longer than MAX_LINE
        self._overlong = False  # the first buffered line is the head of such a line
        self._config: list[tuple[str, str]] = []
        self.config: Config | None = None

    # --- smtpd -> filter ---

    def receive_data(self, data: bytes) -> None:
        """Bytes from smtpd, in any pieces."""
        buf = self._buffer
        if self._skipping:  # drop the rest of an overlong line, up to its newline
            end = data.find(b"\n")
            if end < 0:
                return
            self._skipping, data = False, data[end:]
        buf += data
        if len(buf) > MAX_LINE:
            start = buf.rfind(b"\n") + 1
            if len(buf) - start > MAX_LINE:
                self._parse(start)  # the complete lines before it go first
                del buf[_KEEP:]
                self._skipping = self._overlong = True

    def next_event(self) -> Event | None:
        """The next event, or None until more data completes a line. Never raises."""
        ready = self._ready
        if not ready:
            end = self._buffer.rfind(b"\n")
            if end < 0:
                return None
            self._parse(end + 1)
            if not ready:
                return None
        return ready.popleft()

    def next_events(self) -> list[Event]:
        """Every event complete so far, at once: what ``next_event`` would return one
        call at a time (a runtime's hot path). Never raises."""
        end = self._buffer.rfind(b"\n")
        if end >= 0:
            self._parse(end + 1)
        ready = self._ready
        if not ready:
            return []
        out = list(ready)
        ready.clear()
        return out

    def discard(self) -> int:
        """Drop buffered input and parsed events; how many bytes were dropped."""
        dropped = len(self._buffer)
        del self._buffer[:]
        self._ready.clear()
        self._skipping = self._overlong = False
        return dropped

    def _parse(self, end: int) -> None:
        """Parse ``buffer[:end]``, complete lines, into events (hot path: one batch). A
        bug here costs the lines of this batch, never the process (smtpd exits with it)."""
        try:
            self._parse_lines(end)
        except Exception as exc:
            dropped = self.discard()
            self._ready.append(Malformed(f"internal error parsing smtpd's input "
                                         f"({type(exc).__name__}): {dropped} bytes dropped", ""))

    def _parse_lines(self, end: int) -> None:
        if end == 0:
            return
        buf = self._buffer
        lines = buf[:end - 1].decode(ENCODING, ERRORS).split("\n")
        del buf[:end]
        ready = self._ready
        if self._overlong:
            self._overlong = False
            ready.append(Malformed(f"line longer than {MAX_LINE} bytes dropped",
                                   excerpt(lines[0])))
            del lines[0]
        if self.config is None:
            self._handshake(lines)
            return
        report = parse_report
        ready.extend([report(line) if line[:7] == "report|" else parse_line(line)
                      for line in lines])

    def _handshake(self, lines: list[str]) -> None:
        ready = self._ready
        for index, line in enumerate(lines):
            if self.config is not None:
                ready.extend(parse_line(rest) for rest in lines[index:])
                return
            if line == "config|ready":
                self.config = parse_config(self._config)
                ready.append(self.config)
                continue
            head, _, rest = line.partition("|")
            key, bar, value = rest.partition("|")
            if head != "config" or not key:
                ready.append(Malformed("expected config|… before config|ready",
                                       excerpt(line)))
            elif len(self._config) < MAX_CONFIG_ITEMS:
                self._config.append((key[:64], value[:MAX_CONFIG_VALUE] if bar else ""))

    # --- filter -> smtpd ---

    def send(self, event: Answer) -> bytes:
        """The bytes for smtpd (each line ending in ``\\n``).

        Raises ``InvalidDecision`` for a decision smtpd would refuse in the query's phase
        (or one of smtpd >= 7.6 with an older smtpd), ``ValueError`` for a data line
        holding a newline or text that cannot be encoded.
        """
        kind = type(event)
        if kind is DataLines:
            return self._datalines(event)  # type: ignore[arg-type]
        if kind is Result:
            return self._result(event)  # type: ignore[arg-type]
        if kind is Registration:
            return self._registration(event)  # type: ignore[arg-type]
        raise TypeError(f"a filter sends Registration, Result or DataLines, not {kind.__name__}")

    def _result(self, result: Result) -> bytes:
        query, decision = result.query, result.decision
        if decision is None or decision is PROCEED:
            answer = "proceed"
        else:
            config = self.config
            answer = to_wire(decision, query.phase, report_allowed=config is not None
                             and config.accepts_report_decision)
        head = "filter-result|" + order(query.version, query.session, query.token)
        return (fit(head, answer, max_line(query.version)) + "\n").encode(ENCODING, ERRORS)

    def _datalines(self, event: DataLines) -> bytes:
        """Stuffed (§4.3), cut to what smtpd takes back whole (§5.6), ``.`` at the end."""
        query = event.query
        head = f"filter-dataline|{order(query.version, query.session, query.token)}|"
        lines = event.lines
        if len(lines) == 1 and not event.end:  # the common case: one short line back
            text = lines[0]
            if len(text) < 512 and text[:1] != "." and "\n" not in text:
                return (head + text + "\n").encode(ENCODING, ERRORS)
        room = 0
        out = []
        for text in lines:
            if len(text) < 512 and text[:1] != "." and "\n" not in text:
                out.append(head + text)
                continue
            if "\n" in text:
                raise ValueError("a data line must not hold a newline")
            if not room:  # ids far longer than smtpd's must not split a line a thousandfold
                room = max(max_line(query.version) - len(head.encode(ENCODING, ERRORS)),
                           MIN_ROOM)
            out.extend(head + piece for piece in for_smtpd(text, room))
        if event.end:
            out.append(head + END)
        return ("\n".join(out) + "\n").encode(ENCODING, ERRORS) if out else b""

    def _registration(self, event: Registration) -> bytes:
        """``register|…`` lines, ``register|ready`` last (§2.2).

        Only names smtpd knows (an unknown one is fatal), each once (a duplicate doubles
        the events), ``*`` alone when given, smtp-out only when smtpd announced it (fatal
        on 6.6), filter phases only for smtp-in and only those this smtpd accepts (``wiz``
        is fatal from 7.9 on: ``Config.accepts_phase``).
        """
        config = self.config if self.config is not None else Config()
        lines: list[str] = []
        for subsystem in SUBSYSTEMS:
            events = event.reports.get(subsystem)
            if not events:
                continue
            if subsystem == SMTP_OUT and SMTP_OUT not in config.subsystems:
                continue
            names = ("*",) if "*" in events else [e for e in REPORT_EVENTS if e in events]
            lines.extend(f"register|report|{subsystem}|{name}" for name in names)
        lines.extend(f"register|filter|{SMTP_IN}|{phase}" for phase in PHASES
                     if phase in event.phases and config.accepts_phase(phase))
        lines.append("register|ready")
        return ("\n".join(lines) + "\n").encode(ENCODING, ERRORS)
