"""The docs stay in step with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_reference_is_generated_from_the_plugins():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_steps.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\n(run: python docs/gen_steps.py)"


def test_readme_links_and_commands():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)]+)\)", readme):
        assert (ROOT / link).is_file(), link
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pytest" in ci
    assert re.search(r"^python3 -m venv \.venv && .*pytest", readme, re.M)
    assert re.search(r"^python3 -m venv \.venv && .*modelbuild build$", readme, re.M)
