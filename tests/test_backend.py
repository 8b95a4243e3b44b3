"""The backend switch: get_backend/set_backend/use_backend, their errors, the kernels each backend selects, and
the default ('cpp' when the compiled extension loads, else 'python' with a warning), checked in fresh
interpreters since the default is decided at import."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import manual_conv
from manual_conv import backend as backend_module
from manual_conv.ops import conv_reference

ROOT = Path(__file__).resolve().parents[1]
needs_extension = pytest.mark.skipif(not manual_conv.extension_available(), reason="manual_conv._C is not built")


@pytest.fixture(autouse=True)
def restore_backend():
    previous = manual_conv.get_backend()
    yield
    manual_conv.set_backend(previous)


def test_extension_available_is_a_bool():
    assert isinstance(manual_conv.extension_available(), bool)


FLOATING_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def test_set_backend_selects_the_kernels():
    manual_conv.set_backend("python")
    assert manual_conv.get_backend() == "python"
    with manual_conv.use_conv_algorithm("gemm"):  # other algorithms wrap these kernels (test_winograd.py)
        assert backend_module.conv_kernels() is conv_reference
    assert not any(backend_module.compiled_layers(torch.ones(1, dtype=dtype)) for dtype in FLOATING_DTYPES)


@needs_extension
def test_cpp_backend_selects_the_compiled_ops():
    manual_conv.set_backend("cpp")
    assert manual_conv.get_backend() == "cpp"
    with manual_conv.use_conv_algorithm("gemm"):
        assert backend_module.conv_kernels() is torch.ops.manual_conv
    assert all(backend_module.compiled_layers(torch.ones(1, dtype=dtype)) for dtype in FLOATING_DTYPES)
    # the compiled layers are built for floating point only: integer max pooling stays on the Python path
    assert not any(backend_module.compiled_layers(torch.ones(1, dtype=dtype))
                   for dtype in (torch.int64, torch.uint8, torch.bool))


@pytest.mark.parametrize("name", ["numpy", "CPP", "", None])
def test_unknown_backend_is_a_value_error_and_changes_nothing(name):
    manual_conv.set_backend("python")
    with pytest.raises(ValueError, match="unknown backend"):
        manual_conv.set_backend(name)
    with pytest.raises(ValueError, match="unknown backend"):
        with manual_conv.use_backend(name):
            pass
    assert manual_conv.get_backend() == "python"


@needs_extension
def test_use_backend_switches_then_restores():
    manual_conv.set_backend("python")
    with manual_conv.use_backend("cpp"):
        assert manual_conv.get_backend() == "cpp"
        with manual_conv.use_backend("python"):
            assert manual_conv.get_backend() == "python"
        assert manual_conv.get_backend() == "cpp"
    assert manual_conv.get_backend() == "python"


def test_use_backend_restores_after_an_exception():
    manual_conv.set_backend("python")
    target = "cpp" if manual_conv.extension_available() else "python"
    with pytest.raises(KeyError):
        with manual_conv.use_backend(target):
            raise KeyError("raised inside the block")
    assert manual_conv.get_backend() == "python"


def test_cpp_without_the_extension_is_a_clear_runtime_error(monkeypatch):
    monkeypatch.setattr(backend_module, "_extension_error", ImportError("simulated: no module named manual_conv._C"))
    manual_conv.set_backend("python")
    assert manual_conv.extension_available() is False
    for select in (manual_conv.set_backend, lambda name: manual_conv.use_backend(name).__enter__()):
        with pytest.raises(RuntimeError) as error:
            select("cpp")
        message = str(error.value)
        assert "'cpp' backend needs the compiled extension" in message
        assert "simulated: no module named manual_conv._C" in message  # why it could not be loaded
        assert "pip install --no-build-isolation -e ." in message  # how to fix it
        assert manual_conv.get_backend() == "python"


# Prints the default backend, extension_available() and the import's warnings, as JSON.
REPORT_DEFAULT = """
import json, sys, warnings
{block}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import manual_conv
print(json.dumps([manual_conv.get_backend(), manual_conv.extension_available(),
                  [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]]))
"""


def default_in_a_fresh_interpreter(block=""):
    script = REPORT_DEFAULT.format(block=block)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_extension
def test_default_is_cpp_when_the_extension_loads():
    backend, available, warnings = default_in_a_fresh_interpreter()
    assert (backend, available, warnings) == ("cpp", True, [])


def test_default_is_python_with_a_warning_when_the_extension_is_missing():
    # None in sys.modules makes `import manual_conv._C` raise ImportError, as when it was never built.
    backend, available, warnings = default_in_a_fresh_interpreter("sys.modules['manual_conv._C'] = None")
    assert (backend, available) == ("python", False)
    assert len(warnings) == 1 and "could not be loaded" in warnings[0] and "using the 'python' backend" in warnings[0]
