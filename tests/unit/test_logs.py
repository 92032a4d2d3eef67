"""The one text helper every message and log line goes through (hafloatd.logs)."""

from __future__ import annotations

import logging
import sys

from hafloatd.logs import KeyValueFormatter, describe, kv, one_line


def test_one_line_folds_every_whitespace_run_to_one_space() -> None:
    assert one_line("  a\n\tb\r\n  c  ") == "a b c"


def test_one_line_decodes_bytes_and_names_a_silent_exception() -> None:
    assert one_line(b"bad \xff\nbyte") == "bad \ufffd byte"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(ValueError("two\nlines")) == "two lines"


def test_one_line_cuts_to_exactly_the_limit_with_an_ellipsis() -> None:
    assert one_line("x" * 10, limit=10) == "x" * 10
    assert one_line("x" * 11, limit=10) == "x" * 7 + "..."


def test_kv_is_bare_for_one_word_and_quoted_otherwise() -> None:
    assert kv("ok") == "ok"
    assert kv('two words "quoted"') == '"two words \\"quoted\\""'
    assert kv("a=b") == '"a=b"'
    assert kv("") == '""'


def test_describe_names_the_type_and_with_where_the_innermost_frame() -> None:
    try:
        raise RuntimeError("boom\nagain")
    except RuntimeError as exc:
        assert describe(exc) == "RuntimeError: boom again"
        assert describe(exc, where=True).startswith("RuntimeError: boom again at test_logs.py:")


def test_formatter_keeps_a_record_with_an_exception_on_one_line() -> None:
    try:
        raise OSError("disk\nfull")
    except OSError:
        record = logging.LogRecord("hafloatd.x", logging.ERROR, __file__, 1, "event=a\nb", (), None)
        record.exc_info = sys.exc_info()
    line = KeyValueFormatter().format(record)
    assert "\n" not in line
    assert line.startswith('level=error logger=hafloatd.x event=a b exc="OSError: disk full at ')
