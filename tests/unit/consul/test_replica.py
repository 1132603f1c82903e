"""The replica: smtpd's matching from memory, freshness rules, and the watcher."""

from __future__ import annotations

import random
import time

import pytest
from harness.smtpd import wait_for

from opensmtpd.consul.layout import DEFAULT_LAYOUT, Layout
from opensmtpd.consul.listing import Listing
from opensmtpd.consul.replica import Replica, Snapshot, decode_value
from opensmtpd.consul.watcher import Watcher, next_index
from opensmtpd.table import Service, TempFail

from .fakes import FakeSource

S = Service


def snapshot(entries: dict[str, bytes | None], layout: str = DEFAULT_LAYOUT,
             table: str = "t") -> Snapshot:
    return Snapshot.build(Listing(5, tuple(entries.items())), Layout(layout).parser(table))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(clock: Clock, **options: object) -> Replica:
    layout = Layout(DEFAULT_LAYOUT)
    return Replica("t/", layout.parser("t"), 60.0, clock=clock, **options)  # type: ignore[arg-type]


# --- snapshot semantics (smtpd's table_static.c) ---

def test_check_uses_smtpd_matching_per_service() -> None:
    snap = snapshot({
        "t/domain/example.org": b"", "t/domain/*.example.net": None,
        "t/netaddr/192.0.2.0/24": b"", "t/netaddr/local": b"",
        "t/mailaddr/@partner.test": b"", "t/mailaddr/boss@corp.test": b"",
        "t/mailaddr/postmaster": b"", "t/regex/^spam[0-9]+@": b"",
        "t/string/tagged": b"",
    })
    assert snap.check(S.DOMAIN, "example.org") and snap.check(S.DOMAIN, "EXAMPLE.org")
    assert snap.check(S.DOMAIN, "mx.example.net")
    assert not snap.check(S.DOMAIN, "example.net")            # no backtracking, like smtpd
    assert not snap.check(S.DOMAIN, "a.b.example.net")
    assert snap.check(S.NETADDR, "192.0.2.77") and not snap.check(S.NETADDR, "192.0.3.1")
    assert snap.check(S.NETADDR, "local")
    assert snap.check(S.MAILADDR, "anyone@partner.test")
    assert snap.check(S.MAILADDR, "boss+tag@corp.test")       # +tag ignored
    assert not snap.check(S.MAILADDR, "other@corp.test")
    assert snap.check(S.MAILADDR, "postmaster@anywhere.test")
    assert snap.check(S.REGEX, "spam42@x.test") and not snap.check(S.REGEX, "ham@x.test")
    assert snap.check(S.STRING, "tagged") and not snap.check(S.STRING, "tag")
    # a service with no entries matches nothing (and the others do not leak into it)
    assert not snap.check(S.SOURCE, "example.org")
    assert not snap.check(S.STRING, "example.org")


def test_regex_keys_are_lower_cased_and_read_as_posix_ere_as_smtpd_does() -> None:
    # smtpd's static table lower-cases every key it loads, regex patterns included, and
    # reads them with glibc's regcomp(REG_EXTENDED), where \\D is a plain 'd'
    # (established against smtpd itself: tests/e2e/table/test_static_semantics.py)
    snap = snapshot({"t/regex/^\\D+@spam\\.test$": b"x", "t/regex/^a$b": b"y",
                     "t/regex/^ADMIN[0-9]+@": b"z"})
    assert snap.check(S.REGEX, "ddd@spam.test")          # ^\\d+@ after lower-casing
    assert not snap.check(S.REGEX, "abc@spam.test")
    assert not snap.check(S.REGEX, "a1@spam.test")
    assert snap.check(S.REGEX, "admin42@x.test")
    assert not snap.check(S.REGEX, "^a$b")                # the pattern's text is no match
    assert snap.lookup(S.REGEX, "admin1@x.test") == "z"


def test_lookup_exact_and_values() -> None:
    snap = snapshot({"t/alias/root": b"gilles, bob@example.org\n",
                     "t/alias/Admin": b"ops", "t/userinfo/gilles": b"1000:1000:/home/g"})
    assert snap.lookup(S.ALIAS, "root") == "gilles, bob@example.org"  # white space stripped
    assert snap.lookup(S.ALIAS, "admin") == "ops"                     # keys lower-cased
    assert snap.lookup(S.ALIAS, "ADMIN") == "ops"
    assert snap.lookup(S.ALIAS, "gilles") is None
    assert snap.lookup(S.USERINFO, "gilles") == "1000:1000:/home/g"
    assert snap.lookup(S.USERINFO, "root") is None


def test_lookup_for_matched_services_takes_first_match_in_key_order() -> None:
    # table_static_lookup iterates the (sorted) dict and stops at the first match
    snap = snapshot({"t/mailaddr/bob@example.org": b"specific",
                     "t/mailaddr/@example.org": b"catch-all"})
    assert snap.lookup(S.MAILADDR, "bob@example.org") == "catch-all"  # '@' sorts before 'b'
    assert snap.lookup(S.MAILADDR, "x@other.org") is None
    snap = snapshot({"t/domain/*.example.org": b"wild"})
    assert snap.lookup(S.DOMAIN, "mx.example.org") == "wild"


def test_fetch_returns_keys_in_order() -> None:
    snap = snapshot({"t/source/192.0.2.2": b"", "t/source/192.0.2.1": b""})
    assert snap.fetch(S.SOURCE) == ["192.0.2.1", "192.0.2.2"]
    assert snap.fetch(S.RELAYHOST) == []


def test_layout_without_service_serves_every_service() -> None:
    snap = snapshot({"d/example.org": b"x"}, layout="<table>/<key>", table="d")
    assert snap.check(S.DOMAIN, "example.org") and snap.lookup(S.ALIAS, "example.org") == "x"


def test_invalid_utf8_is_a_temporary_failure_on_lookup_only() -> None:
    snap = snapshot({"t/alias/root": b"\xff\xfe"})
    assert snap.check(S.ALIAS, "root")
    with pytest.raises(TempFail, match="not UTF-8"):
        snap.lookup(S.ALIAS, "root")


def test_keys_outside_the_layout_are_ignored_and_reported() -> None:
    snap = snapshot({"t/alias/root": b"g", "t/alias/": None, "t/nosuch/x": b"y"})
    assert snap.count == 1
    assert set(snap.ignored) == {"t/alias/", "t/nosuch/x"}
    assert decode_value(None) == ""


# --- freshness rules ---

def test_before_first_sync_every_answer_is_tempfail() -> None:
    clock = Clock()
    rep = replica(clock)
    with pytest.raises(TempFail, match="not synced yet"):
        rep.current()
    rep.failed(ConnectionError("connection refused"))
    with pytest.raises(TempFail, match="not synced yet: connection refused"):
        rep.current()


def test_stale_copy_served_until_max_staleness_then_tempfail() -> None:
    clock = Clock()
    rep = replica(clock)
    rep.apply(Listing(3, (("t/alias/root", b"gilles"),)))
    clock.now += 30
    rep.failed(ConnectionError("consul down"))
    assert rep.current().lookup(S.ALIAS, "root") == "gilles"     # stale, within the limit
    clock.now += 30.5                                             # 60.5 s since last sync
    with pytest.raises(TempFail, match=r"copy is 60s old \(max_staleness 60s\).*consul down"):
        rep.current()
    rep.apply(Listing(3, (("t/alias/root", b"gilles"),)))        # recovered
    assert rep.current().lookup(S.ALIAS, "root") == "gilles"
    assert rep.errors == 0 and rep.last_error is None


def test_a_lagging_server_makes_the_copy_older() -> None:
    # a follower cut from its leader keeps answering stale reads: their age counts
    clock = Clock()
    rep = replica(clock)
    rep.apply(Listing(3, (("t/alias/root", b"gilles"),), lag=50.0))
    assert rep.age() == 50.0
    clock.now += 11
    with pytest.raises(TempFail, match="copy is 61s old"):
        rep.current()


def test_empty_table_is_an_error_unless_allowed() -> None:
    clock = Clock()
    rep = replica(clock)
    rep.apply(Listing(3, ()))
    with pytest.raises(TempFail, match=r"no entry under 't/'.*allow_empty"):
        rep.current()
    allowed = replica(clock, allow_empty=True)
    allowed.apply(Listing(3, ()))
    assert allowed.current().lookup(S.ALIAS, "root") is None


def test_apply_rebuilds_only_on_a_new_index_or_a_full_read() -> None:
    clock = Clock()
    rep = replica(clock)
    assert rep.apply(Listing(3, (("t/alias/a", b"1"),)))
    assert not rep.apply(Listing(3, (("t/alias/a", b"2"),)))     # same index: unchanged
    assert rep.current().lookup(S.ALIAS, "a") == "1"
    assert rep.apply(Listing(3, (("t/alias/a", b"2"),)), full=True)  # a restarted server
    assert rep.current().lookup(S.ALIAS, "a") == "2"


def test_state_reports_age_for_logs() -> None:
    clock = Clock()
    rep = replica(clock)
    assert "no copy yet" in rep.state()
    rep.apply(Listing(7, (("t/alias/a", b"1"),)))
    clock.now += 12
    assert rep.state() == "copy of index 7 is 12.0s old (max_staleness 60s, serving it)"


@pytest.mark.parametrize(("previous", "returned", "expected"), [
    (0, 5, 5), (5, 9, 9), (9, 9, 9), (9, 4, 0), (0, 0, 1), (3, -1, 0)])
def test_next_index_rules(previous: int, returned: int, expected: int) -> None:
    assert next_index(previous, returned) == expected


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    source = FakeSource()
    watcher = Watcher(replica(Clock()), source, wait=1, retry_min=0.5, retry_max=8,
                      rng=random.Random(1))
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (40, 8.0)):
        delays = [watcher.backoff(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(set(delays)) > 1  # jitter


# --- the watcher against a fake blocking source ---

def test_watcher_follows_changes_with_blocking_queries() -> None:
    source = FakeSource({"t/alias/root": b"gilles"})
    rep = Replica("t/", Layout(DEFAULT_LAYOUT).parser("t"), 60.0)
    watcher = Watcher(rep, source, wait=5.0, retry_min=0.05, retry_max=0.2)
    watcher.start()
    try:
        assert watcher.first_attempt.wait(5)
        assert rep.current().lookup(S.ALIAS, "root") == "gilles"
        source.set("t/alias/root", b"henry")
        assert wait_for(lambda: rep.current().lookup(S.ALIAS, "root") == "henry", 5)
        # the first read is a plain one, then blocking reads on the last index
        assert source.calls[0] == (0, None)
        assert (10, 5.0) in source.calls
    finally:
        watcher.stop()


def test_watcher_backs_off_then_rereads_everything_after_an_error() -> None:
    source = FakeSource({"t/alias/root": b"gilles"}, index=50)
    rep = Replica("t/", Layout(DEFAULT_LAYOUT).parser("t"), 60.0)
    watcher = Watcher(rep, source, wait=5.0, retry_min=0.05, retry_max=0.1)
    watcher.start()
    try:
        assert wait_for(lambda: rep.snapshot is not None, 5)
        source.fail(ConnectionError("refused"))
        assert wait_for(lambda: rep.errors >= 2, 5)
        assert rep.current().lookup(S.ALIAS, "root") == "gilles"  # served from the copy
        # a restarted server whose index went backwards, with other content
        source.items["t/alias/root"] = b"fresh"
        source.restart(index=3)
        calls = len(source.calls)
        source.fail(None)
        assert wait_for(lambda: rep.errors == 0, 5)
        assert wait_for(lambda: rep.current().lookup(S.ALIAS, "root") == "fresh", 5)
        assert (0, None) in source.calls[calls:]                # a full, non-blocking read
    finally:
        watcher.stop()


def test_resync_reads_now_and_reports_failure() -> None:
    source = FakeSource({"t/alias/root": b"gilles"})
    rep = Replica("t/", Layout(DEFAULT_LAYOUT).parser("t"), 60.0)
    watcher = Watcher(rep, source, wait=5.0, retry_min=0.05, retry_max=0.1)
    snap = watcher.resync()  # no thread needed
    assert snap.lookup(S.ALIAS, "root") == "gilles"
    source.fail(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        watcher.resync()
    assert rep.last_error == "down"


def test_watcher_does_not_spin_on_a_server_ignoring_wait() -> None:
    class Impatient(FakeSource):
        def list(self, prefix: str, *, index: int = 0, wait: float | None = None) -> Listing:
            return super().list(prefix, index=index, wait=None)

    source = Impatient({"t/alias/root": b"g"})
    rep = Replica("t/", Layout(DEFAULT_LAYOUT).parser("t"), 60.0)
    watcher = Watcher(rep, source, wait=5.0, retry_min=0.1, retry_max=0.2)
    watcher.start()
    try:
        time.sleep(0.5)
    finally:
        watcher.stop()
    assert len(source.calls) <= 20, len(source.calls)  # a hot loop makes thousands
