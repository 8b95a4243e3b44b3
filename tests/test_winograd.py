"""Winograd F(2×2, 3×3) (docs/derivations.md, "Winograd"): the transform matrices made from the interpolation points;
the 'python' reference (manual_conv/ops/winograd.py) and the compiled ops (csrc/winograd_*) against torch and each
other, on randomized 3×3 configurations and on shapes that take every chunking path of the compiled kernels; their
derivatives (gradcheck, gradgradcheck, to any order through the same ops); opcheck and torch.compile; the
algorithm switch (manual_conv.set_conv_algorithm), what 'auto' picks and the error where 'winograd' cannot run; and
the accuracy rule that chose the tile size."""
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import manual_conv
import manual_conv.functional as mF
from manual_conv import algorithm
from manual_conv.ops import winograd
from test_conv_parity import RecordDispatchedOps

needs_extension = pytest.mark.skipif(not manual_conv.extension_available(),
                                     reason="the compiled extension manual_conv._C is not built")
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def restore_algorithm():
    previous = manual_conv.get_conv_algorithm()
    yield
    manual_conv.set_conv_algorithm(previous)


def assert_close(actual, expected):
    """float32: Winograd's error is within a few times im2col's (see the accuracy test), so the same 1e-4 holds."""
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if expected.dtype == torch.float32 else {}
    torch.testing.assert_close(actual, expected, **tolerance)


# ------------------------------------------------------------------------------------------ transform matrices


@pytest.mark.parametrize("tile", winograd.TILES)
def test_transform_matrices_compute_the_correlation_exactly(tile):
    """Aᵀ [(G g) ⊙ (Bᵀ d)] = (Σ_k g_k d_{i+k})_{i<m} in exact rational arithmetic, for any g and d."""
    a_t, g_matrix, b_t = winograd.transform_matrices(tile)
    alpha = tile + 2
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        g = [Fraction(int(v)) for v in torch.randint(-9, 10, (3,), generator=generator)]
        d = [Fraction(int(v)) for v in torch.randint(-9, 10, (alpha,), generator=generator)]
        kernel = [sum(row[k] * g[k] for k in range(3)) for row in g_matrix]
        data = [sum(row[k] * d[k] for k in range(alpha)) for row in b_t]
        result = [sum(row[p] * kernel[p] * data[p] for p in range(alpha)) for row in a_t]
        assert result == [sum(g[k] * d[i + k] for k in range(3)) for i in range(tile)]


def test_f2x3_matrices_are_the_ones_the_compiled_kernels_apply():
    """The points 0, 1, −1, ∞ give the matrices written out in csrc/winograd_tile.h."""
    a_t, g, b_t = winograd.transform_matrices(2)
    half = Fraction(1, 2)
    assert a_t == ((1, 1, 1, 0), (0, 1, -1, 1))
    assert g == ((-1, 0, 0), (half, half, half), (half, -half, half), (0, 0, 1))
    assert b_t == ((-1, 0, 1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, -1, 0, 1))


# ------------------------------------------------------------------------------------- parity on random configs


@st.composite
def winograd_convs(draw, dtype):
    """A 3×3 stride-1 convolution: odd and even sizes, padding 0/1/2 per axis, bias or not, batch 0 to 3."""
    padding = [draw(st.integers(0, 2)) for _ in range(2)]
    size = [max(1, 3 - 2 * p) + draw(st.integers(0, 6)) for p in padding]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    batch, in_channels, out_channels = draw(st.integers(0, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    input = torch.randn(batch, in_channels, *size, dtype=dtype, generator=generator)
    weight = torch.randn(out_channels, in_channels, 3, 3, dtype=dtype, generator=generator)
    bias = torch.randn(out_channels, dtype=dtype, generator=generator) if draw(st.booleans()) else None
    if draw(st.booleans()):
        input = input.contiguous(memory_format=torch.channels_last)
    return input, weight, bias, padding


def output_and_grads(function, input, weight, bias, padding):
    leaves = [tensor.detach().clone().requires_grad_() for tensor in (input, weight, bias) if tensor is not None]
    output = function(*leaves[:2], leaves[2] if bias is not None else None, padding=padding)
    grad_output = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(0))
    return (output, *torch.autograd.grad(output, leaves, grad_output)) if output.numel() else (output,)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@given(data=st.data())
def test_winograd_matches_torch(backend, dtype, data):
    """Output (values and memory format) and every gradient equal torch's, with 'winograd' forced."""
    conv = data.draw(winograd_convs(dtype))
    expected = output_and_grads(F.conv2d, *conv)
    with manual_conv.use_conv_algorithm("winograd"):
        actual = output_and_grads(mF.conv2d, *conv)
    if expected[0].numel():  # (an empty tensor's memory format is ops/conv.py's rule, not the algorithm's)
        assert actual[0].is_contiguous(memory_format=torch.channels_last) == expected[0].is_contiguous(
            memory_format=torch.channels_last)
    for actual_tensor, expected_tensor in zip(actual, expected, strict=True):
        assert_close(actual_tensor, expected_tensor)


@pytest.mark.parametrize("padding", [(0, 0), (1, 1), (2, 1)])
def test_gradcheck_and_gradgradcheck(backend, padding):
    """Derivatives of the Winograd path to second order, conv2d and conv_transpose2d (whose forward is the
    Winograd input gradient), odd sizes."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(1, 2, 4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, generator=generator, requires_grad=True)
    transposed_weight = weight.detach().transpose(0, 1).clone().requires_grad_()  # (in, out, 3, 3)
    with manual_conv.use_conv_algorithm("winograd"):
        calls = ((lambda x, w, b: mF.conv2d(x, w, b, padding=padding), (input, weight, bias)),
                 (lambda x, w: mF.conv_transpose2d(x, w, padding=padding), (input, transposed_weight)))
        for function, tensors in calls:
            assert torch.autograd.gradcheck(function, tensors)
            assert torch.autograd.gradgradcheck(function, tensors)


# ------------------------------------------------------------------- the compiled ops: every path of the kernels

ops = torch.ops.manual_conv

# The compiled kernels cut the tiles into chunks and the GEMMs' result channels into blocks
# (csrc/winograd_core.cpp): in float64 these shapes take each path.
KERNEL_PATHS = {
    # an image with more tiles than a chunk holds: pieces of tile rows, the input gradient added across them
    "pieces-of-one-image": dict(batch=2, in_channels=64, out_channels=64, size=(40, 37), padding=(1, 0)),
    # small images: several per chunk, and a shorter last chunk
    "several-images-per-chunk": dict(batch=37, in_channels=3, out_channels=2, size=(5, 6), padding=(1, 2)),
    # more transformed weight than a block holds: output channels (forward, weight gradient) and input channels
    # (input gradient) in blocks
    "channel-blocks": dict(batch=1, in_channels=520, out_channels=96, size=(6, 5), padding=(1, 1)),
}


def kernel_path_tensors(batch, in_channels, out_channels, size, padding, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(batch, in_channels, *size, dtype=dtype, generator=generator)
    weight = torch.randn(out_channels, in_channels, 3, 3, dtype=dtype, generator=generator)
    bias = torch.randn(out_channels, dtype=dtype, generator=generator)
    output_size = [s + 2 * p - 2 for s, p in zip(size, padding)]
    grad_output = torch.randn(batch, out_channels, *output_size, dtype=dtype, generator=generator)
    return input, weight, bias, grad_output, ([1, 1], list(padding), [1, 1], 1)


def compiled_results(input, weight, bias, grad_output, args):
    return (ops.winograd_conv2d(input, weight, bias, *args),
            ops.winograd_conv2d_input_grad(grad_output, weight, list(input.shape), *args),
            ops.winograd_conv2d_weight_grad(input, grad_output, list(weight.shape), *args))


@needs_extension
@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_compiled_ops_match_the_reference_and_the_im2col_core(path):
    input, weight, bias, grad_output, args = kernel_path_tensors(**KERNEL_PATHS[path])
    reference = (winograd.conv2d(input, weight, bias, *args),
                 winograd.conv2d_input_grad(grad_output, weight, input.shape, *args),
                 winograd.conv2d_weight_grad(input, grad_output, weight.shape, *args))
    im2col = (ops.conv2d(input, weight, bias, *args),
              ops.conv2d_input_grad(grad_output, weight, list(input.shape), *args),
              ops.conv2d_weight_grad(input, grad_output, list(weight.shape), *args))
    for actual, from_reference, from_im2col in zip(compiled_results(input, weight, bias, grad_output, args),
                                                   reference, im2col, strict=True):
        assert_close(actual, from_reference)
        assert_close(actual, from_im2col)


@needs_extension
@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_thread_count_does_not_change_results(with_threads, path):
    """Chunks are shared among threads: the forward and the input gradient come out bit for bit, the weight
    gradient up to rounding (its sums are added per thread's block of chunks, or, when they are large as in
    'channel-blocks', shared out by output channels: on 2 threads that path, on 1 the other)."""
    tensors = kernel_path_tensors(**KERNEL_PATHS[path], dtype=torch.float32)
    single, several = (with_threads(count, lambda: compiled_results(*tensors)) for count in (1, 2))
    assert torch.equal(single[0], several[0]) and torch.equal(single[1], several[1])
    assert_close(single[2], several[2])


@needs_extension
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    """Schema, fake kernels, autograd registration and AOT dispatch with dynamic shapes, on the three ops."""
    input, weight, bias_tensor, grad_output, args = kernel_path_tensors(2, 3, 4, (5, 6), (1, 0))
    input, weight, grad_output = (tensor.requires_grad_() for tensor in (input, weight, grad_output))
    bias_tensor = bias_tensor.requires_grad_() if bias else None
    for op, op_args in ((ops.winograd_conv2d, (input, weight, bias_tensor, *args)),
                        (ops.winograd_conv2d_input_grad, (grad_output, weight, list(input.shape), *args)),
                        (ops.winograd_conv2d_weight_grad, (input, grad_output, list(weight.shape), *args))):
        torch.library.opcheck(op, op_args)


@needs_extension
def test_torch_compile_training_step_without_graph_break():
    """A model whose 3×3 convolution runs Winograd compiles to one graph, forward and backward, as on im2col."""
    torch.manual_seed(0)
    model = manual_conv.nn.Conv2d(3, 4, 3, padding=1).double()
    input = torch.randn(2, 3, 6, 5, dtype=torch.float64)

    def loss(x):
        return torch.tanh(model(x)).square().mean()

    with manual_conv.use_backend("cpp"), manual_conv.use_conv_algorithm("winograd"):
        torch._dynamo.reset()
        expected = torch.autograd.grad(loss(input), list(model.parameters()))
        compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
        actual = torch.autograd.grad(compiled(input), list(model.parameters()))
        explanation = torch._dynamo.explain(loss)(input)
    for actual_grad, expected_grad in zip(actual, expected, strict=True):
        torch.testing.assert_close(actual_grad, expected_grad)
    assert explanation.graph_break_count == 0


@needs_extension
@pytest.mark.parametrize("name, args, message", [
    ("winograd_conv2d", lambda x, w: (x, w, None, [2, 1], [1, 1], [1, 1], 1), "stride 1, dilation 1 and groups 1"),
    ("winograd_conv2d", lambda x, w: (x, w[:, :, :2], None, [1, 1], [1, 1], [1, 1], 1), "3x3 convolutions"),
    ("winograd_conv2d_input_grad", lambda x, w: (torch.randn(1, 3, 4, 4), w, [1, 2, 6, 6], [1, 1], [1, 1], [2, 2], 1),
     "dilation"),
    ("winograd_conv2d_weight_grad",
     lambda x, w: (x.half(), torch.randn(1, 3, 6, 6).half(), [3, 2, 3, 3], [1, 1], [1, 1], [1, 1], 1),
     "float32 and float64"),
])
def test_compiled_ops_reject_what_winograd_cannot_compute(name, args, message):
    input, weight = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match=message):
        getattr(ops, name)(*args(input, weight))


# ------------------------------------------------------------------------------------------ the algorithm switch


def test_set_get_and_use_conv_algorithm():
    manual_conv.set_conv_algorithm("gemm")
    assert manual_conv.get_conv_algorithm() == "gemm"
    with pytest.raises(KeyError):
        with manual_conv.use_conv_algorithm("winograd"):
            assert manual_conv.get_conv_algorithm() == "winograd"
            raise KeyError("raised inside the block")
    assert manual_conv.get_conv_algorithm() == "gemm"
    for name in ("fft", "Winograd", None):
        with pytest.raises(ValueError, match="unknown conv algorithm"):
            manual_conv.set_conv_algorithm(name)
    assert manual_conv.get_conv_algorithm() == "gemm"


@pytest.mark.parametrize("call, obstacle", [
    (lambda x, w: mF.conv2d(x, w, stride=2), "stride"),
    (lambda x, w: mF.conv2d(x, w, dilation=2), "dilation"),
    (lambda x, w: mF.conv2d(x, w[:2, :2], groups=2), "groups"),
    (lambda x, w: mF.conv2d(x, torch.randn(3, 4, 5, 5)), "(5, 5) kernel"),
    # (CPU float16/bfloat16 compute in float32, as torch's convolutions do, so Winograd runs them.)
    (lambda x, w: mF.conv2d(x.long(), w.long()), "float32 and float64"),
    (lambda x, w: mF.conv_transpose2d(x, w.transpose(0, 1), stride=2), "stride"),
])
def test_forcing_winograd_where_it_cannot_run_is_a_clear_error(backend, call, obstacle):
    input, weight = torch.randn(1, 4, 8, 8), torch.randn(3, 4, 3, 3)
    manual_conv.set_conv_algorithm("winograd")
    with pytest.raises(NotImplementedError, match="conv algorithm 'winograd' cannot compute") as error:
        call(input, weight)
    assert obstacle in str(error.value) and "set_conv_algorithm('auto')" in str(error.value)


def compiled_ops_run(input, weight, **kwargs):
    leaves = [input.requires_grad_(), weight.requires_grad_()]
    with RecordDispatchedOps() as recorder:
        output = mF.conv2d(*leaves, **kwargs)
        torch.autograd.grad(output, leaves, torch.ones_like(output))
    return {name.split(".")[1] for name in recorder.names if name.startswith("manual_conv.")}


WINOGRAD_OPS = {"winograd_conv2d", "winograd_conv2d_input_grad", "winograd_conv2d_weight_grad"}
IM2COL_OPS = {"conv2d", "conv2d_input_grad", "conv2d_weight_grad"}


@needs_extension
def test_auto_picks_winograd_above_the_measured_thresholds_and_im2col_below():
    many, some = algorithm.AUTO_CHANNELS, algorithm.AUTO_MIN_CHANNELS
    side, side_few = algorithm.AUTO_MIN_SIDE, algorithm.AUTO_MIN_SIDE_FEW_CHANNELS
    pixels = algorithm.AUTO_MIN_OUTPUT_PIXELS
    square = math.isqrt(pixels)  # a batch of one square output of at least `pixels` pixels

    def ops_for(batch, in_channels, out_channels, output_size, stride=1):
        return compiled_ops_run(torch.randn(batch, in_channels, output_size * stride, output_size * stride),
                                torch.randn(out_channels, in_channels, 3, 3), padding=1, stride=stride)

    def batch_for(size):  # the least batch of size x size outputs with `pixels` pixels
        return -(-pixels // size**2)

    with manual_conv.use_backend("cpp"):
        for call in ((batch_for(side), many, many, side), (1, many, many, square),
                     (batch_for(side_few), some, some, side_few), (1, some, many, square)):
            assert ops_for(*call) == WINOGRAD_OPS, call
        for call in ((1, some - 1, many, square), (1, many, some - 1, square),  # too few channels
                     (batch_for(side - 1), many, many, side - 1),  # output too small for any channels
                     (batch_for(side_few - 1), some, many, side_few - 1),  # ... for fewer than `many`
                     (1, many, many, math.isqrt(pixels - 1)),  # too few pixels per call
                     (1, many, many, square, 2)):  # stride 2
            assert ops_for(*call) == IM2COL_OPS, call
        with manual_conv.use_conv_algorithm("gemm"):
            assert ops_for(1, many, many, square) == IM2COL_OPS


def profiled_names(input, weight):
    with torch.profiler.profile() as profile:
        mF.conv2d(input, weight, padding=1).sum().backward()
    return {event.name for event in profile.events()}


def test_the_profiler_names_the_algorithm(backend):
    """The compiled ops carry the algorithm in their names; on 'python' a profiler range of the same name."""
    manual_conv.set_conv_algorithm("winograd")
    names = profiled_names(torch.randn(1, 2, 5, 5, requires_grad=True), torch.randn(3, 2, 3, 3, requires_grad=True))
    suffix = " (python)" if backend == "python" else ""
    assert {f"manual_conv::{name}{suffix}" for name in WINOGRAD_OPS} <= names


# ------------------------------------------------------------------------------------------------- accuracy


def largest_errors(function, input, weight, grad_output, padding):
    """The largest |error| of output, input gradient and weight gradient in float32 against float64 torch."""
    exact = [tensor.double().requires_grad_() for tensor in (input, weight)]
    exact_output = F.conv2d(*exact, padding=padding)
    exact_results = (exact_output, *torch.autograd.grad(exact_output, exact, grad_output.double()))
    leaves = [tensor.clone().requires_grad_() for tensor in (input, weight)]
    output = function(*leaves, padding=padding)
    results = (output, *torch.autograd.grad(output, leaves, grad_output))
    return [(result.double() - exact_result).abs().max().item()
            for result, exact_result in zip(results, exact_results, strict=True)]


def test_float32_error_is_within_four_times_native(backend):
    """The accuracy rule (docs/derivations.md, "Winograd"): F(2×2, 3×3)'s largest float32 error is at most 4× that
    of torch's own float32 convolution on the same call, for the output and both gradients. conv_bench.py
    measures it on every benchmark layer; this is one small layer."""
    generator = torch.Generator().manual_seed(0)
    input, weight = torch.randn(2, 32, 12, 12, generator=generator), torch.randn(32, 32, 3, 3, generator=generator)
    grad_output = torch.randn(2, 32, 12, 12, generator=generator)
    native = largest_errors(F.conv2d, input, weight, grad_output, 1)
    with manual_conv.use_conv_algorithm("winograd"):
        ours = largest_errors(mF.conv2d, input, weight, grad_output, 1)
    assert all(error <= 4 * native_error for error, native_error in zip(ours, native, strict=True)), (ours, native)


@pytest.mark.parametrize("tile", [tile for tile in winograd.TILES if tile > 2])
def test_reference_with_larger_tiles_is_exact_in_float64(tile):
    """F(3×3, 3×3) and F(4×4, 3×3), the tiles the accuracy rule rules out, are still the exact algorithm: float64
    parity."""
    input, weight, bias, grad_output, args = kernel_path_tensors(2, 3, 4, (9, 7), (1, 2))
    leaves = [input.clone().requires_grad_(), weight.clone().requires_grad_()]
    output = F.conv2d(*leaves, bias, padding=args[1])
    expected = (output, *torch.autograd.grad(output, leaves, grad_output))
    actual = (winograd.conv2d(input, weight, bias, *args, tile=tile),
              winograd.conv2d_input_grad(grad_output, weight, input.shape, *args, tile=tile),
              winograd.conv2d_weight_grad(input, grad_output, weight.shape, *args, tile=tile))
    for actual_tensor, expected_tensor in zip(actual, expected, strict=True):
        torch.testing.assert_close(actual_tensor, expected_tensor)


# ---------------------------------------------------------------------------------------------------------- CUDA

CUDA_BUILT = manual_conv.extension_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "manual_conv::conv2d", "CUDA")
needs_gpu = pytest.mark.skipif(not (CUDA_BUILT and torch.cuda.is_available()),
                               reason="needs a GPU and the extension built with CUDA")


def test_winograd_ops_have_cuda_kernels_when_the_extension_has_them():
    """A CUDA build (CI: FORCE_CUDA=1, compile and link only) registers the Winograd ops for CUDA too."""
    if not CUDA_BUILT:
        pytest.skip("the extension was built without CUDA")
    for name in WINOGRAD_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"manual_conv::{name}", "CUDA"), name


@needs_gpu
@pytest.mark.parametrize("path", KERNEL_PATHS)
def test_cuda_matches_cpu(path):
    tensors = kernel_path_tensors(**KERNEL_PATHS[path])
    expected = compiled_results(*tensors)
    actual = compiled_results(*(tensor.cuda() for tensor in tensors[:4]), tensors[4])
    for actual_tensor, expected_tensor in zip(actual, expected, strict=True):
        assert actual_tensor.is_cuda
        assert_close(actual_tensor.cpu(), expected_tensor)


@needs_gpu
def test_cuda_gradcheck_and_gradgradcheck():
    input, weight, bias, _, _ = (tensor.cuda() if isinstance(tensor, torch.Tensor) else tensor
                                 for tensor in kernel_path_tensors(1, 2, 2, (4, 5), (1, 1)))
    leaves = [tensor.requires_grad_() for tensor in (input, weight, bias)]
    with manual_conv.use_backend("cpp"), manual_conv.use_conv_algorithm("winograd"):
        assert torch.autograd.gradcheck(lambda x, w, b: mF.conv2d(x, w, b, padding=1), leaves)
        assert torch.autograd.gradgradcheck(lambda x, w, b: mF.conv2d(x, w, b, padding=1), leaves)
