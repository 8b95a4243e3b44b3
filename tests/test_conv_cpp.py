"""The compiled conv core (csrc/, torch.ops.manual_conv.*) on its own: the four ops against the Python reference
kernels and against torch on randomized configurations and on shapes that take each chunking path; their
registered derivatives (gradcheck, gradgradcheck); torch.library.opcheck; torch.compile with no graph break;
a clear RuntimeError for every bad argument; no PyTorch convolution inside. Then the CUDA build (kernels present
in the library when built with CUDA) and GPU tests, which skip where there is no GPU.

The API-level tests (test_conv_parity.py, test_conv_gradcheck.py, ...) run on the 'cpp' backend as well."""
import ctypes
import os
import re
import shutil
import subprocess

import pytest
import torch
import torch.nn.functional as F
import torch.utils.cpp_extension
from hypothesis import given
from hypothesis import strategies as st

import manual_conv
from manual_conv.ops import conv_reference

pytestmark = pytest.mark.skipif(not manual_conv.extension_available(),
                                reason="the compiled extension manual_conv._C is not built")

ops = torch.ops.manual_conv
DTYPES = (torch.float32, torch.float64)
CUDA_BUILT = manual_conv.extension_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "manual_conv::conv2d", "CUDA")
needs_gpu = pytest.mark.skipif(not (CUDA_BUILT and torch.cuda.is_available()),
                               reason="needs a GPU and the extension built with CUDA")


def assert_close(actual, expected):
    """float32 sums of a few hundred products agree to ~1e-6 relative; 1e-4 leaves room for other GEMM orders."""
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if expected.dtype == torch.float32 else {}
    torch.testing.assert_close(actual, expected, **tolerance)


# ------------------------------------------------------------------------------------------ one convolution


class Conv:
    """A conv2d call in the contract's positional form, its tensors, and every kernel's expected result."""

    def __init__(self, input, weight, bias, stride, padding, dilation, groups):
        self.input, self.weight, self.bias = input, weight, bias
        self.args = (list(stride), list(padding), list(dilation), groups)
        self.output = F.conv2d(input, weight, bias, *self.args)
        self.grad_output = torch.randn(self.output.shape, dtype=input.dtype,
                                       generator=torch.Generator().manual_seed(1))

    def compiled(self):
        """The four ops' results: output, grad_input, grad_weight, grad_bias."""
        return (ops.conv2d(self.input, self.weight, self.bias, *self.args),
                ops.conv2d_input_grad(self.grad_output, self.weight, self.input.shape, *self.args),
                ops.conv2d_weight_grad(self.input, self.grad_output, self.weight.shape, *self.args),
                ops.conv2d_bias_grad(self.grad_output))

    def reference(self):
        """The same four from the Python reference kernels."""
        return (conv_reference.conv2d(self.input, self.weight, self.bias, *self.args),
                conv_reference.conv2d_input_grad(self.grad_output, self.weight, self.input.shape, *self.args),
                conv_reference.conv2d_weight_grad(self.input, self.grad_output, self.weight.shape, *self.args),
                conv_reference.conv2d_bias_grad(self.grad_output))

    def torch(self):
        """The same four from torch: F.conv2d and its autograd gradients."""
        leaves = [self.input.clone().requires_grad_(), self.weight.clone().requires_grad_()]
        output = F.conv2d(*leaves, self.bias, *self.args)
        grad_input, grad_weight = torch.autograd.grad(output, leaves, self.grad_output)
        return output.detach(), grad_input, grad_weight, self.grad_output.sum((0, 2, 3))


def assert_matches_reference_and_torch(conv):
    compiled = conv.compiled()
    for expected in (conv.torch(), conv.reference()):
        for actual, wanted in zip(compiled, expected, strict=True):
            assert actual.shape == wanted.shape and actual.dtype == wanted.dtype
            assert_close(actual, wanted)


def make_conv(batch, in_channels, out_channels, size, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
              groups=1, bias=True, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input = torch.randn(batch, in_channels, *size, dtype=dtype, generator=generator)
    weight = torch.randn(out_channels, in_channels // groups, *kernel, dtype=dtype, generator=generator)
    bias = torch.randn(out_channels, dtype=dtype, generator=generator) if bias else None
    return Conv(input, weight, bias, stride, padding, dilation, groups)


@st.composite
def convs(draw, dtype):
    """A valid convolution: groups (depthwise included), non-square kernels, stride, padding, dilation, batch 0."""
    groups = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())  # one input channel per group
    in_channels = groups if depthwise else groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 4)) for _ in range(2)]
    stride = [draw(st.integers(1, 3)) for _ in range(2)]
    padding = [draw(st.integers(0, 2)) for _ in range(2)]
    dilation = [draw(st.integers(1, 3)) for _ in range(2)]
    smallest = [max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(dilation, kernel, padding)]
    size = [minimum + draw(st.integers(0, 4)) for minimum in smallest]
    return make_conv(draw(st.integers(0, 3)), in_channels, out_channels, size, kernel, stride, padding, dilation,
                     groups, draw(st.booleans()), dtype, seed=draw(st.integers(0, 2**16)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_ops_match_reference_and_torch(single_thread, dtype, data):
    assert_matches_reference_and_torch(data.draw(convs(dtype)))


# The kernels work on chunks of output pixels (csrc/conv_core.cpp, plan_chunks): these shapes take every path.
CHUNK_PATHS = {
    # an image whose columns exceed the chunk budget: pieces of whole output rows, scattered in order
    "pieces-of-one-image": dict(batch=2, in_channels=128, out_channels=4, size=(21, 19), kernel=(3, 3),
                                padding=(1, 1)),
    "pieces-strided-grouped": dict(batch=2, in_channels=128, out_channels=8, size=(23, 21), kernel=(3, 2),
                                   stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=4),
    # stride 1 and out_width == in_width: each tap's column row is the input plane shifted (one copy per tap)
    "same-size-output-shifted-planes": dict(batch=2, in_channels=96, out_channels=4, size=(19, 17), kernel=(3, 5),
                                            padding=(2, 2), dilation=(2, 1)),
    # whole images large enough for their own GEMM: read and written in place
    "one-image-per-chunk": dict(batch=3, in_channels=4, out_channels=6, size=(20, 18), kernel=(3, 3), groups=2),
    # small images: several per chunk, gathered, with a shorter last chunk
    "several-images-per-chunk": dict(batch=37, in_channels=2, out_channels=3, size=(6, 5), kernel=(2, 3),
                                     padding=(1, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", CHUNK_PATHS)
def test_every_chunking_path(path, dtype):
    assert_matches_reference_and_torch(make_conv(**CHUNK_PATHS[path], dtype=dtype))


# With a bias and no groups, conv2d folds the bias into its GEMM (a row of ones) when there are fewer column rows
# than output pixels, and adds it around the GEMM otherwise (csrc/conv_core.cpp): both sides of that rule.
BIAS_PATHS = {
    "bias-in-gemm": dict(batch=4, in_channels=3, out_channels=5, size=(9, 8), kernel=(3, 3)),  # 27 rows, 168 pixels
    "bias-in-gemm-pieces-of-one-image": dict(batch=3, in_channels=128, out_channels=4, size=(21, 19),
                                             kernel=(3, 3), padding=(1, 1)),  # 1152 rows, 1197 pixels
    "bias-beside-gemm": dict(batch=1, in_channels=16, out_channels=5, size=(4, 4), kernel=(3, 3)),  # 144 rows, 4
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", BIAS_PATHS)
def test_bias_in_or_beside_the_gemm(path, dtype):
    assert_matches_reference_and_torch(make_conv(**BIAS_PATHS[path], dtype=dtype))


@pytest.mark.parametrize("path", CHUNK_PATHS)
def test_thread_count_does_not_change_results(with_threads, path):
    """Chunks are shared among threads; results must not depend on how many there are."""
    conv = make_conv(**CHUNK_PATHS[path])
    single, several = (with_threads(count, conv.compiled) for count in (1, 2))
    for one, other in zip(single, several, strict=True):
        assert_close(one, other)


def test_mkl_gets_its_thread_count_back_after_a_conv(with_threads):
    """Inside its parallel blocks the conv core tells MKL that it runs single-threaded (csrc/conv_cpu.cpp); each
    thread, the caller included, must get MKL's own setting back, or every later torch GEMM would run on one."""
    mkl = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    if not hasattr(mkl, "MKL_Get_Max_Threads"):
        pytest.skip("torch built without MKL")
    conv = make_conv(**CHUNK_PATHS["one-image-per-chunk"])

    def mkl_threads_before_and_after_a_conv():
        before = mkl.MKL_Get_Max_Threads()
        conv.compiled()
        return before, mkl.MKL_Get_Max_Threads()

    before, after = with_threads(2, mkl_threads_before_and_after_a_conv)
    assert before == after == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_reduced_precision_on_cpu(dtype):
    """float16/bfloat16 run natively (no silent upcast of the result), close to the float32 computation."""
    conv = make_conv(4, 6, 8, (9, 9), (3, 3), padding=(1, 1), groups=2, dtype=torch.float32)
    low = Conv(conv.input.to(dtype), conv.weight.to(dtype), conv.bias.to(dtype), conv.args[0], conv.args[1],
               conv.args[2], conv.args[3])
    for actual, expected in zip(low.compiled(), conv.compiled(), strict=True):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.float(), expected, rtol=3e-2, atol=0.5)


def test_non_contiguous_and_channels_last_tensors():
    conv = make_conv(2, 4, 6, (7, 8), (3, 2), stride=(2, 1), padding=(1, 1), groups=2)
    expected = conv.compiled()
    conv.input = conv.input.contiguous(memory_format=torch.channels_last)
    conv.weight = conv.weight.transpose(2, 3).contiguous().transpose(2, 3)
    conv.grad_output = conv.grad_output.contiguous(memory_format=torch.channels_last)
    for actual, wanted in zip(conv.compiled(), expected, strict=True):
        assert actual.is_contiguous()
        torch.testing.assert_close(actual, wanted)


def test_empty_batch():
    conv = make_conv(0, 4, 6, (5, 5), (3, 3), groups=2)
    output, grad_input, grad_weight, grad_bias = conv.compiled()
    assert output.shape == (0, 6, 3, 3) and grad_input.shape == (0, 4, 5, 5)
    assert torch.equal(grad_weight, torch.zeros_like(conv.weight)) and torch.equal(grad_bias, torch.zeros(6).double())


def test_no_pytorch_convolution_runs_inside_the_ops():
    """Every ATen op the compiled kernels dispatch (recorded by the profiler): GEMMs, copies, sums; no convolution."""
    conv = make_conv(3, 4, 6, (9, 9), (3, 3), padding=(1, 1), groups=2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as recording:
        conv.compiled()
    names = {event.name for event in recording.events()}
    assert {"manual_conv::conv2d", "manual_conv::conv2d_weight_grad"} <= names
    forbidden = [name for name in names
                 if not name.startswith("manual_conv::") and re.search(r"conv|im2col|col2im|unfold|fold", name)]
    assert forbidden == [], forbidden


# ------------------------------------------------------------------------------- derivatives and registration


def small_conv(bias=True):
    return make_conv(2, 4, 6, (6, 7), (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, bias=bias)


def differentiable_ops(conv):
    """Each op as a function of its tensor arguments, with float64 leaves that require grad."""
    input, weight, bias, grad_output = (tensor.clone().requires_grad_()
                                        for tensor in (conv.input, conv.weight, conv.bias, conv.grad_output))
    return {
        "conv2d": (lambda x, w, b: ops.conv2d(x, w, b, *conv.args), (input, weight, bias)),
        "conv2d_input_grad": (lambda g, w: ops.conv2d_input_grad(g, w, input.shape, *conv.args),
                              (grad_output, weight)),
        "conv2d_weight_grad": (lambda x, g: ops.conv2d_weight_grad(x, g, weight.shape, *conv.args),
                               (input, grad_output)),
        "conv2d_bias_grad": (ops.conv2d_bias_grad, (grad_output,)),
    }


@pytest.mark.parametrize("name", ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad"])
def test_registered_derivatives_gradcheck_and_gradgradcheck(single_thread, name):
    """The ops are each other's derivatives (manual_conv/ops/library.py), to second order."""
    function, inputs = differentiable_ops(small_conv())[name]
    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


def test_backward_graph_is_made_of_our_ops():
    """The gradient of conv2d is computed by conv2d_input_grad / conv2d_weight_grad / conv2d_bias_grad."""
    conv = small_conv()
    function, inputs = differentiable_ops(conv)["conv2d"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as recording:
        function(*inputs).backward(conv.grad_output)
    names = {event.name for event in recording.events()}
    assert {"manual_conv::conv2d_input_grad", "manual_conv::conv2d_weight_grad",
            "manual_conv::conv2d_bias_grad"} <= names


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_opcheck(single_thread, dtype, bias):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch with dynamic shapes, on every op."""
    conv = small_conv(bias)
    input, weight, grad_output = (tensor.to(dtype).requires_grad_()
                                  for tensor in (conv.input, conv.weight, conv.grad_output))
    bias = conv.bias.to(dtype).requires_grad_() if bias else None
    calls = [(ops.conv2d, (input, weight, bias, *conv.args)),
             (ops.conv2d_input_grad, (grad_output, weight, list(input.shape), *conv.args)),
             (ops.conv2d_weight_grad, (input, grad_output, list(weight.shape), *conv.args)),
             (ops.conv2d_bias_grad, (grad_output,))]
    for op, args in calls:
        torch.library.opcheck(op, args)


def assert_compiled_matches_eager(function, inputs, parameters, backend="aot_eager"):
    """function compiles into one graph (fullgraph=True fails on any graph break) whose value and gradients
    (w.r.t. `parameters`, through the compiled backward when they require grad) equal eager's."""
    torch._dynamo.reset()
    expected = function(*inputs)
    compiled = torch.compile(function, backend=backend, fullgraph=True)
    actual = compiled(*inputs)
    torch.testing.assert_close(actual, expected)
    if parameters:
        expected_grads = torch.autograd.grad(expected, parameters)
        actual_grads = torch.autograd.grad(actual, parameters)
        for actual_grad, expected_grad in zip(actual_grads, expected_grads, strict=True):
            torch.testing.assert_close(actual_grad, expected_grad)
    explanation = torch._dynamo.explain(function)(*inputs)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_training_step_on_the_ops(single_thread, backend):
    """Forward and backward of the ops (their registered autograd) in one compiled graph, as in a training step."""
    conv = small_conv()
    weight, bias = conv.weight.clone().requires_grad_(), conv.bias.clone().requires_grad_()
    input = conv.input.clone().requires_grad_()

    def loss(input):
        hidden = torch.tanh(ops.conv2d(input, weight, bias, *conv.args))
        return ops.conv2d_input_grad(hidden, weight, input.shape, *conv.args).square().mean()

    assert_compiled_matches_eager(loss, [input], [input, weight, bias], backend)


class SmallNet(torch.nn.Module):
    """Two manual_conv convolutions (one transposed) around torch elementwise ops."""

    def __init__(self):
        super().__init__()
        self.conv = manual_conv.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = manual_conv.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        return self.up(torch.tanh(self.conv(x))).square().mean()


def small_net():
    torch.manual_seed(0)
    return SmallNet().double(), torch.randn(2, 3, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_model_inference(single_thread, backend):
    model, input = small_net()
    model.requires_grad_(False)
    with manual_conv.use_backend("cpp"):
        assert_compiled_matches_eager(model, [input], [], backend)


def test_torch_compile_model_training(single_thread):
    model, input = small_net()
    with manual_conv.use_backend("cpp"):
        assert_compiled_matches_eager(model, [input], list(model.parameters()))


def test_compiled_op_with_dynamic_shapes(single_thread):
    """The fake kernels compute symbolic output sizes: one compiled graph serves several input sizes."""
    torch._dynamo.reset()
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)

    def conv(x):
        return ops.conv2d(x, weight, None, [2, 1], [1, 1], [1, 1], 1)

    compiled = torch.compile(conv, backend="aot_eager", dynamic=True, fullgraph=True)
    for size in [(1, 3, 6, 7), (3, 3, 9, 5)]:
        x = torch.randn(size, dtype=torch.float64)
        torch.testing.assert_close(compiled(x), conv(x))


# ----------------------------------------------------------------------------------------------- bad input

X = torch.ones(2, 4, 6, 6)
W = torch.ones(6, 2, 3, 3)  # groups=2
B = torch.ones(6)
DY = torch.ones(2, 6, 4, 4)  # the output of conv2d(X, W, groups=2)
ARGS = ([1, 1], [0, 0], [1, 1], 2)


def with_args(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=2):
    return (list(stride), list(padding), list(dilation), groups)


BAD_CALLS = [
    ("conv2d", (torch.ones(4, 6, 6), W, B, *ARGS), r"expected input to be 4-D"),
    ("conv2d", (X, torch.ones(6, 2, 3), B, *ARGS), r"expected weight to be 4-D"),
    ("conv2d", (X, W.double(), B, *ARGS), r"same dtype.*Float.*Double"),
    ("conv2d", (X, W, B.double(), *ARGS), r"input and bias to have the same dtype"),
    ("conv2d", (X.bool(), W.bool(), None, *ARGS), r"numeric tensor, but got Bool"),
    ("conv2d", (X, W, torch.ones(5), *ARGS), r"expected bias of size \[6\]"),
    ("conv2d", (X, W, torch.ones(6, 1), *ARGS), r"expected bias of size \[6\]"),
    ("conv2d", (X, W, B, *with_args(stride=(0, 1))), r"stride must be positive"),
    ("conv2d", (X, W, B, *with_args(stride=(1, -2))), r"stride must be positive"),
    ("conv2d", (X, W, B, *with_args(padding=(-1, 0))), r"padding must be non-negative"),
    ("conv2d", (X, W, B, *with_args(dilation=(1, 0))), r"dilation must be positive"),
    ("conv2d", (X, W, B, [1, 1, 1], [0, 0], [1, 1], 2), r"stride to be a list of 2 ints"),
    ("conv2d", (X, W, B, [1, 1], [0], [1, 1], 2), r"padding to be a list of 2 ints"),
    ("conv2d", (X, W, B, *with_args(groups=0)), r"non-positive groups"),
    ("conv2d", (X, W, B, *with_args(groups=4)), r"divisible by groups=4"),
    ("conv2d", (X, W, B, *with_args(groups=1)), r"expected input\[2, 4, 6, 6\] to have 2 channels"),
    ("conv2d", (torch.ones(2, 4, 2, 2), W, B, *ARGS), r"Kernel size can't be greater than actual input size"),
    ("conv2d", (X, W, B, *with_args(dilation=(3, 3))), r"Kernel size can't be greater"),
    ("conv2d", (X, torch.ones(6, 2, 0, 3), B, *ARGS), r"kernel size must be positive"),
    ("conv2d", (X, torch.ones(0, 2, 3, 3), None, *ARGS), r"expected weight to be at least 2 at dimension 0"),
    ("conv2d_input_grad", (DY, W, [2, 4, 6], *ARGS), r"expected input to be 4-D"),
    ("conv2d_input_grad", (DY, W, [2, 4, 5, 5], *ARGS), r"expected grad_output of size \[2, 6, 3, 3\]"),
    ("conv2d_input_grad", (DY, W, [3, 4, 6, 6], *ARGS), r"expected grad_output of size \[3, 6, 4, 4\]"),
    ("conv2d_input_grad", (DY, W, [2, 2, 6, 6], *ARGS), r"to have 4 channels, but got 2"),
    ("conv2d_input_grad", (DY, W, [2, 4, -6, 6], *ARGS), r"sizes must be non-negative"),
    ("conv2d_input_grad", (DY.double(), W, list(X.shape), *ARGS), r"same dtype"),
    ("conv2d_input_grad", (torch.ones(2, 6, 16), W, list(X.shape), *ARGS), r"expected grad_output of size"),
    ("conv2d_weight_grad", (X, DY, [6, 2, 3], *ARGS), r"expected weight to be 4-D"),
    ("conv2d_weight_grad", (X, DY, [6, 2, 4, 4], *ARGS), r"expected grad_output of size \[2, 6, 3, 3\]"),
    ("conv2d_weight_grad", (X, DY, [5, 2, 3, 3], *ARGS), r"divisible by groups=2"),
    ("conv2d_weight_grad", (X, DY, [6, 3, 3, 3], *ARGS), r"to have 6 channels, but got 4"),
    ("conv2d_weight_grad", (X, DY[:1], list(W.shape), *ARGS), r"expected grad_output of size \[2, 6, 4, 4\]"),
    ("conv2d_weight_grad", (X, DY.double(), list(W.shape), *ARGS), r"same dtype"),
    ("conv2d_bias_grad", (torch.ones(6, 4),), r"expected grad_output to be 4-D"),
    ("conv2d_bias_grad", (torch.ones(2, 6, 4, 4, dtype=torch.bool),), r"numeric tensor, but got Bool"),
]


@pytest.mark.parametrize(("name", "args", "message"), BAD_CALLS,
                         ids=[f"{name}-{index}" for index, (name, _, _) in enumerate(BAD_CALLS)])
def test_bad_arguments_raise_a_clear_runtime_error(name, args, message):
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, name)(*args)


# --------------------------------------------------------------------------------------------- CUDA build


def cuobjdump():
    """The CUDA toolkit's cuobjdump, or the copy that ships with triton (a dependency of torch's CUDA wheels)."""
    candidates = [shutil.which("cuobjdump")]
    if torch.utils.cpp_extension.CUDA_HOME:
        candidates.append(os.path.join(torch.utils.cpp_extension.CUDA_HOME, "bin", "cuobjdump"))
    candidates.append("/usr/local/cuda/bin/cuobjdump")
    try:
        import triton

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def test_extension_has_cuda_kernels_when_built_with_cuda():
    """With FORCE_CUDA=1 (CI: no GPU, compile and link only) the library must hold the CUDA kernels (the conv
    core's and the compiled layers') for every architecture of TORCH_CUDA_ARCH_LIST, and register the ops for the
    CUDA dispatch key."""
    forced = os.environ.get("FORCE_CUDA") == "1"
    if not (CUDA_BUILT or forced):
        pytest.skip("the extension was built without CUDA")
    assert CUDA_BUILT, "FORCE_CUDA=1 but the ops have no CUDA kernels: the extension was built without CUDA"
    for op in ("manual_conv::max_pool2d", "manual_conv::relu_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), f"{op} has no CUDA kernel"
    tool = cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump to list the device code")
    library = manual_conv._C.__file__
    elf_list = subprocess.run([tool, "--list-elf", library], capture_output=True, text=True, check=True).stdout
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0").replace(" ", ";").split(";")
    for arch in filter(None, archs):
        assert f"sm_{arch.replace('.', '').removesuffix('+PTX')}" in elf_list, elf_list
    symbols = subprocess.run([tool, "--dump-elf-symbols", library], capture_output=True, text=True, check=True).stdout
    for kernel in ("im2col_kernel", "col2im_kernel", "max_pool2d_kernel", "relu_backward_kernel"):
        assert kernel in symbols, f"{kernel} missing from the device code"


# ------------------------------------------------------------------------------------------------------ GPU


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", CHUNK_PATHS)
def test_cuda_matches_cpu(path, dtype):
    conv = make_conv(**CHUNK_PATHS[path], dtype=dtype)
    expected = conv.compiled()
    conv.input, conv.weight, conv.bias, conv.grad_output = (
        tensor.cuda() for tensor in (conv.input, conv.weight, conv.bias, conv.grad_output))
    for actual, wanted in zip(conv.compiled(), expected, strict=True):
        assert actual.is_cuda
        assert_close(actual.cpu(), wanted)


@needs_gpu
@given(data=st.data())
def test_cuda_matches_cpu_on_random_configs(data):
    conv = data.draw(convs(torch.float64))
    expected = conv.compiled()
    conv.input, conv.weight, conv.grad_output = (tensor.cuda() for tensor in (conv.input, conv.weight,
                                                                             conv.grad_output))
    conv.bias = conv.bias.cuda() if conv.bias is not None else None
    for actual, wanted in zip(conv.compiled(), expected, strict=True):
        assert_close(actual.cpu(), wanted)


@needs_gpu
@pytest.mark.parametrize("name", ["conv2d", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad"])
def test_cuda_gradcheck_and_gradgradcheck(name):
    conv = small_conv()
    conv.input, conv.weight, conv.bias, conv.grad_output = (
        tensor.cuda() for tensor in (conv.input, conv.weight, conv.bias, conv.grad_output))
    function, inputs = differentiable_ops(conv)[name]
    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_reduced_precision_forward_accumulates_in_float32(dtype):
    """float16/bfloat16 storage, float32 accumulation: as close to the float32 result as rounding the inputs
    and the output allows, also for a long reduction (C_in*kH*kW = 1152)."""
    conv = make_conv(4, 128, 16, (12, 12), (3, 3), padding=(1, 1), dtype=torch.float32)
    low = [tensor.to(dtype).cuda() for tensor in (conv.input, conv.weight, conv.bias)]
    expected = F.conv2d(*(tensor.float() for tensor in low), *conv.args)
    actual = ops.conv2d(*low, *conv.args)
    assert actual.dtype == dtype
    output_rounding = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    torch.testing.assert_close(actual.float(), expected, rtol=2 * output_rounding, atol=1e-2)


@needs_gpu
def test_cuda_ops_reject_mixed_devices():
    with pytest.raises(RuntimeError, match="same device"):
        ops.conv2d(X.cuda(), W, None, *ARGS)
