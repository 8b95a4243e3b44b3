"""conv2d / conv_transpose2d against torch.nn.functional: the output and every gradient (input, weight, bias),
first and second order, on randomized valid configurations (hypothesis) and on the tensor layouts users pass
(non-contiguous views, channels_last, stride-0 expanded tensors, a batch of 0, unbatched input). Then proofs that
the computation is our own: the graph's nodes are our Functions, no PyTorch convolution is dispatched, and only
the gradients that are needed are computed."""
import collections
import contextlib
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import manual_conv
import manual_conv.functional as mF
from manual_conv.ops import conv_reference

pytestmark = pytest.mark.usefixtures("single_thread")

FUNCTIONS = ("conv2d", "conv_transpose2d")
DTYPES = (torch.float32, torch.float64)


# ------------------------------------------------------------------------------------------------ comparison


def assert_close(actual, expected):
    """float32 sums of a few dozen products agree to ~1e-6 relative; 1e-4 leaves room for other BLAS orders."""
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if expected.dtype == torch.float32 else {}
    torch.testing.assert_close(actual, expected, **tolerance)


def output_and_grads(module, name, leaves, kwargs, grad_output, build):
    """module.name(*build(*leaves), **kwargs) and the gradients of ⟨output, grad_output(output)⟩ w.r.t. the leaves.

    The leaves are cloned (keeping their strides), so torch and manual_conv each start from fresh tensors; ``build``
    turns them into the (input, weight, bias) actually passed, e.g. views or expansions of them.
    """
    leaves = [leaf.detach().clone().requires_grad_() for leaf in leaves]
    output = getattr(module, name)(*build(*leaves), **kwargs)
    return output, torch.autograd.grad(output, leaves, grad_output(output))


def layout(tensor):
    """Which memory formats a tensor is dense in (a 1×1 image, for one, is in both)."""
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    return {name for name, memory_format in formats.items() if tensor.is_contiguous(memory_format=memory_format)}


def seeded_randn_like(output):
    """The same random grad_output for torch and for us."""
    return torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(0))


def assert_matches_torch(name, leaves, kwargs, build=lambda *tensors: tensors, grad_output=seeded_randn_like):
    """Our output (values, shape, dtype, memory format) and every leaf gradient equal torch's."""
    expected, expected_grads = output_and_grads(F, name, leaves, kwargs, grad_output, build)
    actual, actual_grads = output_and_grads(mF, name, leaves, kwargs, grad_output, build)
    assert_close(actual, expected)
    assert layout(actual) == layout(expected)
    for actual_grad, expected_grad in zip(actual_grads, expected_grads, strict=True):
        assert_close(actual_grad, expected_grad)


# ------------------------------------------------------------------------------------- randomized configurations


def pairs(low, high):
    return st.tuples(st.integers(low, high), st.integers(low, high))


@st.composite
def argument_form(draw, pair):
    """One of the forms torch accepts for a pair: a tuple, a list, a 1-list or an int when both are equal."""
    forms = [tuple(pair), list(pair)]
    if pair[0] == pair[1]:
        forms += [pair[0], [pair[0]]]
    return draw(st.sampled_from(forms))


@st.composite
def conv_configs(draw, transposed, dtype):
    """A valid call: (input, weight, bias) leaves and keyword arguments for conv2d or conv_transpose2d."""
    groups = draw(st.integers(1, 3))
    in_channels, out_channels = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel, stride, dilation = draw(pairs(1, 4)), draw(pairs(1, 3)), draw(pairs(1, 3))
    kwargs = {"groups": groups}
    if transposed:
        size = [draw(st.integers(1, 5)) for _ in range(2)]
        # output_padding must stay below the stride or the dilation; padding may crop all but one output row.
        output_padding = [draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation)]
        uncropped = [(h - 1) * s + d * (k - 1) + op
                     for h, s, d, k, op in zip(size, stride, dilation, kernel, output_padding)]
        padding = [draw(st.integers(0, min(3, u // 2))) for u in uncropped]
        kwargs["output_padding"] = draw(argument_form(output_padding))
        weight_shape = (in_channels, out_channels // groups, *kernel)
    else:
        padding = draw(st.one_of(pairs(0, 3), st.sampled_from(["valid", "same"])))
        if padding == "same":
            stride = (1, 1)  # torch allows 'same' only without stride
            smallest = (1, 1)  # 'same' pads by d(k − 1): the kernel fits any input
        else:
            numeric_padding = (0, 0) if padding == "valid" else padding
            smallest = [max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(dilation, kernel, numeric_padding)]
        size = [minimum + draw(st.integers(0, 3)) for minimum in smallest]  # the smallest input that fits, and more
        weight_shape = (out_channels, in_channels // groups, *kernel)
    for key, value in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        kwargs[key] = value if isinstance(value, str) else draw(argument_form(value))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    batch = draw(st.integers(1, 3))
    leaves = [torch.randn(batch, in_channels, *size, dtype=dtype), torch.randn(weight_shape, dtype=dtype)]
    if draw(st.booleans()):
        leaves.append(torch.randn(out_channels, dtype=dtype))
    return leaves, kwargs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", FUNCTIONS)
@given(data=st.data())
def test_output_and_gradients_match_torch(backend, name, dtype, data):
    leaves, kwargs = data.draw(conv_configs(name == "conv_transpose2d", dtype))
    assert_matches_torch(name, leaves, kwargs)


def second_derivatives(module, name, leaves, kwargs, grad_output, directions):
    """d/d(x, w, b, δ) of Σ ⟨∂L/∂t, v_t⟩ over the first derivatives t of L = ⟨output, δ⟩: a Hessian-vector product."""
    leaves = [leaf.detach().clone().requires_grad_() for leaf in (*leaves, grad_output)]
    *tensors, grad_output = leaves
    output = getattr(module, name)(*tensors, **kwargs)
    first = torch.autograd.grad(output, tensors, grad_output, create_graph=True)
    projection = sum((grad * direction).sum() for grad, direction in zip(first, directions))
    return torch.autograd.grad(projection, leaves, materialize_grads=True)


@pytest.mark.parametrize("name", FUNCTIONS)
@given(data=st.data())
def test_double_backward_matches_torch(backend, name, data):
    leaves, kwargs = data.draw(conv_configs(name == "conv_transpose2d", torch.float64))
    output_shape = getattr(F, name)(*leaves, **kwargs).shape
    grad_output = torch.randn(output_shape, dtype=torch.float64)
    directions = [torch.randn_like(leaf) for leaf in leaves]
    expected = second_derivatives(F, name, leaves, kwargs, grad_output, directions)
    actual = second_derivatives(mF, name, leaves, kwargs, grad_output, directions)
    for actual_grad, expected_grad in zip(actual, expected, strict=True):
        assert_close(actual_grad, expected_grad)


# ------------------------------------------------------------------------------------------------ tensor layouts

# Shapes for the layout tests: input (N, C_in, H, W), weight and bias for 2 groups, stride 2, padding 1.
LAYOUT_KWARGS = {"conv2d": {"stride": 2, "padding": 1, "groups": 2},
                 "conv_transpose2d": {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}}
WEIGHT_SHAPES = {"conv2d": (6, 2, 3, 2), "conv_transpose2d": (4, 3, 3, 2)}


def layout_leaves(name, input_shape=(2, 4, 5, 6), dtype=torch.float64):
    torch.manual_seed(0)
    return [torch.randn(input_shape, dtype=dtype), torch.randn(WEIGHT_SHAPES[name], dtype=dtype),
            torch.randn(6, dtype=dtype)]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_non_contiguous_input_weight_and_grad_output(backend, name):
    def transposed_input_sliced_weight(input, weight, bias):
        return input.transpose(2, 3), weight[:, :, :, ::2], bias[::2]

    torch.manual_seed(0)
    input = torch.randn(2, 4, 6, 5, dtype=torch.float64)  # transposed below to (2, 4, 5, 6)
    weight = torch.randn(WEIGHT_SHAPES[name][:3] + (4,), dtype=torch.float64)  # every other column: width 2
    bias = torch.randn(12, dtype=torch.float64)
    kwargs = LAYOUT_KWARGS[name]
    output_shape = getattr(F, name)(*transposed_input_sliced_weight(input, weight, bias), **kwargs).shape
    # a grad_output that is a strided slice, as when the output feeds a slicing op
    grad_output = torch.randn(*output_shape[:3], 2 * output_shape[3], dtype=torch.float64)[..., ::2]
    assert not grad_output.is_contiguous()
    assert_matches_torch(name, [input, weight, bias], kwargs, transposed_input_sliced_weight, lambda _: grad_output)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_sliced_input(backend, name):
    def every_other_row(input, weight, bias):
        return input[:, :, ::2, 1:], weight, bias

    assert_matches_torch(name, layout_leaves(name, (2, 4, 9, 7)), LAYOUT_KWARGS[name], every_other_row)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", ["input", "weight", "both"])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_channels_last(backend, name, channels_last, dtype):
    """Values, gradients, and the output's memory format: channels_last when the input or the weight is."""
    leaves = layout_leaves(name, dtype=dtype)
    for tensor, index in (("input", 0), ("weight", 1)):
        if channels_last in (tensor, "both"):
            leaves[index] = leaves[index].contiguous(memory_format=torch.channels_last)
    assert_matches_torch(name, leaves, LAYOUT_KWARGS[name])


@pytest.mark.parametrize("name", FUNCTIONS)
def test_expanded_stride_0_tensors(backend, name):
    """Broadcast views (stride 0) as input, weight and bias, and as grad_output (what ``output.sum()`` sends)."""
    def expanded(input, weight, bias):
        return input.expand(3, 4, 5, 6), weight.expand(WEIGHT_SHAPES[name]), bias.expand(6)

    leaves = [torch.randn(1, 4, 5, 6), torch.randn(WEIGHT_SHAPES[name][0], 1, 3, 2), torch.randn(1)]
    leaves = [leaf.double() for leaf in leaves]
    assert_matches_torch(name, leaves, LAYOUT_KWARGS[name], expanded, grad_output=torch.ones_like)
    unpadded = {**LAYOUT_KWARGS[name], "padding": 0}  # no copy by the zero padding: the kernels see stride 0
    scale = torch.randn(1, 1, 1, 1, dtype=torch.float64)
    assert_matches_torch(name, leaves, unpadded, expanded, grad_output=lambda output: scale.expand_as(output))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_batch_of_zero(backend, name):
    assert_matches_torch(name, layout_leaves(name, (0, 4, 5, 6)), LAYOUT_KWARGS[name])


@pytest.mark.parametrize("name", FUNCTIONS)
def test_unbatched_input(backend, name):
    leaves = layout_leaves(name, (4, 5, 6))
    assert getattr(mF, name)(*leaves, **LAYOUT_KWARGS[name]).dim() == 3
    assert_matches_torch(name, leaves, LAYOUT_KWARGS[name])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.complex64, torch.complex128],
                         ids=str)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_integer_and_complex_dtypes(backend, name, dtype):
    """Every dtype torch's CPU convolutions compute, on both backends (integer conv used to be refused on 'cpp'):
    integers exactly (conv_transpose2d computes int64 only, and raises torch's NotImplementedError for the
    others), complex with torch's gradients (the adjoint: conjugated weight and input)."""
    leaves = [leaf * 3 for leaf in layout_leaves(name, dtype=torch.float64)]
    if dtype.is_complex:
        leaves = [torch.complex(leaf, leaf.flip(-1)).to(dtype) for leaf in leaves]
        return assert_matches_torch(name, leaves, LAYOUT_KWARGS[name])
    leaves = [leaf.round().to(dtype) for leaf in leaves]
    if name == "conv_transpose2d" and dtype != torch.int64:
        with pytest.raises(NotImplementedError, match="slow_conv_transpose2d_out_cpu"):
            getattr(mF, name)(*leaves, **LAYOUT_KWARGS[name])
        return
    assert torch.equal(getattr(mF, name)(*leaves, **LAYOUT_KWARGS[name]), getattr(F, name)(*leaves, **LAYOUT_KWARGS[name]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_half_precision_rounds_once(backend, name, dtype):
    """float16/bfloat16 on CPU are computed in float32 and rounded once, as torch's CPU convolutions accumulate:
    the output and every gradient are within half an ulp (plus float32's own error) of the float64 result of the
    same half-precision numbers."""
    leaves = [leaf.to(dtype) for leaf in layout_leaves(name, (4, 4, 9, 9))]
    grad_output = torch.randn(getattr(F, name)(*leaves, **LAYOUT_KWARGS[name]).shape).to(dtype)
    actual, actual_grads = output_and_grads(mF, name, leaves, LAYOUT_KWARGS[name], lambda _: grad_output,
                                            lambda *tensors: tensors)
    exact, exact_grads = output_and_grads(F, name, [leaf.double() for leaf in leaves], LAYOUT_KWARGS[name],
                                          lambda _: grad_output.double(), lambda *tensors: tensors)
    for value, reference in zip((actual, *actual_grads), (exact, *exact_grads), strict=True):
        ulp = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(reference.abs().clamp(min=1e-3))))
        assert ((value.double() - reference).abs() / ulp).max() <= 0.5 + 1e-3


def test_transposed_output_padding_past_the_stride_multiplies_no_zeros(backend):
    """output_padding ≥ stride (allowed below the dilation): the input has fewer rows than the conv of the output
    gives back, and the missing ones are left out, not zeros multiplied by the weight. With an infinite weight,
    torch's outputs and gradients are finite wherever no infinity reaches, and so are ours."""
    input = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    weight = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    weight[0, 1, 1, 1] = torch.inf
    kwargs = {"stride": 1, "dilation": 2, "output_padding": 1}
    assert_matches_torch("conv_transpose2d", [input, weight], kwargs)
    assert mF.conv_transpose2d(input, weight, **kwargs).isfinite().any()


# ---------------------------------------------------------------------------------------- computed by our code


# The nodes of the gradients' own graphs (double backward): our Functions on both backends (on 'cpp' their kernels
# are the compiled ops, whose own registered autograd serves torch.compile's traces: ops/conv.py differentiable_maps).
GRADIENT_NODES = {"Conv2dFunction": "Conv2dFunctionBackward",
                  "ConvTranspose2dFunction": "ConvTranspose2dFunctionBackward",
                  "weight_grad": "Conv2dWeightGradFunctionBackward"}


@pytest.mark.parametrize("name, node, input_node", [
    ("conv2d", "Conv2dFunction", "ConvTranspose2dFunction"),
    ("conv_transpose2d", "ConvTranspose2dFunction", "Conv2dFunction"),
])
def test_graph_nodes_are_ours(backend, name, node, input_node):
    """The output's grad_fn is our Function; the nodes of the gradients' own graphs are our Functions or ops."""
    input, weight, bias = (leaf.requires_grad_() for leaf in layout_leaves(name))
    output = getattr(mF, name)(input, weight, bias, **LAYOUT_KWARGS[name])
    assert type(output.grad_fn).__name__ == node + "Backward"
    grad_input, grad_weight = torch.autograd.grad(output, (input, weight), torch.randn_like(output), create_graph=True)
    assert type(grad_input.grad_fn).__name__ == GRADIENT_NODES[input_node]
    assert type(grad_weight.grad_fn).__name__ == GRADIENT_NODES["weight_grad"]


class RecordDispatchedOps(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher below autograd (aten ops, manual_conv ops)."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


# Every aten op by which PyTorch computes a convolution or its patches (F.unfold / F.fold are im2col / col2im).
TORCH_CONVOLUTION = re.compile(r"convolution|conv\d|conv_transpose|conv_depthwise|im2col|col2im")


def forward_backward_double_backward(module, name):
    input, weight, bias = (leaf.requires_grad_() for leaf in layout_leaves(name))
    output = getattr(module, name)(input, weight, bias, **LAYOUT_KWARGS[name])
    grads = torch.autograd.grad(output, (input, weight, bias), torch.randn_like(output), create_graph=True)
    torch.autograd.grad(sum(grad.square().sum() for grad in grads), (input, weight, bias), allow_unused=True)


def test_the_recorder_sees_torch_convolution():
    """Control: the same recording of torch.nn.functional does catch PyTorch's convolution."""
    with RecordDispatchedOps() as recorder:
        forward_backward_double_backward(F, "conv2d")
    assert any(TORCH_CONVOLUTION.search(name) for name in recorder.names)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_no_torch_convolution_is_dispatched(backend, name):
    """Forward, backward and double backward dispatch no PyTorch convolution: the work is our own kernels'."""
    with RecordDispatchedOps() as recorder:
        forward_backward_double_backward(mF, name)
    assert not [op for op in recorder.names if TORCH_CONVOLUTION.search(op) and not op.startswith("manual_conv.")]
    if backend == "cpp":  # the compiled kernels are opaque to the recorder, but they are the ones that ran
        assert {"manual_conv.conv2d.default", "manual_conv.conv2d_input_grad.default",
                "manual_conv.conv2d_weight_grad.default"} <= recorder.names


# ---------------------------------------------------------------------------------------------- needs_input_grad

KERNELS = ("conv2d", "conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad")


@contextlib.contextmanager
def count_kernel_calls(monkeypatch):
    """Counts the calls of the Python reference kernels (only the top-level ones: a kernel that calls another
    kernel internally, as conv2d_input_grad calls conv2d, counts once)."""
    calls = collections.Counter()
    depth = [0]

    def counting(kernel_name, kernel):
        def wrapper(*args):
            if depth[0] == 0:
                calls[kernel_name] += 1
            depth[0] += 1
            try:
                return kernel(*args)
            finally:
                depth[0] -= 1
        return wrapper

    for kernel_name in KERNELS:
        monkeypatch.setattr(conv_reference, kernel_name, counting(kernel_name, getattr(conv_reference, kernel_name)))
    yield calls


# name, which of (input, weight, bias) require grad -> the backward kernels that must run, once each
NEEDED_KERNELS = [
    ("conv2d", (True, False, False), {"conv2d_input_grad"}),
    ("conv2d", (False, True, False), {"conv2d_weight_grad"}),
    ("conv2d", (False, False, True), {"conv2d_bias_grad"}),
    ("conv2d", (True, True, True), {"conv2d_input_grad", "conv2d_weight_grad", "conv2d_bias_grad"}),
    ("conv_transpose2d", (True, False, False), {"conv2d"}),
    ("conv_transpose2d", (False, True, False), {"conv2d_weight_grad"}),
    ("conv_transpose2d", (False, False, True), {"conv2d_bias_grad"}),
]


@pytest.mark.parametrize("name, requires_grad, needed", NEEDED_KERNELS)
def test_only_the_needed_gradients_are_computed(monkeypatch, name, requires_grad, needed):
    """On the 'python' backend, whose kernels are module functions that can be counted."""
    leaves = [leaf.requires_grad_(flag) for leaf, flag in zip(layout_leaves(name), requires_grad)]
    with manual_conv.use_backend("python"), count_kernel_calls(monkeypatch) as calls:
        output = getattr(mF, name)(*leaves, **LAYOUT_KWARGS[name])
        calls.clear()  # count the backward only
        output.backward(torch.randn_like(output))
    assert calls == collections.Counter(needed)
