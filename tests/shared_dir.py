"""One directory for artifacts that every process of a test run may share.

pytest-xdist runs the suite in worker processes; the tiny LLM artifacts of
tests/steps/llm_artifacts.py are built once per *run*, not once per worker,
in the directory named by ``MODELBUILD_TEST_SHARED``. The controller (or a
plain pytest process) makes it before the workers start, so they inherit
the variable, and removes it at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile

SHARED = "MODELBUILD_TEST_SHARED"


def pytest_configure(config):
    if not hasattr(config, "workerinput") and not os.environ.get(SHARED):
        config._modelbuild_shared = tempfile.mkdtemp(prefix="modelbuild-test-shared-")
        os.environ[SHARED] = config._modelbuild_shared


def pytest_unconfigure(config):
    shared = getattr(config, "_modelbuild_shared", None)
    if shared:
        shutil.rmtree(shared, ignore_errors=True)
        os.environ.pop(SHARED, None)
