"""Start-up of the command: wall time of a fresh ``cepd-deploy --version`` / ``--help`` process
(target: under 1 s; the bare interpreter for reference).

    python -m pytest benchmarks/test_startup.py --benchmark-only --benchmark-group-by=group
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

#: the console script next to this interpreter, else ``python -m cepd_deploy``
SCRIPT = shutil.which("cepd-deploy", path=str(Path(sys.executable).parent))
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "cepd_deploy"]


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["simulate", "--help"]], ids=" ".join)
def test_command_start(benchmark, args):
    benchmark.group = "start-up"
    done = benchmark.pedantic(subprocess.run, args=([*COMMAND, *args],), kwargs={"capture_output": True},
                              rounds=10, iterations=1, warmup_rounds=1)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_bare_interpreter(benchmark):
    benchmark.group = "start-up"
    benchmark.pedantic(subprocess.run, args=([sys.executable, "-c", "pass"],), rounds=10, iterations=1,
                       warmup_rounds=1)  # fmt: skip
