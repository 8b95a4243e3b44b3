"""The compiled layers (csrc/layers_*, csrc/dropout_cpu.cpp: torch.ops.manual_conv.max_pool2d,
max_pool2d_backward, relu_backward and dropout_mask) on their own: bit-exact parity with the Python reference and
with PyTorch on randomized configurations and special values (ties, ±0, NaN, ±∞, all −∞ windows) in every dtype
and layout; dropout's mask and the generator state it leaves, bit for bit torch's bernoulli_'s;
torch.library.opcheck; the registered derivatives of relu_backward and max_pool2d_backward, double backward on
'cpp'; no PyTorch max pooling, scatter, threshold_backward, where or bernoulli_ inside; torch.compile of a
training step with no graph break, and of dropouts keeping their masks; PyTorch's errors for bad arguments. GPU
tests skip where there is no GPU.

The API-level tests of max pooling, ReLU and dropout (test_pool.py, test_activation.py, test_linear.py) run on the
'cpp' backend as well."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import manual_conv
import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv.ops._utils import suggests_channels_last
from manual_conv.ops.pool import MaxPool2dFunction, max_pool2d_input_grad

pytestmark = pytest.mark.skipif(not manual_conv.extension_available(),
                                reason="the compiled extension manual_conv._C is not built")

ops = torch.ops.manual_conv
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
CUDA_BUILT = manual_conv.extension_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "manual_conv::max_pool2d", "CUDA")
needs_gpu = pytest.mark.skipif(not (CUDA_BUILT and torch.cuda.is_available()),
                               reason="needs a GPU and the extension built with CUDA")

# Integer views of the floating dtypes: equal bits, so NaN == NaN and -0.0 != 0.0.
SAME_WIDTH_INTEGERS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
                       torch.float64: torch.int64}


def assert_bitwise_equal(actual, expected, any_nan_bits=False):
    """Equal bits (the sign of zero included); with any_nan_bits, NaN in the same places but maybe another NaN:
    the Python max-pool scan's vectorised torch.maximum returns an all-ones NaN, the kernels the input's NaN."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype and actual.device == expected.device
    integers = SAME_WIDTH_INTEGERS.get(actual.dtype)
    if integers is None:
        assert torch.equal(actual, expected)
        return
    if any_nan_bits:
        assert torch.equal(actual.isnan(), expected.isnan())
        actual, expected = actual.nan_to_num(0.0, math.inf, -math.inf), expected.nan_to_num(0.0, math.inf, -math.inf)
    assert torch.equal(actual.contiguous().view(integers), expected.contiguous().view(integers))


def random_tensor(shape, dtype, values, generator):
    """randn, or values drawn from `values` (ties, signed zeros, NaN, infinities) when it is given."""
    if values is None:
        return torch.randn(shape, generator=generator).to(dtype)
    pool = torch.tensor(values, dtype=torch.float64)
    draws = torch.randint(len(values), (math.prod(shape),), generator=generator)
    return pool[draws].view(shape).to(dtype)


def laid_out(tensor, layout):
    """The same values in another memory layout: channels_last, or the last two dims stored column by column."""
    if layout == "channels_last":
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return tensor.transpose(-1, -2).contiguous().transpose(-1, -2)
    return tensor


def has_layout(tensor, layout):
    if layout == "channels_last":
        return tensor.is_contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return tensor.transpose(-1, -2).is_contiguous()
    return tensor.is_contiguous()


LAYOUTS = ("contiguous", "channels_last", "transposed")
POOL_SPECIAL_VALUES = (-1.0, -0.0, 0.0, 1.0, math.nan, -math.inf, -math.inf, math.inf)

# ------------------------------------------------------------------------------------------------ max pooling


class Pool:
    """One max pooling: its input, arguments, and the result of each implementation."""

    def __init__(self, input, kernel_size, stride, padding, dilation, ceil_mode):
        self.input = input
        self.args = (list(kernel_size), list(stride), list(padding), list(dilation), ceil_mode)

    def compiled(self):
        return ops.max_pool2d(self.input, *self.args)

    def python(self):
        with manual_conv.use_backend("python"):
            return MaxPool2dFunction.apply(self.input, *(tuple(arg) for arg in self.args[:4]), self.args[4])

    def torch(self):
        return F.max_pool2d_with_indices(self.input, *self.args)


def assert_pool_matches_python_and_torch(pool):
    """Equal bits, and torch's strides (channels_last exactly where torch's output is) for output and indices."""
    output, indices = pool.compiled()
    assert indices.dtype == torch.int64
    for (expected_output, expected_indices), any_nan_bits in ((pool.torch(), False), (pool.python(), True)):
        assert_bitwise_equal(output, expected_output, any_nan_bits)
        assert_bitwise_equal(indices, expected_indices)
        assert output.stride() == expected_output.stride() and indices.stride() == expected_indices.stride()


@st.composite
def pools(draw, dtypes=DTYPES):
    """A max pooling PyTorch accepts (pads within half the kernel, output ≥ 1), of random or special values, on a
    batch (N, C, H, W) in any layout (1-channel channels_last too) or an unbatched (C, H, W) input."""
    kernel = [draw(st.integers(1, 4)) for _ in range(2)]
    stride = [draw(st.integers(1, 3)) for _ in range(2)]
    dilation = [draw(st.integers(1, 3)) for _ in range(2)]
    padding = [draw(st.integers(0, k // 2)) for k in kernel]
    sizes = [max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, 5)) for k, d, p in zip(kernel, dilation, padding)]
    batch = draw(st.sampled_from([(0,), (1,), (2,), (2,), ()]))
    shape = (*batch, draw(st.integers(1, 3)), *sizes)
    values = draw(st.sampled_from([None, POOL_SPECIAL_VALUES, (-math.inf, -math.inf, 1.0)]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    layout = draw(st.sampled_from(LAYOUTS if batch else ("contiguous", "transposed")))
    input = random_tensor(shape, draw(st.sampled_from(dtypes)), values, generator)
    if layout == "channels_last":  # channels_last strides, which make a 1-channel input channels_last too
        input = torch.empty_like(input, memory_format=torch.channels_last).copy_(input)
    return Pool(laid_out(input, layout), kernel, stride, padding, dilation, draw(st.booleans()))


@settings(max_examples=200)
@given(pool=pools())
def test_max_pool2d_matches_python_and_torch_bitwise(single_thread, pool):
    assert_pool_matches_python_and_torch(pool)


SPECIAL_POOLS = {
    # every window -inf: each keeps its first tap inside the input (padding never wins)
    "all-minus-inf-with-padding": ((1, 2, 5, 6), -math.inf, dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))),
    # equal values everywhere: ties keep the first tap in scan order
    "ties": ((2, 2, 6, 6), 1.0, dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    "nan-everywhere": ((1, 1, 5, 5), math.nan, dict(kernel_size=(2, 2), stride=(1, 1), dilation=(2, 1))),
    "ceil-mode-overhang": ((1, 1, 7, 6), 0.5, dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SPECIAL_POOLS)
def test_max_pool2d_constant_windows(case, dtype):
    shape, value, kwargs = SPECIAL_POOLS[case]
    arguments = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False, **kwargs}
    pool = Pool(torch.full(shape, value, dtype=dtype), arguments["kernel_size"], arguments["stride"],
                arguments["padding"], arguments["dilation"], arguments["ceil_mode"])
    assert_pool_matches_python_and_torch(pool)


# The CPU kernel pools the windows wholly inside the input together (2x2 and 3x3 kernels unrolled, others not)
# and those reaching into the padding one by one: each path, and the seams between them, on random values and
# on ties, signed zeros, NaN and infinities.
MIXED_POOLS = {
    "2x2": dict(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1)),
    "3x3-padded": dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1)),
    "2x3-dilated-padded": dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("values", [None, POOL_SPECIAL_VALUES], ids=["random", "special"])
@pytest.mark.parametrize("case", MIXED_POOLS)
def test_max_pool2d_inside_and_edge_windows(single_thread, case, values, dtype):
    input = random_tensor((2, 3, 13, 17), dtype, values, torch.Generator().manual_seed(0))
    arguments = MIXED_POOLS[case]
    for ceil_mode in (False, True):
        assert_pool_matches_python_and_torch(Pool(input, *arguments.values(), ceil_mode))


def test_max_pool2d_empty_batch():
    pool = Pool(torch.randn(0, 3, 6, 5), (2, 2), (2, 2), (1, 0), (1, 1), True)
    output, indices = pool.compiled()
    assert output.shape == indices.shape == (0, 3, 4, 3)
    assert_pool_matches_python_and_torch(pool)


def test_max_pool2d_thread_count_does_not_change_results(with_threads):
    """Planes are shared among threads; a batch large enough for several tasks gives the same bits on 1 or 2."""
    pool = Pool(torch.randn(8, 32, 24, 24, generator=torch.Generator().manual_seed(0)), (3, 3), (2, 2), (1, 1),
                (1, 1), True)
    single, several = (with_threads(count, pool.compiled) for count in (1, 2))
    for one, other in zip(single, several, strict=True):
        assert_bitwise_equal(one, other)
    assert_pool_matches_python_and_torch(pool)


# ------------------------------------------------------------------------------------------- ReLU's backward

RELU_OUTPUT_VALUES = (-1.0, -0.0, 0.0, 0.5, 2.0, math.nan, math.inf, -math.inf)
RELU_GRAD_VALUES = (-1.0, -0.0, 1.5, math.nan, math.inf, -math.inf)


def relu_reference(grad_output, output):
    """The Python path of ReLUFunction.backward (manual_conv/ops/activation.py)."""
    return torch.where(output <= 0, 0.0, grad_output)


@settings(max_examples=100)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), dtype=st.sampled_from(DTYPES),
       layouts=st.sampled_from([("contiguous",) * 2, ("channels_last",) * 2, ("transposed",) * 2,
                                ("contiguous", "transposed"), ("channels_last", "contiguous")]),
       seed=st.integers(0, 2**16))
def test_relu_backward_matches_where_bitwise(single_thread, shape, dtype, layouts, seed):
    """Dead units (y <= 0, including -0.0 and -inf) get 0 whatever δ (∞ and NaN too); NaN outputs pass δ."""
    generator = torch.Generator().manual_seed(seed)
    possible = {"contiguous": True, "channels_last": len(shape) == 4, "transposed": len(shape) >= 2}
    layouts = tuple(layout if possible[layout] else "contiguous" for layout in layouts)
    grad_output = laid_out(random_tensor(shape, dtype, RELU_GRAD_VALUES, generator), layouts[0])
    output = laid_out(random_tensor(shape, dtype, RELU_OUTPUT_VALUES, generator), layouts[1])
    actual = ops.relu_backward(grad_output, output)
    assert_bitwise_equal(actual, relu_reference(grad_output, output))
    # a layout both share is kept, as torch.where keeps it; otherwise the result is contiguous
    assert has_layout(actual, layouts[0] if layouts[0] == layouts[1] else "contiguous")


@pytest.mark.parametrize("case", ["expanded-grad", "sliced", "large"])
def test_relu_backward_other_layouts(case):
    generator = torch.Generator().manual_seed(0)
    if case == "expanded-grad":  # as the gradient of a sum arrives: one value, stride 0
        output = torch.randn(4, 6, 5, generator=generator).clamp_min(0)
        grad_output = torch.tensor(2.5).expand(4, 6, 5)
    elif case == "sliced":  # non-dense views
        output = torch.randn(4, 12, 5, generator=generator).clamp_min(0)[:, ::2]
        grad_output = torch.randn(4, 12, 5, generator=generator)[:, 1::2]
    else:  # several tasks of at::parallel_for, each ending in a tail of the vectorised loop
        output = torch.randn(3, 70001, generator=generator).clamp_min(0)
        grad_output = torch.randn(3, 70001, generator=generator)
    assert_bitwise_equal(ops.relu_backward(grad_output, output), relu_reference(grad_output, output))


# ------------------------------------------------------------------------------------- derivatives, registration


def test_relu_backward_gradcheck_and_gradgradcheck(single_thread):
    """The registered derivative (ops/library.py): relu_backward is its own derivative in δ, and y gets none."""
    generator = torch.Generator().manual_seed(0)
    grad_output = torch.randn(3, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    output = torch.randn(3, 4, 5, dtype=torch.float64, generator=generator)
    output = (output + output.sign() * 0.1).requires_grad_()  # away from the step at 0
    assert torch.autograd.gradcheck(ops.relu_backward, (grad_output, output))
    assert torch.autograd.gradgradcheck(ops.relu_backward, (grad_output, output))


def test_relu_double_backward_on_cpp_runs_the_compiled_op(single_thread):
    with manual_conv.use_backend("cpp"):
        input = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                            requires_grad=True)
        assert torch.autograd.gradcheck(mF.relu, (input,))
        assert torch.autograd.gradgradcheck(mF.relu, (input,))
        (grad,) = torch.autograd.grad(mF.relu(input).square().sum(), input, create_graph=True)
        # the compiled op, through ReLUBackwardFunction (which gives it a jvp for forward-over-reverse)
        assert type(grad.grad_fn).__name__ == "ReLUBackwardFunctionBackward"
        with _OpNames() as ops_run:
            torch.autograd.grad(grad.sum(), input)
    assert "manual_conv.relu_backward.default" in ops_run.names


class _OpNames(TorchDispatchMode):
    """Records the names of the ATen and custom ops that run inside the ``with``."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(single_thread, dtype):
    """Schemas, fake kernels (shapes, dtypes, strides), both ops' autograd registrations and AOT dispatch with
    dynamic shapes."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(2, 3, 7, 6, generator=generator).to(dtype)
    for pool_args in (([2, 2], [2, 2], [0, 0], [1, 1], False), ([3, 2], [2, 1], [1, 1], [1, 2], True)):
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.library.opcheck(ops.max_pool2d,
                                  (input.contiguous(memory_format=layout).requires_grad_(), *pool_args))
        torch.library.opcheck(ops.max_pool2d, (input[0].clone().requires_grad_(), *pool_args))
    output = torch.randn(2, 3, 7, 6, generator=generator).to(dtype).clamp_min(0)
    grad_output = torch.randn(2, 3, 7, 6, generator=generator).to(dtype)
    for grad_layout, output_layout in (("contiguous",) * 2, ("channels_last",) * 2, ("contiguous", "transposed")):
        torch.library.opcheck(ops.relu_backward, (laid_out(grad_output, grad_layout).requires_grad_(),
                                                  laid_out(output, output_layout).requires_grad_()))
    for layout in ("contiguous", "channels_last"):
        _, indices = ops.max_pool2d(laid_out(input, layout), [3, 2], [1, 1], [1, 1], [1, 1], False)
        torch.library.opcheck(ops.max_pool2d_backward,
                              (laid_out(torch.randn(indices.shape, generator=generator).to(dtype), layout)
                               .requires_grad_(), indices, list(input.shape), layout == "channels_last"))
    # dropout_mask draws random numbers, so the checks that compare two calls' outputs do not apply
    for layout in ("contiguous", "channels_last", "transposed"):
        torch.library.opcheck(ops.dropout_mask, (laid_out(input, layout), 0.5),
                              test_utils=("test_schema", "test_faketensor"))


@settings(max_examples=100)
@given(shape=st.lists(st.integers(0, 12), min_size=1, max_size=4), dtype=st.sampled_from(DTYPES),
       layout=st.sampled_from(["contiguous", "channels_last", "transposed"]),
       keep_probability=st.one_of(st.sampled_from([1.0, 0.75, 0.5, 0.1]), st.floats(1e-6, 1.0)),
       words_drawn_before=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_dropout_mask_is_bernoullis_bitwise(shape, dtype, layout, keep_probability, words_drawn_before, seed):
    """The mask, its layout and the default generator's state afterwards are those of torch's
    empty_like(x).bernoulli_(q).div_(q), whatever the generator's position (float32 draws take one 32-bit word,
    so it may sit between the two words of a 64-bit draw) and across the engine's 624-word state refills."""
    input = laid_out(torch.zeros(shape, dtype=dtype), layout) if len(shape) == 4 else torch.zeros(shape, dtype=dtype)
    results = []
    for draw in (lambda: ops.dropout_mask(input, keep_probability),
                 lambda: torch.empty_like(input).bernoulli_(keep_probability).div_(keep_probability)):
        torch.manual_seed(seed)
        torch.rand(words_drawn_before)
        mask = draw()
        results.append((mask, mask.stride(), torch.get_rng_state()))
    (ours, our_strides, our_state), (torchs, torch_strides, torch_state) = results
    assert torch.equal(ours, torchs) and our_strides == torch_strides
    assert torch.equal(our_state, torch_state)


def test_dropout_mask_of_the_mnist_net_is_bernoullis_bitwise():
    """The size train_mnist.py draws (64×64×12×12: 1890 state refills), and the fraction kept."""
    input = torch.empty(64, 64, 12, 12)
    torch.manual_seed(0)
    ours = ops.dropout_mask(input, 0.75)
    after_ours = torch.rand(4)
    torch.manual_seed(0)
    torchs = torch.empty_like(input).bernoulli_(0.75).div_(0.75)
    assert torch.equal(ours, torchs) and torch.equal(after_ours, torch.rand(4))
    assert abs((ours != 0).double().mean().item() - 0.75) < 0.01


def test_dropout_on_cpp_draws_its_mask_with_the_compiled_kernel(single_thread):
    with manual_conv.use_backend("cpp"):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as recording:
            mF.dropout(torch.ones(4, 5, requires_grad=True), 0.3).sum().backward()
    names = {event.name for event in recording.events()}
    assert "manual_conv::dropout_mask" in names and not any("bernoulli" in name for name in names)


@settings(max_examples=100)
@given(pool=pools(), grad_layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_max_pool2d_backward_matches_torch_bitwise(single_thread, pool, grad_layout, seed):
    """The compiled backward against torch's max-pool backward: the same sums, rounded the same way where windows
    overlap (every dtype; overlapping, dilated, padded and ceil-mode windows; any grad layout), laid out as torch's
    (channels_last where the input is). Against the Python path's scatter_add_ too for float32/float64;
    float16/bfloat16 sums differ there, rounded once in float32 instead of after every add as torch's kernel and
    ours round them.

    A window wholly in the padding (e.g. width 1, padding 1, dilation 2) gets an index outside its plane, as in
    torch, whose backward then writes outside the plane; ours raises (see BAD_CALLS), so such pools are left out."""
    _, indices = pool.compiled()
    assume(bool(((indices >= 0) & (indices < pool.input.shape[-2] * pool.input.shape[-1])).all()))
    grad_output = laid_out(torch.randn(indices.shape, generator=torch.Generator().manual_seed(seed)).to(
        pool.input.dtype), grad_layout if indices.dim() == 4 else "contiguous")
    channels_last = pool.input.dim() == 4 and suggests_channels_last(pool.input)
    actual = ops.max_pool2d_backward(grad_output, indices, pool.input.shape, channels_last)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(grad_output, pool.input, *pool.args, indices)
    assert_bitwise_equal(actual, expected)
    assert actual.stride() == expected.stride()
    if pool.input.dtype in (torch.float32, torch.float64):
        with manual_conv.use_backend("python"):
            assert_bitwise_equal(actual, max_pool2d_input_grad(grad_output, indices, pool.input.shape,
                                                               channels_last))


def test_max_pool2d_backward_gradcheck_and_gradgradcheck(single_thread):
    """Overlapping windows (3×3, stride 1), so some inputs collect several windows' gradients; the op's
    registered derivative (a gather) gives the double backward."""
    input = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    _, indices = ops.max_pool2d(input, [3, 3], [1, 1], [1, 1], [1, 1], False)
    grad_output = torch.randn(indices.shape, dtype=torch.float64, requires_grad=True)

    def backward(grad_output):
        return ops.max_pool2d_backward(grad_output, indices, input.shape, False)

    assert torch.autograd.gradcheck(backward, (grad_output,))
    assert torch.autograd.gradgradcheck(backward, (grad_output,))


def test_max_pool2d_op_called_directly_is_differentiable(single_thread):
    """The op's registered autograd routes the gradient to the arg-maxes, as F.max_pool2d's does."""
    input = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    pool_args = ([3, 2], [2, 2], [1, 1], [1, 1], True)
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d(x, *pool_args)[0], (input,))
    grad_output = torch.randn_like(ops.max_pool2d(input, *pool_args)[0])
    (ours,) = torch.autograd.grad(ops.max_pool2d(input, *pool_args)[0], input, grad_output)
    (torchs,) = torch.autograd.grad(F.max_pool2d(input, [3, 2], [2, 2], [1, 1], [1, 1], True), input, grad_output)
    torch.testing.assert_close(ours, torchs, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["python", "cpp"])
def test_no_pytorch_max_pool_or_relu_backward_runs(single_thread, backend):
    """Every ATen op the layers dispatch (recorded by the profiler): on 'cpp' the compiled ops and no max pooling,
    scatter, threshold_backward or where; on 'python' the reference's torch.where shows that the check sees them."""
    input = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with manual_conv.use_backend(backend):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as recording:
            mF.max_pool2d(mF.relu(input * 1), 2).sum().backward()
    names = {event.name for event in recording.events()}
    pytorchs = {name for name in names
                if not name.startswith("manual_conv::") and re.search(r"max_pool|scatter|threshold|where", name)}
    if backend == "cpp":
        assert {"manual_conv::max_pool2d", "manual_conv::max_pool2d_backward", "manual_conv::relu_backward"} <= names
        assert pytorchs == set(), pytorchs
    else:
        assert "aten::where" in pytorchs and not any(name.startswith("manual_conv::") for name in names)


class SmallCNN(torch.nn.Module):
    """conv -> relu -> max pool -> linear, all manual_conv modules."""

    def __init__(self):
        super().__init__()
        self.conv = mnn.Conv2d(2, 4, 3, padding=1)
        self.relu = mnn.ReLU()
        self.pool = mnn.MaxPool2d(2)
        self.linear = mnn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.linear(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_training_step(single_thread, compiler):
    """The model's loss and its gradients compile into one graph (fullgraph fails on any graph break) on 'cpp',
    running the compiled layers, and equal eager's."""
    torch.manual_seed(0)
    model = SmallCNN().double()
    input = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    parameters = list(model.parameters())

    def loss(input):
        return model(input).square().mean()

    with manual_conv.use_backend("cpp"):
        torch._dynamo.reset()
        expected = loss(input)
        expected_grads = torch.autograd.grad(expected, parameters)
        actual = torch.compile(loss, backend=compiler, fullgraph=True)(input)
        actual_grads = torch.autograd.grad(actual, parameters)
        explanation = torch._dynamo.explain(loss)(input)
    torch.testing.assert_close(actual, expected)
    for actual_grad, expected_grad in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(actual_grad, expected_grad)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_keeps_dropouts_masks(single_thread, compiler):
    """Two dropouts of one tensor, compiled: the op's nondeterministic_seeded tag keeps the compiler from merging
    them (or recomputing one in the backward), so a seed gives eager's masks, outputs and gradients."""

    def two_dropouts(input):
        return mF.dropout(input, 0.5) + 2 * mF.dropout(input, 0.5)

    input = torch.randn(8, 9, requires_grad=True)
    results = []
    with manual_conv.use_backend("cpp"):
        torch._dynamo.reset()
        for function in (two_dropouts, torch.compile(two_dropouts, backend=compiler, fullgraph=True)):
            torch.manual_seed(0)
            output = function(input)
            results.append((output, *torch.autograd.grad(output.sum(), input)))
    (expected, expected_grad), (actual, actual_grad) = results
    assert torch.equal(actual, expected) and torch.equal(actual_grad, expected_grad)


# ----------------------------------------------------------------------------------------------- bad input

X = torch.ones(2, 3, 6, 6)
POOL = ([2, 2], [2, 2], [0, 0], [1, 1], False)
# grad_output and indices of POOL over X, whose windows' arg-maxes are their first taps (y·12 + x·2)
G, I = torch.ones(2, 3, 3, 3), ((torch.arange(3) * 12)[:, None] + torch.arange(3) * 2).expand(2, 3, 3, 3)


def pool_args(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    return (list(kernel_size), list(stride), list(padding), list(dilation), ceil_mode)


BAD_CALLS = [
    ("max_pool2d", (torch.ones(6, 6), *POOL), RuntimeError, r"expected a 3-D \(C, H, W\) or 4-D \(N, C, H, W\) input"),
    ("max_pool2d", (torch.ones(2, 0, 6, 6), *POOL), RuntimeError, r"or 4-D \(N, C, H, W\) input"),
    ("max_pool2d", (torch.ones(2, 3, 6, 0), *POOL), RuntimeError, r"or 4-D \(N, C, H, W\) input"),
    ("max_pool2d", (torch.ones(0, 6, 6), *POOL), RuntimeError, r"or 4-D \(N, C, H, W\) input"),
    ("max_pool2d", (X, *pool_args(kernel_size=(0, 2))), RuntimeError, r"kernel size should be greater than zero"),
    ("max_pool2d", (X, *pool_args(stride=(2, 0))), RuntimeError, r"stride should not be zero"),
    ("max_pool2d", (X, *pool_args(stride=(-1, 2))), RuntimeError, r"stride should be greater than zero"),
    ("max_pool2d", (X, *pool_args(padding=(0, -1))), RuntimeError, r"pad must be non-negative, but got pad: -1"),
    ("max_pool2d", (X, *pool_args(kernel_size=(3, 3), padding=(2, 0))), RuntimeError,
     r"pad should be at most half of effective kernel size, but got pad=2, kernel_size=3 and dilation=1"),
    ("max_pool2d", (X, *pool_args(kernel_size=(3, 3), padding=(2, 2), dilation=(2, 2))), RuntimeError,
     r"pad should be smaller than or equal to half of kernel size"),
    ("max_pool2d", (X, *pool_args(dilation=(1, 0))), RuntimeError, r"dilation should be greater than zero"),
    ("max_pool2d", (X, *pool_args(kernel_size=(7, 2))), RuntimeError,
     r"Given input size: \(3x6x6\). Calculated output size: \(3x0x3\). Output size is too small"),
    ("max_pool2d", (X, [2, 2, 2], *POOL[1:]), RuntimeError, r"expected kernel_size to be a list of 2 ints"),
    ("max_pool2d", (X, *POOL[:2], [0], *POOL[3:]), RuntimeError, r"expected padding to be a list of 2 ints"),
    ("max_pool2d", (X.long(), *POOL), NotImplementedError, r"\"manual_conv::max_pool2d\" not implemented for 'Long'"),
    ("max_pool2d_backward", (G, I, [6, 6], False), RuntimeError, r"input_size to be a list of 3 or 4 ints"),
    ("max_pool2d_backward", (G[0], I[0], [3, 6, 6], True), RuntimeError, r"channels_last needs a 4-D input_size"),
    ("max_pool2d_backward", (G, I, [2, 4, 6, 6], False), RuntimeError,
     r"4-D grad_output with the leading sizes of input_size"),
    ("max_pool2d_backward", (G[0], I[0], [2, 3, 6, 6], False), RuntimeError, r"4-D grad_output"),
    ("max_pool2d_backward", (G, I, [3, 6, 6], False), RuntimeError, r"3-D grad_output"),
    ("max_pool2d_backward", (G, I.int(), [2, 3, 6, 6], False), RuntimeError, r"expected int64 indices"),
    ("max_pool2d_backward", (G, I[..., :2], [2, 3, 6, 6], False), RuntimeError, r"indices of grad_output's size"),
    ("max_pool2d_backward", (G, I + 36, [2, 3, 6, 6], False), RuntimeError,
     r"index 36 is out of bounds for an input plane of 36 positions"),
    ("max_pool2d_backward", (G, I - 1, [2, 3, 6, 6], False), RuntimeError, r"index -1 is out of bounds"),
    ("max_pool2d_backward", (G, I + 36, [2, 3, 6, 6], True), RuntimeError, r"index 36 is out of bounds"),
    ("max_pool2d_backward", (G.int(), I, [2, 3, 6, 6], False), NotImplementedError, r"not implemented for 'Int'"),
    ("relu_backward", (X, torch.ones(2, 3, 6, 5)), RuntimeError, r"same size"),
    ("relu_backward", (X, X.double()), RuntimeError, r"same dtype"),
    ("relu_backward", (X.int(), X.int()), NotImplementedError, r"not implemented for 'Int'"),
    ("dropout_mask", (X, 0.0), RuntimeError, r"keep probability in \(0, 1\], but got 0"),
    ("dropout_mask", (X, 1.5), RuntimeError, r"keep probability in \(0, 1\], but got 1.5"),
    ("dropout_mask", (X, math.nan), RuntimeError, r"keep probability in \(0, 1\], but got nan"),
    ("dropout_mask", (X.int(), 0.5), NotImplementedError, r"not implemented for 'Int'"),
]


@pytest.mark.parametrize(("name", "args", "error", "message"), BAD_CALLS,
                         ids=[f"{name}-{index}" for index, (name, *_) in enumerate(BAD_CALLS)])
def test_bad_arguments_raise_pytorchs_error(name, args, error, message):
    with pytest.raises(error, match=message):
        getattr(ops, name)(*args)


# ------------------------------------------------------------------------------------------------------ GPU


@needs_gpu
@settings(max_examples=60)
@given(pool=pools())
def test_cuda_max_pool2d_matches_cpu_bitwise(pool):
    expected = pool.compiled()
    pool.input = pool.input.cuda()
    for actual, wanted in zip(pool.compiled(), expected, strict=True):
        assert actual.is_cuda
        assert_bitwise_equal(actual.cpu(), wanted)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_relu_backward_matches_cpu_bitwise(dtype):
    generator = torch.Generator().manual_seed(0)
    grad_output = random_tensor((3, 4, 7, 9), dtype, RELU_GRAD_VALUES, generator)
    output = random_tensor((3, 4, 7, 9), dtype, RELU_OUTPUT_VALUES, generator)
    for layout in LAYOUTS:
        grad_output, output = laid_out(grad_output, layout), laid_out(output, layout)
        actual = ops.relu_backward(grad_output.cuda(), output.cuda())
        assert actual.is_cuda
        assert_bitwise_equal(actual.cpu(), ops.relu_backward(grad_output, output))


@needs_gpu
def test_cuda_relu_backward_rejects_mixed_devices():
    with pytest.raises(RuntimeError, match="same device"):
        ops.relu_backward(X.cuda(), X)
