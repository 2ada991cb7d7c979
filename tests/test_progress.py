"""Progress rendering: plain lines for logs and CI, a live display on terminals."""

from __future__ import annotations

import io

from modelbuild.engine import Event, TargetResult
from modelbuild.progress import LiveRenderer, PlainRenderer, make_renderer


def events():
    ok = TargetResult("a[b]", "command", "built", "new target", duration_s=1.25)
    bad = TargetResult("c", "command", "failed", "command exited with code 3", log="/tmp/c.log")
    return [
        Event("start", "a[b]", "command"),
        Event("progress", "a[b]", "command", progress={"done": 5, "total": 10, "message": "downloading"}),
        Event("finish", "a[b]", "command", ok),
        Event("start", "c", "command"),
        Event("finish", "c", "command", bad),
    ]


def test_plain_renderer_lines_and_quiet():
    out = io.StringIO()
    with PlainRenderer(out) as r:
        for e in events():
            r.handle(e)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("built") and "a[b]" in lines[0] and "1.2s" in lines[0]
    assert lines[1].startswith("FAILED") and "[log: /tmp/c.log]" in lines[1]
    quiet = io.StringIO()
    r = PlainRenderer(quiet, quiet=True)
    for e in events():
        r.handle(e)
    assert quiet.getvalue().splitlines() == lines[1:]


def test_live_renderer_prints_results_verbatim():
    out = io.StringIO()
    with LiveRenderer(out) as r:
        for e in events():
            r.handle(e)
    text = out.getvalue()
    assert "a[b]" in text  # user data is not read as rich markup
    assert "command exited with code 3" in text
    assert "[cyan]" not in text


def test_make_renderer_picks_plain_off_a_terminal():
    assert isinstance(make_renderer(io.StringIO()), PlainRenderer)
