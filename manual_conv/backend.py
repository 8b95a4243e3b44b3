"""Which kernels the autograd Functions run: the Python reference ('python') or the compiled ones ('cpp').

The backend selects the conv core (``conv_kernels``, under the conv algorithm of ``algorithm.py``) and the
compiled layers: max pooling's forward, ReLU's backward (``compiled_layers``), and on CPU max pooling's backward
and dropout's mask (``compiled_cpu_layers``).
The compiled kernels are the extension ``manual_conv._C`` built from ``csrc/``; importing it registers the ops
``torch.ops.manual_conv.*``, and ``manual_conv.ops.library`` (imported last by the package's ``__init__``, as it
builds on the Functions' modules) adds their fake kernels and autograd formulas. When the extension is present
'cpp' is the default; when it is missing manual_conv still works on 'python' and warns once.
"""
import contextlib
import importlib
import warnings

import torch

from . import algorithm

BACKENDS = ("python", "cpp")

try:
    importlib.import_module("manual_conv._C")  # loading the library registers torch.ops.manual_conv.*
    _extension_error = None
except ImportError as error:  # not built, or built against another torch
    _extension_error = error
    warnings.warn(
        f"manual_conv: the compiled extension could not be loaded ({error}); using the 'python' backend. "
        "Build it with `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

_backend = "python" if _extension_error else "cpp"


def extension_available():
    """True when the compiled C++/CUDA kernels (``manual_conv._C``) are loaded."""
    return _extension_error is None


def get_backend():
    """The active backend's name: 'python' or 'cpp'."""
    return _backend


def set_backend(name):
    """Select the kernels for every later call: 'python' (reference) or 'cpp' (compiled extension)."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"manual_conv: unknown backend {name!r}; expected one of {BACKENDS}")
    if name == "cpp" and not extension_available():
        raise RuntimeError(
            "manual_conv: the 'cpp' backend needs the compiled extension manual_conv._C, which could not be "
            f"loaded ({_extension_error}). Build it with `pip install --no-build-isolation -e .`."
        )
    _backend = name


@contextlib.contextmanager
def use_backend(name):
    """Context manager: run the enclosed code on backend ``name``, then restore the previous one."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def conv_kernels():
    """The active backend's four conv kernels (conv2d, conv2d_input_grad, conv2d_weight_grad, conv2d_bias_grad),
    under the active conv algorithm: the im2col ones, or ones that run Winograd where it applies (algorithm.py)."""
    return algorithm.conv_kernels(_backend)


# The dtypes the compiled layers are built for; integer max pooling, for one, stays on the Python path.
_COMPILED_LAYER_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def compiled_layers(tensor):
    """Whether the layers with a compiled kernel (max pooling's forward, ReLU's backward) run it on ``tensor``:
    on the 'cpp' backend, for a floating-point tensor. Otherwise they run their Python reference code."""
    return _backend == "cpp" and tensor.dtype in _COMPILED_LAYER_DTYPES


def compiled_cpu_layers(tensor):
    """Whether the layers with a kernel compiled for the CPU only (max pooling's backward, dropout's mask) run it
    on ``tensor``: as ``compiled_layers``, and for a CPU tensor. Otherwise they run their Python code."""
    return compiled_layers(tensor) and tensor.device.type == "cpu"
