"""The requests in flight (pending.py): reply order, deadlines, late replies, what a
child's death does to each; then, through the bridge, requests waiting for a child being
restarted, each within its own deadline."""

from __future__ import annotations

import pytest

from opensmtpd.procexec.pending import EXPIRED_MEMORY, MAX_WAITING, Requests
from opensmtpd.table.wire.events import Answer, Error, Found, NotFound, Op, Request
from opensmtpd.table.wire.services import Service

from .harness import TABLE, Harness, lookup_line

ALIAS = Service.ALIAS


def ask(requests: Requests, key: str, deadline: float = 10.0) -> Request:
    request = Request(Op.LOOKUP, key, TABLE, ALIAS, key)
    requests.add(request, deadline, lambda n: f"{n:016x}")
    return request


# --- the queue on its own ---------------------------------------------------------------

def test_ids_are_unique_and_formatted_by_the_dialect() -> None:
    requests = Requests()
    a = requests.add(Request(Op.UPDATE, "1", TABLE), 5.0, lambda n: f"x{n}")
    b = requests.add(Request(Op.UPDATE, "2", TABLE), 5.0, lambda n: f"x{n}")
    assert a.child_id.startswith("x") and a.child_id != b.child_id
    assert list(requests.entries) == [a.child_id, b.child_id]


def test_only_the_answered_head_leaves_in_request_order() -> None:
    requests = Requests()
    ask(requests, "a")
    ask(requests, "b")
    out = bytearray()

    def encode(answer: Answer) -> bytes:
        op, request_id, reply = answer
        return f"{op.value} {request_id} {reply}\n".encode()

    entries = list(requests.entries.values())
    entries[1].reply = Found("B")
    requests.flush(out, encode)
    assert out == b""  # the first one holds the second back (imsg order)
    entries[0].reply = NotFound()
    requests.flush(out, encode)
    assert out.decode().splitlines() == ["lookup a NotFound()", "lookup b Found(value='B')"]
    assert not requests.entries


def test_expire_answers_what_is_due_and_remembers_what_the_child_was_asked() -> None:
    requests = Requests()
    ask(requests, "asked", deadline=1.0)
    ask(requests, "waiting", deadline=1.0)
    ask(requests, "later", deadline=2.0)
    asked, waiting, later = requests.entries.values()
    asked.sent = True
    assert requests.next_deadline() == 1.0
    assert requests.expire(0.9) == []
    assert requests.expire(1.0) == [asked, waiting]
    assert asked.reply == waiting.reply == Error("deadline exceeded") and later.reply is None
    assert requests.expired(asked.child_id)  # its late reply will be recognised
    assert not requests.expired(waiting.child_id)  # never sent: no reply can come
    assert requests.next_deadline() == 2.0


def test_expired_ids_are_remembered_within_a_bound() -> None:
    requests = Requests()
    for n in range(EXPIRED_MEMORY + 1):
        ask(requests, f"k{n}", deadline=1.0)
    for entry in requests.entries.values():
        entry.sent = True
    first = next(iter(requests.entries))
    requests.expire(1.0)
    assert not requests.expired(first)  # the oldest was forgotten: memory is bounded
    assert requests.expired(list(requests.entries)[-1])


def test_a_gone_child_fails_what_it_was_asked_and_the_rest_waits_or_not() -> None:
    requests = Requests()
    ask(requests, "asked", deadline=10.0)
    ask(requests, "short", deadline=1.0)  # (deadlines differ only to test the rule)
    ask(requests, "long", deadline=10.0)
    asked, short, long = requests.entries.values()
    asked.sent = True
    assert requests.child_gone(spawn_at=2.0) == (1, 1, 1)
    assert asked.reply == Error("the child exited")  # never resent
    assert short.reply == Error("the next child starts after this request's deadline")
    assert long.reply is None
    assert not asked.sent and requests.unsent() == [long]
    assert requests.oldest_asked() is None


def test_cannot_wait_past_the_bound_or_past_its_deadline() -> None:
    requests = Requests()
    for n in range(MAX_WAITING):
        ask(requests, f"k{n}")
    entry = list(requests.entries.values())[-1]
    assert requests.cannot_wait(entry, None, 0.0) is None
    assert "restarts in 10.00s, after this request's deadline" in str(
        requests.cannot_wait(entry, 10.0, 0.0))
    ask(requests, "one more")
    entry = list(requests.entries.values())[-1]
    assert requests.cannot_wait(entry, None, 0.0) == \
        f"{MAX_WAITING} requests already wait for the child"


# --- requests while the child restarts: they wait, each within its own deadline ---------

def serve_handshake(h: Harness) -> None:
    """Spawn the next child (due now) and let it register alias."""
    h.spawn()
    assert h.sent()[-1] == "config|ready"
    h.child("register|alias\nregister|ready\n")


def test_request_during_the_backoff_waits_for_the_new_child(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(deadline=5.0)
    h.native_child("alias")
    h.bridge.child_exited("was killed by SIGKILL", h.now)
    h.ask(Op.LOOKUP, ALIAS, "root")
    h.ask(Op.LOOKUP, ALIAS, "postmaster")
    assert h.replies() == []  # no -1 for what the next child can answer in time
    assert h.bridge.next_wakeup() == pytest.approx(h.now + 0.25)  # the respawn
    h.later(0.25)
    h.spawn()
    assert h.sent() == ["config|smtpd-version|7.6.0-procexec", "config|protocol|0.1",
                        f"config|tablename|{TABLE}", "config|ready"]  # nothing sent early
    h.later(0.5)  # a slow start: still within the deadlines
    h.child("register|alias\nregister|ready\n")
    first, second = h.sent()
    h.child(f"lookup-result|{first.split('|')[6]}|found|vuser\n"
            f"lookup-result|{second.split('|')[6]}|not-found\n")
    assert h.replies() == [Found("vuser"), NotFound()]
    assert "answering -1" not in caplog.text


def test_request_waits_through_crashes_then_minus_one_at_its_deadline(
        caplog: pytest.LogCaptureFixture) -> None:
    """A child that keeps dying at start: the waiting request is -1 no later than its
    deadline, never hung; the deadline is the request's, not reset by each restart."""
    h = Harness(deadline=2.0, max_backoff=1.0)
    h.native_child("alias")
    h.bridge.child_exited("exited with status 1", h.now)
    asked = h.now
    h.ask(Op.LOOKUP, ALIAS, "root")
    replies: list[object] = []
    for _ in range(10):  # bounded: the loop ends long before
        spawn_at = h.bridge.spawn_at
        assert spawn_at is not None
        h.later(spawn_at - h.now)
        replies += h.replies()
        if replies:
            break
        h.spawn()
        h.later(0.05)
        h.bridge.child_exited("exited with status 3", h.now)  # dies in its handshake
        replies += h.replies()
        if replies:
            break
    assert replies == [Error("-1")]
    assert h.now - asked <= 2.0
    assert "cannot wait" in caplog.text  # the next respawn came after its deadline


def test_backoff_past_the_deadline_is_minus_one_at_once() -> None:
    h = Harness(deadline=1.0, max_backoff=4.0)
    h.native_child("alias")
    for _ in range(3):  # back-off 0.25, 0.5, 1.0, then 2.0
        h.bridge.child_exited("exited with status 1", h.now)
        h.later(h.bridge.spawn_at - h.now)  # type: ignore[operator]
        h.spawn()
    h.bridge.child_exited("exited with status 1", h.now)
    assert h.bridge.spawn_at == pytest.approx(h.now + 2.0)
    h.ask(Op.LOOKUP, ALIAS, "root")  # could only be asked after its deadline
    assert h.replies() == [Error("-1")]


def test_waiting_requests_are_bounded() -> None:
    h = Harness(deadline=5.0)
    h.native_child("alias")
    h.bridge.child_exited("exited with status 1", h.now)
    for n in range(MAX_WAITING + 1):
        h.ask(Op.LOOKUP, ALIAS, f"user{n}")
    assert h.replies() == []  # the one past the bound is -1, but replies go in order
    h.later(0.25)
    serve_handshake(h)
    lines = h.sent()
    assert len(lines) == MAX_WAITING
    h.child("".join(f"lookup-result|{line.split('|')[6]}|not-found\n" for line in lines))
    assert h.replies() == [NotFound()] * MAX_WAITING + [Error("-1")]


def test_request_during_a_requested_kill_waits_for_the_next_child() -> None:
    h = Harness(deadline=1.0, restart_after=1)
    h.native_child("alias")
    h.ask(Op.LOOKUP, ALIAS, "root")
    h.sent()
    h.later(1.5)
    assert h.replies() == [Error("-1")]
    assert h.bridge.kill_reason is not None  # hung: restarted before anything else
    h.ask(Op.LOOKUP, ALIAS, "root")
    assert h.sent() == []  # not given to the hung child
    h.killed()
    h.later(0.25)
    serve_handshake(h)
    _, rid = lookup_line(h)
    h.child(f"lookup-result|{rid}|found|vuser\n")
    assert h.replies() == [Found("vuser")]

