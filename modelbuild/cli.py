"""The ``modelbuild`` command's entry point: exit codes, error rendering and the no-op shortcut.

The verbs themselves are a click group in :mod:`modelbuild.commands`.
Importing this module stays cheap (no click, no pydantic, networkx, rich or
plugins). The commonest invocations, ``modelbuild build [TARGET...] [-q]
[-j N] [-k] [--full-check]``, never import click (build_verb.py): when
nothing changed the no-op fast path (fastpath.py) answers, and click's import
alone would about double the time of that (docs/benchmarks.md); otherwise
the build runs as the click verb would run it, from the same function.
Anything else goes through click.

:func:`main` returns the exit code instead of exiting, so tests and the
console script share one path: 0 ok, 1 a build failure or an error,
2 a usage error, 3 a target named on the command line cannot be built on this
host (``--skip-unavailable``: 0), 70 an internal error, 130 interrupted.

Example::

    >>> main(["--version"])  # doctest: +ELLIPSIS
    modelbuild ...
    0
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["main", "cli", "EXIT_FAILED", "EXIT_USAGE", "EXIT_UNAVAILABLE"]

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3
EXIT_INTERNAL, EXIT_INTERRUPTED = 70, 130


def noop_options(targets: list[str], overrides: list[str], out_dir: str | None, require_validation: bool) -> dict:
    """The build options a no-op is recorded against (the same dict on both paths)."""
    return dict(targets=list(targets), overrides=list(overrides), out_dir=out_dir, require_validation=require_validation)


def __getattr__(name: str) -> Any:
    if name == "cli":  # the click group, loaded on first use
        from .commands import cli

        return cli
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from .build_verb import simple_args

        simple = simple_args(argv)
        if simple is not None:  # the commonest command lines: no click (build_verb.py)
            from .build_verb import run

            commands = sys.modules.get(f"{__package__}.commands")
            if commands is not None:  # an earlier main() in this process went through click: no --verbose now
                commands.STATE["verbose"] = False
            return run(simple)
        import click

        from .commands import STATE, cli

        STATE["verbose"] = False
        # Completion (_MODELBUILD_COMPLETE set) answers and exits inside cli.main().
        rv = cli.main(args=argv, prog_name="modelbuild", standalone_mode=False, complete_var="_MODELBUILD_COMPLETE")
        return rv if isinstance(rv, int) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line per error; traceback with --verbose
        import click

        from .commands import STATE
        from .errors import ModelbuildError

        if isinstance(exc, click.ClickException):  # usage errors: 2, on stderr with the usage line
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.Abort):  # click's form of KeyboardInterrupt
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if STATE["verbose"] or (not isinstance(exc, ModelbuildError) and os.environ.get("MODELBUILD_DEBUG")):
            import traceback

            traceback.print_exc()
        if isinstance(exc, ModelbuildError):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
