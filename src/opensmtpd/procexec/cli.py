"""table-procexec: serve an smtpd <= 7.5 table from any line-protocol table program.

smtpd.conf (the executable must be PATH_LIBEXEC/table-procexec: Debian's
opensmtpd-table-procexec package or `opensmtpd-table install procexec` puts it there)::

    table aliases "procexec:/usr/local/bin/table-foobar -f /etc/mail/foobar.conf"

smtpd runs ``table-procexec`` with argv[0] = the table name and argv[1] = the whole child
command line, and speaks imsg on fd 0 only (docs/table-procexec.md, table-procexec(5)).
The command line is split like a shell would (quotes, backslashes; no variables, no
globbing, no shell) and run with argv[0] = the table name, the socket on fd 0 and fd 1,
stderr to a pipe whose lines reach smtpd's log prefixed with the table name: exactly as
smtpd 7.6 runs a table.

Options (for a launcher, or by hand; the environment variable in brackets is read when
the option is absent, so smtpd's environment can set it too):

  --protocol auto|native|2020  [TABLE_PROCEXEC_PROTOCOL]   default auto (probe the child)
  --form-2020 named|unnamed    [TABLE_PROCEXEC_FORM_2020]   default named (2020 requests
                               carry the table name, as go/py-opensmtpd expect)
  --deadline S                 [TABLE_PROCEXEC_DEADLINE]   default 5
  --handshake-timeout S        [TABLE_PROCEXEC_HANDSHAKE_TIMEOUT]   default 2
  --max-backoff S              [TABLE_PROCEXEC_MAX_BACKOFF]   default 5
  --restart-after N            [TABLE_PROCEXEC_RESTART_AFTER]   default 3

Only EOF on fd 0 ends it (exit 0, after stopping the child by its PID); SIGTERM and
SIGINT do the same.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..extras import self_test
from ..stdio import setup_logging, stderr_is_devnull
from ..table.wire.procexec2020 import FORMS
from .bridge import Bridge
from .runtime import Runtime
from .settings import PROTOCOLS, Settings

EX_USAGE = 64


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TABLE_PROCEXEC_{name}", default)


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Settings, list[str]]:
    parser = _Parser(prog="table-procexec", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=PROTOCOLS, default=_env("PROTOCOL", "auto"))
    parser.add_argument("--form-2020", choices=FORMS, default=_env("FORM_2020", "named"))
    parser.add_argument("--deadline", default=_env("DEADLINE", "5"))
    parser.add_argument("--handshake-timeout", default=_env("HANDSHAKE_TIMEOUT", "2"))
    parser.add_argument("--max-backoff", default=_env("MAX_BACKOFF", "5"))
    parser.add_argument("--restart-after", default=_env("RESTART_AFTER", "3"))
    parser.add_argument("--self-test", action="store_true",
                        help="print where the interpreter and the library are, then exit")
    parser.add_argument("command", nargs="?",
                        help="the child's command line, one argument (smtpd's argv[1])")
    args = parser.parse_args(argv)
    try:
        settings = Settings(
            protocol=args.protocol, form_2020=args.form_2020, deadline=float(args.deadline),
            handshake_timeout=float(args.handshake_timeout),
            max_backoff=float(args.max_backoff), restart_after=int(args.restart_after),
            min_backoff=min(0.25, float(args.max_backoff)))
    except ValueError as exc:
        raise UsageError(f"bad setting: {exc}") from None
    if args.self_test:
        return args, settings, []
    return args, settings, split_command(args.command)


def split_command(line: str | None) -> list[str]:
    """argv[1] → the child's words: quote-aware, no shell; an absolute program path."""
    usage = 'in smtpd.conf: table NAME "procexec:/absolute/path/to/table [ARGS...]"'
    if line is None:
        raise UsageError(f"the child command line (argv[1]) is missing; {usage}")
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot split the child command line {line!r}: {exc}") from None
    if not words:
        raise UsageError(f"the child command line is empty; {usage}")
    if not words[0].startswith("/"):
        raise UsageError(f"the child program must be an absolute path, not {words[0]!r}; "
                         f"{usage}")
    return words


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args, settings, command = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        if stderr_is_devnull():  # smtpd daemonized: the mail log, not nowhere
            setup_logging("table-procexec")
            logging.getLogger("opensmtpd.procexec").error("%s", exc)
        else:
            print(f"table-procexec: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.self_test:
        return self_test("table-procexec")
    setup_logging("table-procexec")  # "table NAME" once smtpd names it (runtime.py)
    return Runtime(Bridge(settings, pid=os.getpid()), command).run()


if __name__ == "__main__":
    sys.exit(main())
