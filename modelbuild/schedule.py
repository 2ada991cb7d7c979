"""Which ready step the engine starts first, and how many cores each running step gets.

Two small policies, kept apart from the engine's hit/miss logic:

- :func:`critical_path` ranks targets by the longest chain of work still
  ahead of them (their own expected cost plus the most expensive path through
  their consumers). Starting the head of the longest chain first is what keeps
  a wide build short: in an {xnnpack, coreml} x {fp32, 4-bit} matrix the
  quantize step, which heads the longest chain, starts before the lowerings
  that only feed a package. A target's cost is the time its step took the last
  time it ran (from the build history), or 1 when it never ran, so a cold
  build ranks by depth.
- :class:`ReadyOrder` applies that rank to the ready targets. With one job at
  a time the order cannot shorten the build, only change what is held in
  memory, so there the consumers of the target that finished last go first
  (depth first): a fused session's kept program is taken by its consumer
  before another chain's producer starts a second session that holds a
  second program (two such sessions at once doubled ``-j 1``'s memory on the
  135M matrix).
- :class:`CoreShare` splits the machine's cores between the step processes
  running at once. Each step runs in its own process, and torch in each
  process would otherwise start one OpenMP thread per core: two steps on two
  cores would run four spinning threads. A step that decides it must run
  waits (briefly) for the other started steps to decide too, then takes
  ``cores // running`` threads, at least one. Cache hits never count.

Example::

    share = CoreShare(cores=8)
    claim = share.claim()          # the scheduler started a target
    threads = claim.run()          # it missed the cache: how many threads
    ...                            # run the step process with ``threads``
    claim.release()                # the target is done (hit, skip or run)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["Claim", "CoreShare", "ReadyOrder", "critical_path"]

# How long a step that must run waits for its siblings to decide hit or miss.
# Deciding is hashing and a lookup (milliseconds); the bound only matters when
# another build holds a key's lock.
DECIDE_WAIT_S = 5.0


def critical_path(order: list[str], consumers: Callable[[str], Iterable[str]], cost: Callable[[str], float]) -> dict[str, float]:
    """Each target's cost plus the costliest chain of consumers after it.

    ``order`` is topological (producers first); consumers outside it are ignored.
    """
    wanted = set(order)
    rank: dict[str, float] = {}
    for name in reversed(order):
        after = [rank[c] for c in consumers(name) if c in wanted]
        rank[name] = cost(name) + max(after, default=0.0)
    return rank


class ReadyOrder:
    """The sort key of ready targets: longest chain first, or depth first when ``serial``.

    ``rank`` is :func:`critical_path`'s; ties keep ``order`` (topological).
    Call :meth:`finished` as each target finishes.
    """

    def __init__(self, order: list[str], rank: dict[str, float],
                 producers: Callable[[str], Iterable[str]], *, serial: bool) -> None:
        self._base = {name: (-rank[name], i) for i, name in enumerate(order)}
        self._producers = producers
        self._serial = serial
        self._finished: dict[str, int] = {}

    def finished(self, name: str) -> None:
        self._finished[name] = len(self._finished) + 1

    def key(self, name: str) -> tuple[float, ...]:
        if not self._serial:
            return self._base[name]
        newest = max((self._finished.get(p, 0) for p in self._producers(name)), default=0)
        return (-newest, *self._base[name])


class CoreShare:
    """Divide ``cores`` between the step processes running at the same time."""

    def __init__(self, cores: int, decide_wait_s: float = DECIDE_WAIT_S) -> None:
        self.cores = max(1, cores)
        self._wait = decide_wait_s
        self._cond = threading.Condition()
        self._undecided = 0
        self._running = 0

    def claim(self) -> "Claim":
        """A target was started; it has not yet decided whether its step runs."""
        with self._cond:
            self._undecided += 1
        return Claim(self)

    def _change(self, undecided: int, running: int) -> None:
        with self._cond:
            self._undecided += undecided
            self._running += running
            self._cond.notify_all()

    def _threads_after_siblings_decide(self) -> int:
        with self._cond:
            deadline = time.monotonic() + self._wait
            while self._undecided > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return max(1, self.cores // self._running)


class Claim:
    """One started target's place in a :class:`CoreShare`; every method is safe to call again."""

    def __init__(self, share: CoreShare) -> None:
        self._share = share
        self._state = "undecided"

    def skip(self) -> None:
        """The target will not run a step process (cache hit, skip, failure)."""
        if self._state == "undecided":
            self._state = "skipped"
            self._share._change(undecided=-1, running=0)

    def run(self) -> int:
        """The target runs its step: the number of threads it may use.

        Waits (at most ``decide_wait_s``) for the other started targets to
        decide, so steps starting together split the cores between them.
        """
        if self._state != "undecided":
            return self._share.cores  # decided already (a cache entry found corrupt after all)
        self._state = "running"
        self._share._change(undecided=-1, running=1)
        return self._share._threads_after_siblings_decide()

    def release(self) -> None:
        """The target is done: give back its cores, or its undecided place."""
        if self._state == "running":
            self._share._change(undecided=0, running=-1)
        self.skip()
        self._state = "done"
