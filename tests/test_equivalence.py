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

A failure prints the sequence of rules with every draw labelled; hypothesis
replays it first on the next run (``.hypothesis/``). MODELBUILD_EQUIV_SHRINK=1
minimizes it (slow: every step runs real builds).
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, Phase, settings

from tests.equivalence.edits import CONFIG
from tests.equivalence.machine import EquivalenceMachine

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills and leftover-process checks use /proc")]

_CHECKS = list(HealthCheck)
# No shrinking unless asked (MODELBUILD_EQUIV_SHRINK=1): each step runs real
# builds, so minimizing a failure takes many minutes, and the failing
# sequence is printed step by step with every draw labelled anyway.
_PHASES = list(Phase) if os.environ.get("MODELBUILD_EQUIV_SHRINK") else [Phase.explicit, Phase.reuse, Phase.generate]
settings.register_profile("equivalence-ci", max_examples=8, stateful_step_count=8, deadline=None,
                          suppress_health_check=_CHECKS, phases=_PHASES)
settings.register_profile("equivalence-long", max_examples=2000, stateful_step_count=12, deadline=None,
                          suppress_health_check=_CHECKS, phases=_PHASES)

_examples = int(os.environ.get("MODELBUILD_EQUIV_EXAMPLES", "0"))
if _examples:
    CONFIG.update(init_targets=(3, 12), max_targets=12)
    _settings = settings(settings.get_profile("equivalence-long"), max_examples=_examples)
else:
    _settings = settings.get_profile("equivalence-ci")

TestEquivalence = EquivalenceMachine.TestCase
TestEquivalence.settings = _settings
