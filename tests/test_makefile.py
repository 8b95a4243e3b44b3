"""The Makefile's set-up is idempotent in time: pip installs only when the pins change, and the extension is rebuilt
only when csrc/, setup.py, the torch pin or the CUDA build settings change, or its library is missing; `make demo`
runs the demo.

Run on a copy of the Makefile in a scratch folder, with a stand-in for .venv/bin/python that records its commands
(and, for the editable install, leaves a library behind as the real build does): make itself is what is tested."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORDING_PYTHON = """#!/bin/sh
echo "$*" >>"$(dirname "$0")/calls"
case "$*" in *" -e ."*) touch manual_conv/_C.fake.so ;; esac
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


@pytest.fixture
def project(tmp_path):
    """A scratch project: the Makefile, setup.py, two csrc files and the recording python."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    (tmp_path / "setup.py").write_text("# stand-in\n")
    (tmp_path / "csrc").mkdir()
    for name in ("ops.cpp", "conv_cuda.cu"):
        (tmp_path / "csrc" / name).write_text("// stand-in\n")
    (tmp_path / "manual_conv").mkdir()
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(RECORDING_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def python_calls(project, target, *overrides):
    """`make TARGET` in the scratch project: the python stand-in's command lines."""
    calls = project / ".venv" / "bin" / "calls"
    calls.unlink(missing_ok=True)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "MAKEFLAGS", "MAKELEVEL")}
    subprocess.run(["make", "--no-print-directory", target, *overrides], cwd=project, env=environment,
                   check=True, capture_output=True, text=True)
    # Everything ten seconds back, in the same order: a change the test makes next is newer than any stamp, however
    # coarse the file system's clock.
    for path in [project, *project.rglob("*")]:
        times = path.stat()
        os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns - 10**10))
    return calls.read_text().splitlines() if calls.exists() else []


def setup_runs(project, *overrides):
    """What `make setup` asked the python stand-in to do: 'deps' (pip install of the pins), 'build' or both."""
    return {"build" if " -e ." in line else "deps" for line in python_calls(project, "setup", *overrides)}


def test_first_setup_installs_and_builds_then_a_second_does_nothing(project):
    assert setup_runs(project) == {"deps", "build"}
    assert setup_runs(project) == set()


@pytest.mark.parametrize("change", ["csrc/ops.cpp", "setup.py", "a new source", "a removed source"])
def test_a_source_change_rebuilds_without_reinstalling(project, change):
    setup_runs(project)
    if change == "a new source":
        (project / "csrc" / "new.cpp").write_text("// new\n")
    elif change == "a removed source":
        (project / "csrc" / "conv_cuda.cu").unlink()
    else:
        (project / change).touch()
    assert setup_runs(project) == {"build"}
    assert setup_runs(project) == set()


def test_a_missing_library_is_rebuilt(project):
    setup_runs(project)
    (project / "manual_conv" / "_C.fake.so").unlink()
    assert setup_runs(project) == {"build"}


def test_build_settings_rebuild_and_a_new_torch_pin_reinstalls_and_rebuilds(project):
    setup_runs(project)
    assert setup_runs(project, "FORCE_CUDA=1") == {"build"}
    assert setup_runs(project, "FORCE_CUDA=1") == set()
    assert setup_runs(project, "FORCE_CUDA=1", "PINS=torch==2.15.0 torchvision==0.30.0") == {"deps", "build"}
    assert setup_runs(project, "FORCE_CUDA=1", "PINS=torch==2.15.0 torchvision==0.30.0") == set()


def test_a_new_test_dependency_installs_without_rebuilding(project):
    setup_runs(project)
    assert setup_runs(project, "DEPS=pytest hypothesis ninja numpy tqdm matplotlib expecttest rich") == {"deps"}


def test_make_demo_runs_the_demo_after_the_set_up(project):
    setup_runs(project)
    assert python_calls(project, "demo") == ["-m manual_conv.demo"]
