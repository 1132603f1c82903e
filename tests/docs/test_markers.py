"""Every fenced block of README.md and docs/ is a step of its page's walk-through or is
marked not runnable with a reason; the marker syntax itself (no root, no chroot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .markdown import MarkerError, pages, parse


@pytest.mark.parametrize("path", pages(), ids=lambda path: path.name)
def test_every_block_runs_or_says_why_not(path: Path) -> None:
    page = parse(path)  # raises on an unclassified block, naming its line
    for step in page.skipped:
        assert len(step.reason) > 10, f"{path.name}:{step.line}: say why it is not run"
    for step in page.steps:
        if step.kind == "sh":
            assert "pip install py-opensmtpd" not in step.text, \
                f"{path.name}:{step.line}: py-opensmtpd is not on an index"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_steps_in_page_order_with_routes(tmp_path: Path) -> None:
    page = parse(write(tmp_path, """<!-- docs-test: routes deb pip -->
<!-- docs-test: suites bookworm sid -->
```sh
echo one
```
<!-- docs-test: only pip -->
<!-- docs-test: file /etc/x 755 -->
```python
print()
```
<!-- docs-test: run true -->
<!-- docs-test: skip — needs a public DNS name -->
```
listen on egress
```
"""))
    assert page.routes == ("deb", "pip") and page.suites == ("bookworm", "sid")
    assert [s.kind for s in page.walk("deb")] == ["sh", "run"]
    assert [(s.kind, s.target, s.mode) for s in page.walk("pip")][1] == ("file", "/etc/x", "755")
    assert page.skipped[0].reason == "needs a public DNS name"


@pytest.mark.parametrize(("text", "needle"), [
    ("```python\nx\n```\n", ":1: a python block needs a docs-test marker"),
    ("```\nx\n```\n", ":1: a plain block needs a docs-test marker"),
    ("<!-- docs-test: skip -->\n```\nx\n```\n", ":1: 'skip' needs a reason"),
    ("<!-- docs-test: file etc/x -->\n```\nx\n```\n", "expected 'file /ABSOLUTE/PATH"),
    ("<!-- docs-test: file /etc/x -->\ntext\n```\nx\n```\n", "directly above its block"),
    ("<!-- docs-test: frobnicate -->\n", "unknown docs-test verb 'frobnicate'"),
    ("```sh\nx\n", "never closed"),
    ("<!-- docs-test: skip a reason here -->\n", "marker with no block after it"),
])
def test_marker_errors_name_the_line(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(MarkerError, match=None) as caught:
        parse(write(tmp_path, text))
    assert needle in str(caught.value), caught.value
