"""The modern table API: handlers per service that return their answer.

    from opensmtpd.table import Table, TempFail

    table = Table()

    @table.lookup("alias")
    def alias(key):
        return ALIASES.get(key)          # str, several str, or None (not found)

    @table.check("domain")
    def local_domain(key):
        return key in DOMAINS            # bool

    table.run()                          # any smtpd generation, detected on stdin

Handlers may be plain functions or ``async def``. A handler fails one way: by raising
(``TempFail("reason")`` gives the reason smtpd logs; any other exception is logged with
its type). That, a missed deadline or a value smtpd could not parse makes the request
fail temporarily (4xx to the SMTP client): never a bounce, never a crash.

``run()`` hands the table to the runtime (``_runtime``), which needs only what
``_runtime.Served`` describes: this module is never imported by it.
"""

from __future__ import annotations

import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Literal

from ..smtpd_version import SmtpdVersion, parse_smtpd_version
from .metrics import TableMetrics
from .metrics import directory as metrics_directory
from .wire.events import REPLY_TYPES, Error, Found, Hello, NotFound, Op, Reply, Request, Updated
from .wire.services import ALL_BUT_AUTH, InvalidValue, Service, validate_value

log = logging.getLogger("opensmtpd.table")
_OFF = TableMetrics.off()

DEFAULT_DEADLINE = 5.0
# Validated lookup answers kept per service, keyed by value: a hit skips the checks and
# the allocation. Bounded: each service's cleared when full (13 services: at most 13,312
# values of up to 1,024 characters); long values are not kept.
FOUND_CACHE_SIZE = 1024
FOUND_CACHE_MAX_VALUE = 1024
_UPDATE, _CHECK, _LOOKUP, _FETCH = Op.UPDATE, Op.CHECK, Op.LOOKUP, Op.FETCH
Handler = Callable[..., Any]
_NO_VALUES: dict[str, Found] = {}


class TempFail(Exception):
    """Raise from a handler for a temporary failure: smtpd answers 4xx, the sender retries."""


def _services(names: Iterable[Service | str]) -> tuple[Service, ...]:
    result = []
    for name in names:
        service = Service.from_name(str(name).lower())
        if service is None:
            raise ValueError(f"unknown service {name!r}; known: {', '.join(Service)}")
        result.append(service)
    return tuple(result)


def _wants_request(fn: Handler) -> bool:
    try:
        return "request" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _Registered:
    __slots__ = ("fn", "found", "is_async", "plain", "wants_request")

    def __init__(self, fn: Handler, found: dict[str, Found]) -> None:
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.wants_request = _wants_request(fn)
        self.plain = not (self.is_async or self.wants_request)  # fn(key) or fn(): hot path
        self.found = found  # the service's validated lookup answers (Table._found)


class Table:
    """A table backend: register handlers per operation and service, then ``run()``.

    ``deadline`` bounds each request (seconds): past it smtpd gets a temporary error.
    ``unregistered`` is the answer for services with no handler ("error" or "not-found");
    smtpd >= 7.6 sends them even though they were not registered.

    Once smtpd has spoken, ``protocol`` is the generation detected ("native" for 7.6+,
    "imsg" for <= 7.5, "2020") and ``smtpd_version`` what smtpd announced (native only:
    imsg and the 2020 dialect carry no version), e.g. ``SmtpdVersion(7, 9, 0)``, or None.
    """

    protocol: str | None = None
    smtpd_version: SmtpdVersion | None = None
    metrics: TableMetrics = _OFF  # on with OPENSMTPD_METRICS_DIR (docs/monitoring.md)

    def __init__(self, name: str | None = None, *, deadline: float = DEFAULT_DEADLINE,
                 unregistered: Literal["error", "not-found"] = "error") -> None:
        if unregistered not in ("error", "not-found"):
            raise ValueError("unregistered must be 'error' or 'not-found'")
        if not deadline > 0:
            raise ValueError("deadline must be a positive number of seconds")
        self.name = name
        self.deadline = float(deadline)
        self.unregistered = unregistered
        self._handlers: dict[tuple[Op, Service], _Registered] = {}
        self._update: _Registered | None = None
        self._rotation: dict[Service, itertools.count[int]] = {}
        self._found: dict[Service | None, dict[str, Found]] = {}  # service -> value -> Found

    # --- registration ---

    def on(self, op: Op | str, services: Iterable[Service | str], fn: Handler) -> Handler:
        op = Op(op)
        if op is Op.UPDATE:
            self._update = _Registered(fn, {})
            return fn
        chosen = _services(services) or ALL_BUT_AUTH
        for service in chosen:
            self._handlers[(op, service)] = _Registered(fn, self._found.setdefault(service, {}))
        return fn

    def _decorator(self, op: Op,
                   services: tuple[Service | str, ...]) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            return self.on(op, services, fn)
        return register

    def check(self, *services: Service | str) -> Callable[[Handler], Handler]:
        """Handler ``fn(key) -> bool``. No service given: every service but auth."""
        return self._decorator(Op.CHECK, services)

    def lookup(self, *services: Service | str) -> Callable[[Handler], Handler]:
        """Handler ``fn(key) -> str | list[str] | None``."""
        return self._decorator(Op.LOOKUP, services)

    def fetch(self, *services: Service | str) -> Callable[[Handler], Handler]:
        """Handler ``fn() -> str | list[str] | None``; a list is served in rotation."""
        return self._decorator(Op.FETCH, services)

    def update(self, fn: Handler) -> Handler:
        """Handler ``fn() -> None`` run on ``smtpctl update table NAME``."""
        self._update = _Registered(fn, {})
        return fn

    @property
    def services(self) -> tuple[Service, ...]:
        """What to register with smtpd >= 7.6: the services that have a handler."""
        return tuple(dict.fromkeys(service for _, service in self._handlers))

    # --- what the runtime calls ---

    def handshake(self, protocol: str, hello: Hello | None) -> None:
        """The generation is known (``hello`` None), then smtpd's handshake is over."""
        self.protocol = protocol
        if hello is None:
            if metrics_directory() is not None:  # named once smtpd said the table's name
                self.metrics = TableMetrics(self.name or "")
            return
        self.smtpd_version = parse_smtpd_version(hello.smtpd_version)
        if self.metrics.enabled and hello.table:
            self.metrics.rename(self.name or hello.table)

    def answer(self, request: Request) -> Reply | Coroutine[Any, Any, Reply]:
        """The reply to ``request``; a coroutine when its handler is ``async def``."""
        op, _, _, service, key, _ = request
        registered = self._handlers.get((op, service))  # type: ignore[arg-type]  # None: no entry
        if registered is not None and registered.plain:  # the hot path: fn(key), sync
            try:
                result = registered.fn(key) if key is not None else registered.fn()
            except Exception as exc:
                return self.failure(request, exc)
            if type(result) is str and op is _LOOKUP:  # answered before: validated already
                found = registered.found.get(result)
                if found is not None:
                    return found
            return self.convert(request, result)
        return self._answer_other(request, registered)

    def _answer_other(self, request: Request, registered: _Registered | None,
                      ) -> Reply | Coroutine[Any, Any, Reply]:
        """An update, a service with no handler, a handler async or taking ``request``."""
        op = request.op
        if op is _UPDATE:
            registered = self._update
            if registered is None:  # no handler: nothing to reload
                return Updated()
        elif request.service is None:
            return Error(f"unknown service {request.raw_service!r}")
        elif registered is None:
            if self.unregistered == "not-found":
                return NotFound()
            return Error(f"no {op} handler for service {request.service}")
        key = request.key
        if registered.is_async:
            args: tuple[Any, ...] = (key,) if key is not None else ()
            kwargs = {"request": request} if registered.wants_request else {}
            return self._answer_async(request, registered.fn(*args, **kwargs))
        fn = registered.fn
        try:  # spelled out: no args tuple or kwargs dict (table-consul's handlers take request)
            if registered.wants_request:
                result = fn(key, request=request) if key is not None else fn(request=request)
            else:
                result = fn(key) if key is not None else fn()
        except Exception as exc:
            return self.failure(request, exc)
        return self.convert(request, result)

    async def _answer_async(self, request: Request, pending: Awaitable[Any]) -> Reply:
        try:
            result = await pending
        except Exception as exc:
            return self.failure(request, exc)
        return self.convert(request, result)

    def failure(self, request: Request, exc: BaseException) -> Error:
        """The reply to a handler that raised ``exc`` (logged, secrets kept out)."""
        if self.metrics.enabled:
            self.metrics.handler_raised(request.op.value, request.service_label)
        if isinstance(exc, TempFail):
            reason = str(exc) or "temporary failure"
            if request.service is Service.AUTH:
                reason = "temporary failure"
            log.warning("%s: temporary failure: %s", request.describe(), reason)
            return Error(reason)
        # an exception's text may quote what the handler held: a password, a hash
        detail = "" if request.service in (Service.AUTH, Service.CREDENTIALS) else f": {exc}"
        log.error("%s: handler raised %s%s", request.describe(), type(exc).__name__, detail)
        return Error(f"handler raised {type(exc).__name__}")

    def convert(self, request: Request, result: Any) -> Reply:
        """Turn a handler's return value into a reply smtpd can parse, or an error."""
        op, service = request.op, request.service
        if type(result) is str and op is _LOOKUP:  # answered before: validated already
            found = self._found.get(service, _NO_VALUES).get(result)
            if found is not None:
                return found
        if isinstance(result, REPLY_TYPES):  # before UPDATE: never "ok" for a returned Error
            return self._invalid(request, f"{op} handler returned {type(result).__name__}: a "
                                          "handler fails by raising (TempFail)")
        if op is _UPDATE:
            return Updated()
        assert service is not None
        if op is _CHECK:
            if result is None or isinstance(result, bool):
                return Found() if result else NotFound()
            return self._invalid(request, f"check handler returned {type(result).__name__}, "
                                          "expected bool")
        if result is None:
            return NotFound()
        values = [result] if isinstance(result, str) else result
        if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
            return self._invalid(request, f"{op} handler returned {type(result).__name__}, "
                                          "expected str, a list of str or None")
        if not values:
            return NotFound()
        if op is _FETCH:
            turn = next(self._rotation.setdefault(service, itertools.count()))
            value = values[turn % len(values)]
        elif len(values) == 1:
            value = values[0]
        elif service.is_list:
            value = ", ".join(values)
        else:
            return self._invalid(request, f"{len(values)} values for {service}, which takes one")
        try:
            validate_value(service, value)
        except InvalidValue as exc:
            return self._invalid(request, str(exc))
        found = Found(value)
        if op is _LOOKUP and type(result) is str and len(value) <= FOUND_CACHE_MAX_VALUE:
            cache = self._found.setdefault(service, {})
            if len(cache) >= FOUND_CACHE_SIZE:
                cache.clear()  # in place: the handlers of the service hold this dict
            cache[value] = found
        return found

    def _invalid(self, request: Request, reason: str) -> Error:
        log.error("%s: invalid answer: %s", request.describe(), reason)
        return Error(f"invalid answer: {reason}")

    def run(self, protocol: str | None = None) -> None:
        """Serve smtpd on stdin/stdout until EOF (any generation, detected)."""
        from ._runtime import serve

        serve(self, protocol=protocol)
