"""opensmtpd.stdio's log format: stderr (smtpd -d) and syslog (smtpd daemonized).

That a daemonized smtpd's mail log gets these lines is tests/e2e/test_mail_log.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from opensmtpd.stdio import _Labelled, program_name, syslog_ident


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("opensmtpd.consul", logging.ERROR, __file__, 1, message, None,
                             None)
    made.__dict__.update(extra)
    return made


@pytest.mark.parametrize(("label", "ident"), [
    ("table aliases", "table-aliases"),
    ("filter prometheus", "filter-prometheus"),
    ("table-procexec", "table-procexec"),
    ("table a[1]: %s", "table-a-1----s"),  # a name from the wire is never a format
    ("table " + "x" * 80, "table-" + "x" * 42),
    ("  ", "opensmtpd"),
])
def test_syslog_ident_is_one_safe_word(label: str, ident: str) -> None:
    assert syslog_ident(label) == ident


def test_stderr_lines_carry_the_label_syslog_lines_leave_it_to_the_ident() -> None:
    assert _Labelled("table aliases").format(record("boom %s")).startswith(
        "table aliases[")
    assert _Labelled("table aliases", prefix=False).format(record("boom")) == "boom"
    assert _Labelled("table x", prefix=False).format(record("hi", child_pid=42)) == \
        "child[42]: hi"


def test_an_unnamed_process_is_labelled_by_its_program_not_a_logger() -> None:
    """Before smtpd names a table (and for a filter without a name), the label is the
    program's file name: ``opensmtpd.consul[PID]`` told a reader nothing."""
    line = _Labelled(None).format(record("configuration error"))
    assert line.startswith(f"{program_name()}["), line
    assert "opensmtpd.consul" not in line
    out = subprocess.run([sys.executable, "-c", "from opensmtpd.stdio import program_name;"
                          "print(program_name())"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
    assert out == "-c"
