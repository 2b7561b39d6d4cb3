"""Every tutorial runs end to end in quick mode, so none can rot."""

import os
import subprocess
import sys

import pytest
from conftest import REPO

TUTORIALS = sorted((REPO / "tutorials").glob("*.py"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_quick_mode(path, tmp_path):
    env = {**os.environ, "BAYESKIT_QUICK": "1", "BAYESKIT_OUT": str(tmp_path), "CI": "true", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
