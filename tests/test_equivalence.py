"""The cache never lies: an incremental build equals a clean build (issue 11).

A hypothesis state machine (tests/equivalence/machine.py) builds random
graphs of ``command`` steps and of a step plugin of its own (installed
through the ``modelbuild.steps`` entry point group, with a helper module and
a declared toolchain), applies random edits, cache damage, kills and
concurrent edits, and checks every build against an independent model
(tests/equivalence/model.py): no stale output, no needless rerun, ``plan``
predicts the build, and ``out/`` is byte-identical to a clean build.

CI runs a bounded profile. The long profile (2,000 sequences)::

    MODELBUILD_EQUIV_EXAMPLES=2000 .venv/bin/python -m pytest -q tests/test_equivalence.py
    .venv/bin/python bench/bench_equivalence.py --sequences 2000    # keeps going after a failure
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

from tests.equivalence.machine import CONFIG, EquivalenceMachine

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills and leftover-process checks use /proc")

_CHECKS = list(HealthCheck)
settings.register_profile("equivalence-ci", max_examples=8, stateful_step_count=8, deadline=None,
                          suppress_health_check=_CHECKS)
settings.register_profile("equivalence-long", max_examples=2000, stateful_step_count=12, deadline=None,
                          suppress_health_check=_CHECKS)

_examples = int(os.environ.get("MODELBUILD_EQUIV_EXAMPLES", "0"))
if _examples:
    CONFIG.update(init_targets=(3, 12), max_targets=12)
    _settings = settings(settings.get_profile("equivalence-long"), max_examples=_examples)
else:
    _settings = settings.get_profile("equivalence-ci")

TestEquivalence = EquivalenceMachine.TestCase
TestEquivalence.settings = _settings
