"""Console lines: a value from outside can never end a line or forge one."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import pytest

from k4s import log
from k4s.errors import K4sError, printable


def test_a_newline_in_a_csr_name_appears_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    forged = "evil\nk4s: cluster CA sha256:" + "0" * 64
    log.event("approver", "denied", csr="csr-1", reason=f"{forged} is not node w1's")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\nk4s: cluster CA" not in err
    assert 'reason="evil\\nk4s: cluster CA sha256:' in err, err


@hypothesis.given(st.text(), st.text())
@hypothesis.settings(max_examples=200, deadline=None)
def test_any_value_makes_one_line(value: str, message: str) -> None:
    import io
    import sys

    old, sys.stderr = sys.stderr, io.StringIO()
    try:
        log.event("x", "y", value=value)
        log.console(message)
        out = sys.stderr.getvalue()
    finally:
        sys.stderr = old
    lines = out.split("\n")
    assert len(lines) == 3 and lines[2] == ""
    assert all(printable(ln) == ln for ln in lines)
    assert printable(K4sError(message, hint=value).render()).count("\n") == 0


def test_a_long_value_is_cut(capsys: pytest.CaptureFixture[str]) -> None:
    log.event("x", "y", value="a" * 100_000)
    assert len(capsys.readouterr().err) < log.FIELD_LIMIT + 100


def test_marks_that_reorder_or_hide_text_are_escaped() -> None:
    assert printable("ok\u202eevil\u200b\u2066") == "ok\\u202eevil\\u200b\\u2066"
