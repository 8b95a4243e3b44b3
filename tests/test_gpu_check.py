"""benchmarks/gpu_check.sh on a machine without a GPU (CI's case; a GPU is hidden where there is one): it says that
no GPU is present and exits 0 before building anything."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_without_a_gpu_it_says_so_and_exits_0_before_building(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
                   "GPU_CHECK_LOGS": str(tmp_path / "logs")}
    result = subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gpu_check: no GPU present" in result.stdout
    assert "== build" not in result.stdout and not (tmp_path / "logs").exists()
