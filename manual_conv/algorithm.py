"""Which algorithm computes a convolution: the im2col core ('gemm') or Winograd F(2×2, 3×3) ('winograd').

    manual_conv.set_conv_algorithm("auto")      # the default: Winograd where it is measurably faster ('cpp'),
                                                #   else im2col
    manual_conv.set_conv_algorithm("gemm")      # im2col + GEMM for every convolution
    manual_conv.set_conv_algorithm("winograd")  # Winograd for every convolution; an error where it cannot run
    with manual_conv.use_conv_algorithm("gemm"): ...

Winograd computes 3×3 convolutions with stride 1, dilation 1 and one group, in float32 or float64
(docs/derivations.md, "Winograd"). The choice is made per call from the layer's sizes, the same way for the forward
and for both gradients, on both backends (the 'python' backend runs ``ops/winograd.py``, the 'cpp' backend the ops
``torch.ops.manual_conv.winograd_conv2d`` / ``_input_grad`` / ``_weight_grad``, which show under those names in
the profiler). Whichever algorithm runs, the three maps stay each other's derivatives, so double backward works.
"""
import contextlib

import torch

from .ops import conv_reference, winograd

ALGORITHMS = ("auto", "gemm", "winograd")

# 'auto' runs Winograd where `benchmarks/conv_bench.py --thresholds` measured it faster than the im2col core,
# forward+backward on CPU (README, "Benchmarks"; one thread): with at least AUTO_CHANNELS input and output channels
# and an output of at least AUTO_MIN_SIDE rows and columns, or at least AUTO_MIN_CHANNELS channels and
# AUTO_MIN_SIDE_FEW_CHANNELS rows and columns; and in both cases at least AUTO_MIN_OUTPUT_PIXELS output pixels per
# call (batch x rows x columns).
# - Channels (batch 8, three sweeps): from 64 channels Winograd took 0.61-0.99x im2col's time from 7x7 on (1.06-1.14x
#   in a few cells); at 32 channels 0.83-0.98x from 14x14, a draw from 8x8 to 12x12, mostly slower below (up to
#   1.23x); with 8 or 16 channels, and on MNIST's first layer (one input channel), the per-tile transforms cost more
#   than the GEMM work they save (up to 1.5x and 2.5x).
# - Pixels per call (the second grid, 64 to 512 channels, two sweeps): a call pays for the weight's transform and
#   its pass over the transformed weight whatever its size, and edge tiles cut short waste work. Below 256 output
#   pixels Winograd took 0.92-1.48x im2col's time (batch 1 up to 14x14, 2 and 4 at 7x7, 8 at 4x4), at 1x1 and 3x3
#   1.0-2.8x whatever the batch; from 256 pixels and 4x4 on, 0.70-0.93x (1.05-1.15x in five cells).
AUTO_CHANNELS = 64
AUTO_MIN_CHANNELS = 32
AUTO_MIN_SIDE = 4
AUTO_MIN_SIDE_FEW_CHANNELS = 8
AUTO_MIN_OUTPUT_PIXELS = 256

_algorithm = "auto"


def get_conv_algorithm():
    """The active conv algorithm's name: 'auto', 'gemm' or 'winograd'."""
    return _algorithm


def set_conv_algorithm(name):
    """Select the conv algorithm for every later call: 'auto' (default), 'gemm' or 'winograd' (module docstring)."""
    global _algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"manual_conv: unknown conv algorithm {name!r}; expected one of {ALGORITHMS}")
    _algorithm = name


@contextlib.contextmanager
def use_conv_algorithm(name):
    """Context manager: run the enclosed code with conv algorithm ``name``, then restore the previous one."""
    previous = _algorithm
    set_conv_algorithm(name)
    try:
        yield
    finally:
        set_conv_algorithm(previous)


def winograd_obstacle(weight_size, stride, dilation, groups, tensor):
    """Why Winograd cannot compute this convolution (a sentence), or None when it can: the layer's shape
    (ops/winograd.py, ``layer_obstacle``) or its dtype. (A device the compiled extension has no Winograd kernels for
    gets the dispatcher's error when the op runs.)"""
    obstacle = winograd.layer_obstacle(weight_size, stride, dilation, groups)
    if obstacle is None and tensor.dtype not in (torch.float32, torch.float64):
        obstacle = f"it is built for float32 and float64, but this convolution is {tensor.dtype}"
    return obstacle


def _winograd_pays(input_size, weight_size, output_size, tensor):
    """'auto''s measured rule for the compiled kernels: on CPU, enough channels and output pixels for the saved
    GEMM work to show."""
    channels, side = min(input_size[1], weight_size[0]), min(output_size)
    return (tensor.device.type == "cpu" and input_size[0] * output_size[0] * output_size[1] >= AUTO_MIN_OUTPUT_PIXELS
            and ((channels >= AUTO_CHANNELS and side >= AUTO_MIN_SIDE)
                 or (channels >= AUTO_MIN_CHANNELS and side >= AUTO_MIN_SIDE_FEW_CHANNELS)))


def uses_winograd(input_size, weight_size, stride, padding, dilation, groups, tensor, backend):
    """Whether the active algorithm computes this convolution (the conv2d of ``input_size`` by a weight of
    ``weight_size``; ``tensor`` gives dtype and device) by Winograd on ``backend``. Raises NotImplementedError when
    the algorithm is 'winograd' and Winograd cannot run it. 'auto' leaves the 'python' backend on im2col: its
    Winograd is the readable reference, whose whole-batch transforms hold 4x the input and output at once (over
    the 3x native memory the project allows every op), and no speed was measured for it to pay."""
    if _algorithm == "gemm" or (_algorithm == "auto" and backend == "python"):
        return False
    obstacle = winograd_obstacle(weight_size, stride, dilation, groups, tensor)
    if _algorithm == "winograd":
        if obstacle:
            raise NotImplementedError(
                f"manual_conv: conv algorithm 'winograd' cannot compute this convolution: {obstacle}. "
                "Use manual_conv.set_conv_algorithm('auto') to run Winograd only where it applies, or 'gemm'.")
        return True
    output_size = [size + 2 * p - 2 for size, p in zip(input_size[2:], padding)]
    return obstacle is None and _winograd_pays(input_size, weight_size, output_size, tensor)


class SelectingKernels:
    """The four conv kernels of one backend (the kernel contract of ops/conv_reference.py), each call running the
    Winograd kernels or the im2col ones as ``uses_winograd`` decides for its layer."""

    def __init__(self, backend, gemm, winograd_kernels):
        self.backend, self.gemm, self.winograd = backend, gemm, winograd_kernels

    def _kernels(self, input_size, weight_size, stride, padding, dilation, groups, tensor):
        chosen = uses_winograd(input_size, weight_size, stride, padding, dilation, groups, tensor, self.backend)
        return self.winograd if chosen else self.gemm

    def conv2d(self, input, weight, bias, stride, padding, dilation, groups):
        kernels = self._kernels(input.shape, weight.shape, stride, padding, dilation, groups, input)
        return kernels.conv2d(input, weight, bias, stride, padding, dilation, groups)

    def conv2d_input_grad(self, grad_output, weight, input_size, stride, padding, dilation, groups):
        kernels = self._kernels(input_size, weight.shape, stride, padding, dilation, groups, grad_output)
        return kernels.conv2d_input_grad(grad_output, weight, input_size, stride, padding, dilation, groups)

    def conv2d_weight_grad(self, input, grad_output, weight_size, stride, padding, dilation, groups):
        kernels = self._kernels(input.shape, weight_size, stride, padding, dilation, groups, input)
        return kernels.conv2d_weight_grad(input, grad_output, weight_size, stride, padding, dilation, groups)

    def conv2d_bias_grad(self, grad_output):
        return self.gemm.conv2d_bias_grad(grad_output)


class CompiledWinograd:
    """The compiled Winograd ops under the kernel contract's names."""

    @staticmethod
    def conv2d(*args):
        return torch.ops.manual_conv.winograd_conv2d(*args)

    @staticmethod
    def conv2d_input_grad(*args):
        return torch.ops.manual_conv.winograd_conv2d_input_grad(*args)

    @staticmethod
    def conv2d_weight_grad(*args):
        return torch.ops.manual_conv.winograd_conv2d_weight_grad(*args)


class PythonWinograd:
    """ops/winograd.py's kernels, each inside a profiler range named as the compiled op it mirrors, so that the
    profiler shows which algorithm ran on the 'python' backend too."""

    @staticmethod
    def conv2d(*args):
        with torch.profiler.record_function("manual_conv::winograd_conv2d (python)"):
            return winograd.conv2d(*args)

    @staticmethod
    def conv2d_input_grad(*args):
        with torch.profiler.record_function("manual_conv::winograd_conv2d_input_grad (python)"):
            return winograd.conv2d_input_grad(*args)

    @staticmethod
    def conv2d_weight_grad(*args):
        with torch.profiler.record_function("manual_conv::winograd_conv2d_weight_grad (python)"):
            return winograd.conv2d_weight_grad(*args)


_KERNELS = {"python": SelectingKernels("python", conv_reference, PythonWinograd),
            "cpp": SelectingKernels("cpp", torch.ops.manual_conv, CompiledWinograd)}


def conv_kernels(backend):
    """The kernels ``backend`` runs under the active algorithm: for 'gemm' its im2col kernels themselves
    (ops/conv_reference.py or torch.ops.manual_conv), else kernels that choose per call."""
    kernels = _KERNELS[backend]
    return kernels.gemm if _algorithm == "gemm" else kernels
