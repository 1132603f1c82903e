"""opensmtpd-table: play smtpd's side against any table backend, by hand.

    opensmtpd-table [--protocol native|imsg|2020] [--form-2020 named|unnamed] \\
        [--table NAME] [--config ARG] [--key SERVICE=KEY ...] [--smtpd-version V] \\
        -- COMMAND [ARGS...] {check SERVICE KEY | lookup SERVICE KEY | fetch SERVICE |
                              update | conform}
    opensmtpd-table install {procexec|consul|prometheus} [--libexec DIR] [...]
        (for pip installs: puts a launcher where smtpd looks; see docs/getting-started.md)

The action comes after the command: ``opensmtpd-table -- ./table.py lookup alias root``.
Exit status: 0 found/ok, 1 not-found, 2 error reply, 3 smtpd would exit or hang, 64 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..table.conformance import Battery, summary
from ..table.driver import BackendExited, BackendTimeout, Driver, describe_reply
from ..table.wire.events import Error, NotFound, Op
from ..table.wire.procexec2020 import FORMS
from ..table.wire.services import Service
from ..wire import ProtocolViolation

ACTIONS = {"check": 2, "lookup": 2, "fetch": 1, "update": 0, "conform": 0}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)  # exit status 64, not argparse's 2 (= an error reply)


def split_action(words: Sequence[str]) -> tuple[list[str], str, list[str]]:
    """Split ``COMMAND ARGS... ACTION [PARAMS]`` at the last action word that fits."""
    for i in range(len(words) - 1, 0, -1):
        arity = ACTIONS.get(words[i])
        if arity is not None and len(words) - i - 1 == arity:
            return list(words[:i]), words[i], list(words[i + 1:])
    raise UsageError("after the command, give one of: check SERVICE KEY, lookup SERVICE KEY, "
                     "fetch SERVICE, update, conform")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], str, list[str]]:
    parser = _Parser(
        prog="opensmtpd-table", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=("native", "imsg", "2020"), default="native",
                        help="the smtpd generation to play: native (>= 7.6), imsg (<= 7.5), "
                             "2020 (the seed's procexec dialect); default native")
    parser.add_argument("--form-2020", choices=FORMS, default="named",
                        help="2020 requests with the table name after the timestamp (named: "
                             "the article's form, what go/py-opensmtpd parse) or without it "
                             "(unnamed: the never-merged C table-procexec); default named")
    parser.add_argument("--table", default="test",
                        help="table name sent to the backend (default: test)")
    parser.add_argument("--config", help="argv[1] for the backend, as in 'table NAME BACKEND:ARG'")
    parser.add_argument("--key", action="append", default=[], metavar="SERVICE=KEY",
                        help="conform: probe SERVICE with KEY (e.g. one the table holds) "
                             "instead of the built-in probe key; repeatable")
    parser.add_argument("--smtpd-version", default="7.6.0-portable",
                        help="the version announced in the native handshake "
                             "(config|smtpd-version); default 7.6.0-portable")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each reply (smtpd itself waits forever)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...] ACTION ...")
    args = parser.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if not rest:
        raise UsageError("give the backend command after --")
    command, action, params = split_action(rest)
    return args, command, action, params


def _service(name: str) -> Service:
    service = Service.from_name(name.lower())
    if service is None:
        raise UsageError(f"unknown service {name!r}; known: {', '.join(Service)}")
    return service


def probe_keys(options: Sequence[str]) -> dict[Service, str]:
    """``--key SERVICE=KEY`` options, checked."""
    keys = {}
    for option in options:
        name, sep, key = option.partition("=")
        if not sep or not key:
            raise UsageError(f"--key {option!r}: expected SERVICE=KEY, e.g. --key alias=root")
        keys[_service(name)] = key
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words[:1] == ["install"]:  # opensmtpd-table install PRODUCT [...]
        from ..install import main as install

        return install(words[1:])
    try:
        args, command, action, params = parse_args(words)
        service = _service(params[0]) if params else None
        keys = probe_keys(args.key)
    except UsageError as exc:
        print(f"opensmtpd-table: {exc}", file=sys.stderr)
        return 64

    def start() -> Driver:
        return Driver(command, protocol=args.protocol, table=args.table, config=args.config,
                      timeout=args.timeout, form_2020=args.form_2020,
                      smtpd_version=args.smtpd_version)

    if action == "conform":
        results = []
        for result in Battery(start, args.protocol, keys).run():
            print(result, flush=True)
            results.append(result)
        print(summary(results))
        return 0 if all(r.status != "FAIL" for r in results) else 3
    try:
        with start() as driver:
            reply = driver.query(Op(action), service, params[1] if len(params) > 1 else None)
    except (ProtocolViolation, BackendExited) as exc:
        print(f"smtpd would exit: {exc}", file=sys.stderr)
        return 3
    except BackendTimeout as exc:
        print(f"smtpd would hang: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"opensmtpd-table: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 3
    hidden = service in (Service.CREDENTIALS,) and getattr(reply, "value", None)
    print("found <value hidden: credentials>" if hidden else describe_reply(reply))
    if isinstance(reply, Error):
        return 2
    return 1 if isinstance(reply, NotFound) else 0


if __name__ == "__main__":
    sys.exit(main())
