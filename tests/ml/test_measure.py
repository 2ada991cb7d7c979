"""Validation's peak-memory figure is the validating process's own, never its parent's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PARENT_MB = 200

# A parent that touches PARENT_MB of memory, then starts the measurement the
# way the engine starts a step (fork + exec of a fresh interpreter), and
# prints what the child measured beside the child's own VmHWM.
PARENT = textwrap.dedent(f"""
    import json, subprocess, sys
    ballast = bytearray({PARENT_MB} * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    child = (
        "import json\\n"
        "from modelbuild.ml.validation.measure import peak_rss_mb\\n"
        "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0] / 1024\\n"
        "print(json.dumps({{'measured': peak_rss_mb(), 'own_hwm': hwm}}))\\n"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    print(out.strip())
""")


@pytest.mark.slow
def test_peak_rss_of_a_child_is_its_own_not_its_parents():
    run = subprocess.run([sys.executable, "-c", PARENT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    # The child (numpy and the measure module) is far below the parent's ballast.
    assert figures["own_hwm"] < PARENT_MB * 0.75, figures
    assert figures["measured"] < PARENT_MB * 0.75, figures
    # And it is a real figure, close to the child's own high-water mark.
    assert 0 < figures["measured"] <= figures["own_hwm"] * 1.1 + 1, figures


def test_peak_rss_grows_with_the_process_own_allocations():
    code = textwrap.dedent("""
        from modelbuild.ml.validation.measure import peak_rss_mb
        before = peak_rss_mb()
        big = bytearray(64 * 1024 * 1024)
        for i in range(0, len(big), 4096):
            big[i] = 1
        print(before, peak_rss_mb())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    before, after = map(float, out.stdout.split())
    assert after - before > 50, (before, after)
