"""The exception tree.

Every error modelbuild raises on purpose derives from :class:`ModelbuildError`
and renders as one line a user can act on (``str(err)``). The CLI prints that
line and exits non-zero; ``--verbose`` adds the traceback.

    ModelbuildError
    ├── RecipeError           bad recipe: file, TOML key path, suggestion
    ├── StepFailed            a step ran and failed: target, step, log path
    ├── StepError             raised *inside* a step for a clean, expected failure
    ├── PlatformUnavailable   the host cannot run this step (needs macOS, ...)
    ├── CacheCorrupt          a blob or record in the store failed its check
    ├── StoreError            the store could not be written (disk full, ...)
    └── InternalError         a bug in modelbuild itself

Example::

    >>> err = RecipeError("unknown step 'exprot'", file="recipes/a.toml",
    ...                   key="targets.x.step", suggestion="export")
    >>> str(err)
    "recipes/a.toml: targets.x.step: unknown step 'exprot' (did you mean 'export'?)"
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ModelbuildError",
    "RecipeError",
    "StepFailed",
    "StepError",
    "PlatformUnavailable",
    "CacheCorrupt",
    "StoreError",
    "InternalError",
    "closest",
    "one_line",
]


class ModelbuildError(Exception):
    """Base of every error modelbuild raises on purpose."""


class RecipeError(ModelbuildError):
    """A recipe is invalid. Carries the file, the TOML key path and a suggestion."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.key = key
        self.suggestion = suggestion
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.file, self.key) if p)
        text = f"{where}: {self.message}" if where else self.message
        if self.suggestion:
            text += f" (did you mean '{self.suggestion}'?)"
        return text


class StepError(ModelbuildError):
    """Raised inside ``Step.run`` for an expected failure with a clear reason.

    The engine reports ``str(err)`` as the target's one-line reason; no
    traceback is needed. Any other exception is reported with its traceback in
    the step's log.
    """


class StepFailed(ModelbuildError):
    """A step ran and failed. Carries the target, the step and its log path."""

    def __init__(self, target: str, step: str, reason: str, log: str | None = None):
        self.target = target
        self.step = step
        self.reason = reason
        self.log = log
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.target} ({self.step}) failed: {self.reason}"
        if self.log:
            text += f" [log: {self.log}]"
        return text


class PlatformUnavailable(ModelbuildError):
    """This host cannot run the step; ``needs`` says what it lacks.

    ``command`` is the exact command to run it on a host that can, e.g.
    ``xcrun coremlcompiler compile model.mlpackage out/``.
    """

    def __init__(self, needs: str, command: str | None = None, detail: str = ""):
        self.needs = needs
        self.command = command
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"needs {self.needs}"
        if self.detail:
            text += f": {self.detail}"
        if self.command:
            text += f" (run there: {self.command})"
        return text


class CacheCorrupt(ModelbuildError):
    """A blob or action record failed its integrity check."""


class StoreError(ModelbuildError):
    """The store could not complete a write (disk full, permissions, ...)."""


class InternalError(ModelbuildError):
    """A bug in modelbuild. Please report it with the traceback (--verbose)."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``name``, or None if nothing is close.

    >>> closest("exprot", ["export", "fetch", "lower"])
    'export'
    """
    import difflib  # only when there is an error to explain: every build imports this module

    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def one_line(exc: BaseException) -> str:
    """An error as the one line a build report shows, naming the path for an OSError.

    >>> one_line(FileNotFoundError(2, "No such file or directory", "out/x"))
    'out/x: No such file or directory'
    """
    if isinstance(exc, OSError) and exc.filename:
        text = f"{exc.filename}: {exc.strerror or exc}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
