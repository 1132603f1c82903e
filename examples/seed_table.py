#!/usr/bin/env python3
# The seed's example (poolpOrg/py-opensmtpd, 2020), unchanged apart from this comment:
# the same file serves smtpd 6.8 (imsg), 7.6+ (native) and the 2020 dialect.
from opensmtpd import table


def check(token, tableName, service, key):
    if key == "gilles@poolp.org":
        return table.boolean(token, True)
    return table.boolean(token, False)


def lookup(token, tableName, service, key):
    if service == "alias" and key == "root":
        return table.result(token, "gilles@poolp.org")
    return table.result(token)


def fetch(token, tableName, service):
    table.result(token, "gilles@poolp.org")


def main():
    table.on_check(check)
    table.on_lookup(lookup)
    table.on_fetch(fetch)
    table.dispatch()


if __name__ == "__main__":
    main()
