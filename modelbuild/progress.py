"""Rendering build progress: a live rich display on a terminal, plain lines otherwise.

The engine emits :class:`~modelbuild.engine.Event` values; a renderer turns
them into output. Renderers live with the CLI: the library never prints.

Example::

    renderer = make_renderer(sys.stderr, quiet=False)
    with renderer:
        result = build(["tiny-llama"], on_event=renderer.handle)
"""

from __future__ import annotations

import sys
import time
from typing import IO

from .engine import BuildResult, Event, TargetResult

__all__ = ["make_renderer", "PlainRenderer", "LiveRenderer", "format_result_line", "format_summary"]

_STYLE = {"built": "green", "cached": "dim", "failed": "bold red", "skipped": "yellow", "unavailable": "magenta"}


def format_result_line(r: TargetResult) -> str:
    status = r.status.upper() if r.status == "failed" else r.status
    timing = f"{r.duration_s:6.1f}s" if r.status == "built" or r.duration_s else "       "
    text = f"{status:<11} {r.name:<28} {r.step:<9} {timing}  {r.reason}"
    if getattr(r, "worker", None):  # run on a Dask worker (docs/distributed.md)
        text += f" [on {r.worker}]"
    if r.log and r.status == "failed":
        text += f" [log: {r.log}]"
    if r.command and r.status == "unavailable":
        text += f" [run there: {r.command}]"
    return text.rstrip()


def format_summary(result: BuildResult) -> str:
    counts = result.counts()
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    remote = sum(1 for r in result.targets.values() if getattr(r, "remote_hit", False))
    left = sum(1 for r in result.targets.values() if getattr(r, "remote_only", False))
    if remote:  # "3 cached (2 from the remote cache, 1 of them not downloaded)"
        note = f"{remote} from the remote cache" + (f", {left} of them not downloaded" if left else "")
        parts = [p + f" ({note})" if p.endswith(" cached") else p for p in parts]
    return f"{len(result.targets)} target(s): {', '.join(parts) or 'nothing to do'} in {result.duration_s:.2f} s"


class PlainRenderer:
    """One line per finished target (and per failure when quiet)."""

    def __init__(self, stream: IO[str], quiet: bool = False):
        self.stream = stream
        self.quiet = quiet

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def handle(self, event: Event) -> None:
        if event.kind != "finish" or event.result is None:
            return
        if self.quiet and event.result.status not in ("failed",):
            return
        print(format_result_line(event.result), file=self.stream, flush=True)


class LiveRenderer:
    """A live table: running steps with elapsed time and progress, finished ones above."""

    def __init__(self, stream: IO[str], color: bool | None = None):
        from rich.console import Console

        # color None: rich decides (off when NO_COLOR is set); True/False: --color/--no-color.
        self.console = Console(file=stream, no_color=None if color is None else not color)
        self.running: dict[str, tuple[str, float, str]] = {}
        self._live = None

    def __enter__(self):
        from rich.live import Live

        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True, get_renderable=self._render)
        self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
        return False

    def _render(self):
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for name, (step, started, note) in sorted(self.running.items()):
            # Text objects, not markup: target names and notes are user data.
            table.add_row(Text("running", style="cyan"), Text(name), Text(step), Text(f"{now - started:5.1f}s"), Text(note))
        return table

    def handle(self, event: Event) -> None:
        if event.kind == "start":
            self.running[event.target] = (event.step, time.monotonic(), "")
        elif event.kind == "progress" and event.target in self.running and event.progress:
            step, started, _ = self.running[event.target]
            p = event.progress
            note = p.get("message") or ""
            if p.get("total"):
                note = f"{100 * (p.get('done') or 0) / p['total']:5.1f}% {note}"
            self.running[event.target] = (step, started, note)
        elif event.kind == "finish" and event.result is not None:
            self.running.pop(event.target, None)
            if self._live is not None:
                self._live.refresh()  # drop the finished row before printing above the display
            r = event.result
            from rich.text import Text

            self.console.print(Text(format_result_line(r), style=_STYLE.get(r.status) or ""), soft_wrap=True)


def make_renderer(stream: IO[str] | None = None, *, quiet: bool = False, color: bool | None = None):
    """The live display on a terminal, plain lines otherwise (``color``: None auto, else forced on/off)."""
    stream = stream or sys.stderr
    if not quiet and stream.isatty():
        return LiveRenderer(stream, color=color)
    return PlainRenderer(stream, quiet=quiet)
