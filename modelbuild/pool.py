"""The engine's worker threads: at most ``jobs`` targets decided, restored or run at once.

Not ``concurrent.futures``: importing it imports ``logging`` (and with it
``traceback``, ``linecache``, ``tokenize``, ``string``, ...), a few
milliseconds that every build paid before its first decision, including the
full-check no-op that issue 11 times. The engine needs only this much of a
pool: hand a call to an idle thread, and wait for whichever call finishes
first. Threads are started when first needed, never more than ``jobs``, and
joined on leaving the ``with`` block (after the calls still running finish).

Example::

    with Workers(2, "modelbuild") as pool:
        pool.submit("a", build_one, node_a)
        for name, value, error in pool.finished():   # blocks until one is done
            ...
"""

from __future__ import annotations

import threading
from queue import SimpleQueue
from typing import Any, Callable

__all__ = ["Workers"]


class Workers:
    def __init__(self, jobs: int, name: str = "worker") -> None:
        self.jobs = max(1, jobs)
        self.name = name
        self._todo: SimpleQueue = SimpleQueue()
        self._done: SimpleQueue = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0  # calls submitted and not yet collected by finished()

    def submit(self, tag: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a worker thread; its outcome comes back from :meth:`finished` with ``tag``."""
        self._busy += 1
        if len(self._threads) < min(self._busy, self.jobs):
            thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self._threads)}")
            thread.start()
            self._threads.append(thread)
        self._todo.put((tag, fn, args))

    def finished(self) -> list[tuple[str, Any, BaseException | None]]:
        """``(tag, value, error)`` of the calls that have finished: waits for one, then takes any others done."""
        if self._busy == 0:
            return []
        done = [self._done.get()]
        while not self._done.empty():
            done.append(self._done.get())
        self._busy -= len(done)
        return done

    def _work(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            tag, fn, args = item
            try:
                self._done.put((tag, fn(*args), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as a Future would
                self._done.put((tag, None, exc))
            del item, fn, args  # drop references to the call's objects while idle

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: Any) -> None:
        for _ in self._threads:
            self._todo.put(None)
        for thread in self._threads:
            thread.join()
