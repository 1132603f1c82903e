"""The ``table-consul`` command: smtpd's table backend, plus kv/check for admins.

    table-consul [CONFIG]                     what smtpd runs (table NAME consul[:CONFIG])
    table-consul kv [-c CONFIG] list [PREFIX] | get KEY | put KEY VALUE|- | delete [-r] KEY
    table-consul check [CONFIG]               validate a config, print the effective one
    table-consul --self-test                  can this user and interpreter run it?

Without CONFIG, every form reads /etc/mail/table-consul.conf if it exists (Debian's
opensmtpd-table-consul installs it), else uses the defaults. Installing it where smtpd
looks: the package, or ``opensmtpd-table install consul`` (opensmtpd.install).

smtpd starts a table with argv[0] = the table name and argv[1] = the config path (an
absolute path, or nothing): any other first argument is a subcommand. The ACL token is
never an argument: token_file in the config, CONSUL_HTTP_TOKEN(_FILE) in the environment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..extras import require, self_test
from .config import Config, ConfigError, load

DEFAULT_CONFIG = "/etc/mail/table-consul.conf"
SUBCOMMANDS = ("kv", "check")


def serve(config_path: str | None) -> int:
    from ..stdio import setup_logging
    from .backend import build_table

    setup_logging()
    table = build_table(config_path or _default_config())
    table.run()
    return 0


def _default_config() -> str | None:
    return DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None


class _KV:
    """put/get/delete/list against the configured store (embedded or Consul)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        if config.store == "consul":
            require("httpx")
            from .client import ConsulClient

            self.consul: ConsulClient | None = ConsulClient(config)
        else:
            self.consul = None

    def put(self, key: str, value: bytes) -> None:
        if self.consul is not None:
            self.consul.put(key, value)
        else:
            from .store import EmbeddedStore

            EmbeddedStore(self.config.database).put(key, value)

    def get(self, key: str) -> bytes | None:
        if self.consul is not None:
            return self.consul.get(key)
        from .store import EmbeddedStore

        return EmbeddedStore(self.config.database).get(key)

    def delete(self, key: str, recurse: bool) -> None:
        if self.consul is not None:
            self.consul.delete(key, recurse=recurse)
        else:
            from .store import EmbeddedStore

            EmbeddedStore(self.config.database).delete(key, recurse=recurse)

    def list(self, prefix: str) -> list[tuple[str, bytes | None]]:
        if self.consul is not None:
            return list(self.consul.list(prefix).items)
        from .store import EmbeddedStore

        return list(EmbeddedStore(self.config.database).list(prefix).items)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="table-consul",
        description="OpenSMTPD table served from Consul KV or the embedded store. "
                    "smtpd runs it as 'table NAME consul:/etc/mail/table-consul.conf'.")
    commands = parser.add_subparsers(dest="command", required=True)

    kv = commands.add_parser("kv", help="read and write keys of the configured store")
    kv.add_argument("-c", "--config", default=None,
                    help=f"config file (default: {DEFAULT_CONFIG} if it exists)")
    actions = kv.add_subparsers(dest="action", required=True)
    actions.add_parser("get", help="print a key's value").add_argument("key")
    put = actions.add_parser("put", help="set a key ('-' reads the value from stdin)")
    put.add_argument("key")
    put.add_argument("value")
    delete = actions.add_parser("delete", help="delete a key")
    delete.add_argument("-r", "--recurse", action="store_true",
                        help="delete every key under KEY")
    delete.add_argument("key")
    listing = actions.add_parser("list", help="print 'key<TAB>value' under a prefix")
    listing.add_argument("prefix", nargs="?", default="")

    check = commands.add_parser("check", help="validate a config, print the effective one")
    check.add_argument("config", nargs="?", default=None)

    return parser


def _show(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


def _kv(args: argparse.Namespace) -> int:
    config = load(args.config or _default_config())
    store = _KV(config)
    if args.action == "put":
        # '-': stdin without its final newline (as the shell's $(...) would)
        value = (sys.stdin.buffer.read().removesuffix(b"\n") if args.value == "-"
                 else args.value.encode())
        store.put(args.key, value)
    elif args.action == "get":
        found = store.get(args.key)
        if found is None:
            print(f"table-consul: no key {args.key!r}", file=sys.stderr)
            return 1
        print(_show(found))
    elif args.action == "delete":
        store.delete(args.key, args.recurse)
    else:
        for key, value in store.list(args.prefix):  # one line per key, whatever the value
            shown = _show(value).replace("\\", "\\\\").replace("\n", "\\n")
            print(f"{key}\t{shown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("/") and len(args) == 1):
        if not args and sys.stdin.isatty():
            _parser().print_help(sys.stderr)
            return 2
        return serve(args[0] if args else None)
    if args == ["--self-test"]:
        return self_test("table-consul", wants=("httpx",))
    parsed = _parser().parse_args(args)
    try:
        if parsed.command == "kv":
            return _kv(parsed)
        print(load(parsed.config or _default_config()).describe())
        return 0
    except ConfigError as exc:
        print(f"table-consul: configuration error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # StoreError, ConsulError: a message, not a traceback
        print(f"table-consul: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
