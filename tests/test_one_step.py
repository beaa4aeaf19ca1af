"""examples/one_step.py: the annotated training step runs, and its finite differences agree with the gradients."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "one_step.py"


def test_one_step_prints_agreeing_gradients_and_a_lower_loss():
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=True).stdout
    errors = [float(e) for e in re.findall(r"relative error ([0-9.e+-]+)", out)]
    assert len(errors) == 6 and max(errors) < 1e-6, out
    before, after = map(float, re.search(r"loss ([0-9.]+) -> ([0-9.]+)", out).groups())
    assert after < before
