"""Pooling by hand (manual_conv.ops.pool): max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d and
their modules.

gradcheck/gradgradcheck prove the hand-written backward (and its backward) against finite differences of our own
forward; the parity tests prove forward, arg-max indices and gradients equal to PyTorch's on random
configurations, including ties, NaN and all −∞ windows, where the arg-max rule matters. The max pooling tests run
on both backends (the `backend` fixture): on 'cpp' max_pool2d's forward and both max poolings' backward are the
compiled kernels.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv.ops.pool import pooling_output_size

# id: (input shape, max_pool2d keyword arguments)
MAX_POOL_CASES = {
    "plain": ((2, 2, 6, 6), {"kernel_size": 2}),
    "overlapping": ((1, 2, 5, 6), {"kernel_size": 3, "stride": 1}),
    "stride-padding": ((2, 1, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1}),
    "pairs": ((1, 2, 6, 7), {"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 1)}),
    "dilation": ((1, 2, 7, 7), {"kernel_size": 2, "stride": 1, "dilation": (2, 3)}),
    "ceil-mode": ((1, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    "unbatched": ((2, 5, 5), {"kernel_size": 2, "ceil_mode": True}),
}

# id: (input shape, avg_pool2d keyword arguments)
AVG_POOL_CASES = {
    "plain": ((2, 2, 6, 6), {"kernel_size": 2}),
    "overlapping": ((1, 2, 5, 6), {"kernel_size": 3, "stride": 1}),
    "padding-counted": ((1, 2, 6, 5), {"kernel_size": 3, "stride": 2, "padding": 1}),
    "padding-not-counted": ((1, 2, 6, 5), {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    "ceil-mode": ((1, 2, 7, 6), {"kernel_size": (3, 2), "stride": 2, "padding": 1, "ceil_mode": True}),
    "ceil-mode-not-counted": (
        (1, 1, 6, 7), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}
    ),
    "divisor-override": ((1, 2, 5, 5), {"kernel_size": 2, "stride": 1, "padding": 1, "divisor_override": 3}),
    "unbatched": ((2, 5, 5), {"kernel_size": 2, "ceil_mode": True}),
}

ADAPTIVE_CASES = {
    "divides": ((2, 2, 6, 4), 2),
    "global": ((2, 3, 5, 4), 1),
    "overlapping-windows": ((1, 2, 7, 5), (3, 4)),
    "larger-than-input": ((1, 1, 3, 2), (5, 3)),
    "keep-one-size": ((1, 2, 5, 6), (None, 4)),
    "unbatched": ((2, 5, 7), 3),
}


ADAPTIVE_MAX_CASES = {
    "divides": ((2, 2, 6, 4), 2),
    "global": ((2, 3, 5, 4), 1),
    "overlapping-windows": ((1, 2, 7, 5), (3, 4)),
    "larger-than-input": ((1, 1, 3, 2), (5, 3)),
    "keep-one-size": ((1, 2, 5, 6), (None, 4)),
    "unbatched": ((2, 5, 7), 3),
}


def leaf(shape, dtype=torch.float64, generator=None):
    return torch.randn(shape, dtype=dtype, generator=generator).requires_grad_()


# ------------------------------------------------------------------------------------------------ derivatives


@pytest.mark.parametrize("shape, kwargs", MAX_POOL_CASES.values(), ids=MAX_POOL_CASES.keys())
def test_max_pool2d_gradcheck_and_gradgradcheck(backend, shape, kwargs):
    torch.manual_seed(0)
    input = leaf(shape)
    assert gradcheck(lambda x: mF.max_pool2d(x, **kwargs), (input,))
    assert gradgradcheck(lambda x: mF.max_pool2d(x, **kwargs), (input,))


@pytest.mark.parametrize("shape, kwargs", AVG_POOL_CASES.values(), ids=AVG_POOL_CASES.keys())
def test_avg_pool2d_gradcheck_and_gradgradcheck(shape, kwargs):
    torch.manual_seed(0)
    input = leaf(shape)
    assert gradcheck(lambda x: mF.avg_pool2d(x, **kwargs), (input,))
    assert gradgradcheck(lambda x: mF.avg_pool2d(x, **kwargs), (input,))


@pytest.mark.parametrize("shape, output_size", ADAPTIVE_CASES.values(), ids=ADAPTIVE_CASES.keys())
def test_adaptive_avg_pool2d_gradcheck_and_gradgradcheck(shape, output_size):
    torch.manual_seed(0)
    input = leaf(shape)
    assert gradcheck(lambda x: mF.adaptive_avg_pool2d(x, output_size), (input,))
    assert gradgradcheck(lambda x: mF.adaptive_avg_pool2d(x, output_size), (input,))


@pytest.mark.parametrize("shape, output_size", ADAPTIVE_MAX_CASES.values(), ids=ADAPTIVE_MAX_CASES.keys())
def test_adaptive_max_pool2d_gradcheck_and_gradgradcheck(backend, shape, output_size):
    torch.manual_seed(0)
    input = leaf(shape)
    assert gradcheck(lambda x: mF.adaptive_max_pool2d(x, output_size), (input,))
    assert gradgradcheck(lambda x: mF.adaptive_max_pool2d(x, output_size), (input,))


@pytest.mark.parametrize("function, node", [
    (lambda x: mF.max_pool2d(x, 2), "MaxPool2dFunctionBackward"),
    (lambda x: mF.avg_pool2d(x, 2), "AvgPool2dFunctionBackward"),
    (lambda x: mF.adaptive_avg_pool2d(x, 3), "AdaptiveAvgPool2dFunctionBackward"),
    (lambda x: mF.adaptive_avg_pool2d(x, 1), "GlobalAvgPool2dFunctionBackward"),
    (mnn.MaxPool2d(2), "MaxPool2dFunctionBackward"),
    (mnn.AvgPool2d(2), "AvgPool2dFunctionBackward"),
    (mnn.AdaptiveAvgPool2d(3), "AdaptiveAvgPool2dFunctionBackward"),
    (lambda x: mF.adaptive_max_pool2d(x, 4), "AdaptiveMaxPool2dFunctionBackward"),
    (lambda x: mF.adaptive_max_pool2d_with_indices(x, 1)[0], "AdaptiveMaxPool2dFunctionBackward"),
    (lambda x: mnn.AdaptiveMaxPool2d(3, return_indices=True)(x)[0], "AdaptiveMaxPool2dFunctionBackward"),
])
def test_the_graph_runs_through_our_functions(function, node):
    output = function(leaf((1, 2, 6, 6)))
    assert type(output.grad_fn).__name__ == node


# --------------------------------------------------------------------------------------------- parity with torch


def every_window_reads_the_input(size, kernel, stride, padding, dilation, ceil_mode):
    """Whether every window along one dim has a tap inside the input. PyTorch's max pooling gives a window wholly in
    the padding (e.g. width 1, padding 1, dilation 2) an index outside its plane, and its backward then writes out
    of bounds (a PyTorch bug, not copied: manual_conv raises); such pools are left out."""
    windows = pooling_output_size(size, kernel, stride, padding, dilation, ceil_mode)
    return all(any(0 <= y * stride - padding + i * dilation < size for i in range(kernel)) for y in range(windows))


@st.composite
def pool_configs(draw, dilation=True):
    """(input shape, kwargs) that PyTorch accepts: pads within half the (effective) kernel, output ≥ 1, and
    every window reads the input."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilation else (1, 1)
    padding = tuple(draw(st.integers(0, min(k // 2, (d * (k - 1) + 1) // 2))) for k, d in zip(kernel, dil))
    ceil_mode = draw(st.booleans())
    sizes = tuple(
        max(1, d * (k - 1) + 1 - 2 * p) + draw(st.integers(0, 5)) for k, d, p in zip(kernel, dil, padding)
    )
    assume(all(every_window_reads_the_input(*args, ceil_mode) for args in zip(sizes, kernel, stride, padding, dil)))
    batch = (draw(st.integers(1, 2)),) if draw(st.booleans()) else ()
    shape = (*batch, draw(st.integers(1, 3)), *sizes)
    kwargs = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    if dilation:
        kwargs["dilation"] = dil
    return shape, kwargs


def assert_same_forward_and_backward(ours, theirs, input, atol=0.0, rtol=0.0):
    """Equal outputs (and indices) and equal input gradients for one random upstream gradient."""
    mine = input.detach().clone().requires_grad_()
    reference = input.detach().clone().requires_grad_()
    out_mine, out_ref = ours(mine), theirs(reference)
    if isinstance(out_ref, tuple):
        (out_mine, indices_mine), (out_ref, indices_ref) = out_mine, out_ref
        assert torch.equal(indices_mine, indices_ref)
    torch.testing.assert_close(out_mine, out_ref, atol=atol, rtol=rtol, equal_nan=True)
    upstream = torch.randn(out_ref.shape, dtype=out_ref.dtype)
    out_mine.backward(upstream)
    out_ref.backward(upstream)
    torch.testing.assert_close(mine.grad, reference.grad, atol=atol, rtol=rtol, equal_nan=True)


@given(config=pool_configs(), dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_max_pool2d_matches_torch(backend, config, dtype, seed):
    shape, kwargs = config
    input = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    assert_same_forward_and_backward(
        lambda x: mF.max_pool2d(x, return_indices=True, **kwargs),
        lambda x: F.max_pool2d(x, return_indices=True, **kwargs),
        input,
    )


@given(config=pool_configs(), seed=st.integers(0, 2**16))
def test_max_pool2d_ties_nan_and_infinities_like_torch(backend, config, seed):
    """Few distinct values (many ties), NaN and −∞: torch's rule picks the first maximum in scan order, the last
    NaN, and the first tap inside the input for an all −∞ window; the gradient goes there."""
    shape, kwargs = config
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([-1.0, 0.0, 1.0, float("nan"), -float("inf")], dtype=torch.float64)
    weights = torch.tensor([3.0, 3.0, 3.0, 0.5, 2.0])
    input = values[torch.multinomial(weights, torch.Size(shape).numel(), True, generator=generator)].view(shape)
    assert_same_forward_and_backward(
        lambda x: mF.max_pool2d(x, return_indices=True, **kwargs),
        lambda x: F.max_pool2d(x, return_indices=True, **kwargs),
        input,
    )


def test_max_pool2d_tie_sends_the_gradient_to_the_first_maximum(backend):
    input = torch.tensor([[[[1.0, 3.0], [3.0, 3.0]]]], requires_grad=True)
    output, indices = mF.max_pool2d(input, 2, return_indices=True)
    output.sum().backward()
    assert indices.item() == 1
    assert input.grad.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]


@given(config=pool_configs(dilation=False), count_include_pad=st.booleans(),
       divisor_override=st.sampled_from([None, None, 1, 3, -2]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_avg_pool2d_matches_torch(config, count_include_pad, divisor_override, dtype, seed):
    shape, kwargs = config
    kwargs.update(count_include_pad=count_include_pad, divisor_override=divisor_override)
    input = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    assert_same_forward_and_backward(
        lambda x: mF.avg_pool2d(x, **kwargs), lambda x: F.avg_pool2d(x, **kwargs), input, **tolerance
    )


@given(height=st.integers(1, 9), width=st.integers(1, 9), out_height=st.sampled_from([None, 1, 2, 3, 5, 10]),
       out_width=st.integers(1, 10), batched=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**16))
def test_adaptive_avg_pool2d_matches_torch(height, width, out_height, out_width, batched, dtype, seed):
    shape = (2, 3, height, width) if batched else (3, height, width)
    input = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    output_size = (out_height, out_width)
    assert_same_forward_and_backward(
        lambda x: mF.adaptive_avg_pool2d(x, output_size), lambda x: F.adaptive_avg_pool2d(x, output_size),
        input, **tolerance,
    )


@given(height=st.integers(1, 9), width=st.integers(1, 9), out_height=st.sampled_from([None, 1, 2, 3, 5, 10]),
       out_width=st.integers(1, 10), batched=st.booleans(), seed=st.integers(0, 2**16))
def test_adaptive_max_pool2d_ties_nan_and_infinities_like_torch(backend, height, width, out_height, out_width,
                                                                batched, seed):
    """Few distinct values (many ties), NaN and −∞ in windows that overlap and differ in size: the two-step scan
    (each row's winner, then the rows') picks torch's row-major winner, the first maximum or the last NaN, or the
    window's first position when all is −∞; values, indices and the scattered gradient equal torch's."""
    shape = (2, 3, height, width) if batched else (3, height, width)
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([-1.0, 0.0, 1.0, float("nan"), -float("inf")], dtype=torch.float64)
    weights = torch.tensor([3.0, 3.0, 3.0, 0.5, 2.0])
    input = values[torch.multinomial(weights, torch.Size(shape).numel(), True, generator=generator)].view(shape)
    output_size = (out_height, out_width)
    assert_same_forward_and_backward(lambda x: mF.adaptive_max_pool2d(x, output_size, return_indices=True),
                                     lambda x: F.adaptive_max_pool2d(x, output_size, return_indices=True), input)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adaptive_max_pool2d_in_half_precision_like_torch(backend, dtype):
    """float16/bfloat16: the same maxima and indices (a max rounds nothing), and the input gradient no less precise
    than torch's against float64 where overlapping windows share an arg-max."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(2, 4, 9, 7, generator=generator).to(dtype)
    upstream = torch.randn(2, 4, 5, 5, generator=generator).to(dtype)
    results = []
    for library, values in ((mF, input), (F, input), (F, input.double())):
        leaf_ = values.clone().requires_grad_()
        output, indices = library.adaptive_max_pool2d(leaf_, 5, return_indices=True)
        results.append((output, indices, *torch.autograd.grad(output, leaf_, upstream.to(output.dtype))))
    (output, indices, grad), (expected, expected_indices, expected_grad), (_, _, reference) = results
    assert torch.equal(output, expected) and torch.equal(indices, expected_indices)
    assert (grad.double() - reference).abs().max() <= (expected_grad.double() - reference).abs().max()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8])
def test_integer_max_pool2d_like_torch(backend, dtype):
    """Max pooling of integers pads with the dtype's minimum, so the pad still never wins (the Python scan runs
    for integers on both backends)."""
    input = torch.randint(0, 50, (2, 3, 5, 6), generator=torch.Generator().manual_seed(0)).to(dtype)
    for kwargs in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}):
        assert torch.equal(mF.max_pool2d(input, return_indices=True, **kwargs)[1],
                           F.max_pool2d(input, return_indices=True, **kwargs)[1])
        assert torch.equal(mF.max_pool2d(input, **kwargs), F.max_pool2d(input, **kwargs))


def test_int64_avg_pool2d_truncates_like_torch():
    input = torch.randint(-25, 25, (2, 3, 5, 6), generator=torch.Generator().manual_seed(0))
    for kwargs in ({"kernel_size": 2}, {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}):
        assert torch.equal(mF.avg_pool2d(input, **kwargs), F.avg_pool2d(input, **kwargs))


def test_output_size_formula_matches_torch_with_ceil_mode():
    """The ceil_mode rule that drops a last window starting in the right padding."""
    for size in range(1, 9):
        for kernel in range(1, 5):
            for stride in range(1, 4):
                for padding in range(kernel // 2 + 1):
                    for ceil_mode in (False, True):
                        expected = pooling_output_size(size, kernel, stride, padding, 1, ceil_mode)
                        if expected < 1:
                            continue
                        input = torch.zeros(1, 1, size, 1)
                        got = F.max_pool2d(input, (kernel, 1), (stride, 1), (padding, 0), ceil_mode=ceil_mode)
                        assert got.shape[2] == expected


def test_zero_batch(backend):
    """Forward and backward of an empty batch: empty outputs and gradients of the input's shape."""
    input = torch.randn(0, 2, 4, 4, requires_grad=True)
    for ours, torchs in ((mF.max_pool2d, F.max_pool2d), (mF.avg_pool2d, F.avg_pool2d),
                         (mF.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
                         (mF.adaptive_max_pool2d, F.adaptive_max_pool2d)):
        output = ours(input, 2)
        assert output.shape == torchs(input, 2).shape
        (grad,) = torch.autograd.grad(output.sum(), input)
        assert grad.shape == input.shape


# ------------------------------------------------------------------------------------ non-finite values (issue 12)


def test_adaptive_avg_pool2d_keeps_an_infinity_in_its_window(backend):
    """Issue 12's example: adaptive_avg_pool2d([[[[inf, 1.]]]], (1, 2)) is [inf, 1], as in torch, not [inf, nan]
    (an averaging matrix multiplies its zeros into the inf); the gradient too stays in each window."""
    input = torch.tensor([[[[math.inf, 1.0]]]], requires_grad=True)
    output = mF.adaptive_avg_pool2d(input, (1, 2))
    assert output.tolist() == [[[[math.inf, 1.0]]]]
    (grad,) = torch.autograd.grad(output, input, torch.tensor([[[[1.0, math.nan]]]]))
    assert grad[0, 0, 0, 0].item() == 1.0 and grad[0, 0, 0, 1].isnan()


@pytest.mark.parametrize("name, call", [
    ("max", lambda lib, x: lib.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    ("avg", lambda lib, x: lib.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    ("adaptive", lambda lib, x: lib.adaptive_avg_pool2d(x, (3, 4))),
    ("global", lambda lib, x: lib.adaptive_avg_pool2d(x, 1)),
    ("adaptive-max", lambda lib, x: lib.adaptive_max_pool2d(x, (3, 4))),
])
def test_infinities_and_nan_propagate_as_in_torch(backend, name, call):
    """±inf and NaN in the input and in the gradient from above: NaN positions and infinities equal torch's."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 3, 7, 9, generator=generator, dtype=torch.float64)
    values.view(-1)[torch.randperm(values.numel(), generator=generator)[:12]] = torch.tensor(
        [math.inf, -math.inf, math.nan], dtype=torch.float64).repeat(4)
    results = []
    for library in (mF, F):
        input = values.clone().requires_grad_()
        output = call(library, input)
        grad_output = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grad_output.view(-1)[::5] = math.inf
        results.append((output, *torch.autograd.grad(output, input, grad_output)))
    for ours, torchs in zip(*results):
        torch.testing.assert_close(ours, torchs, equal_nan=True)


# --------------------------------------------------------------------------------- memory formats (issue 12)


def _layouts(shape):
    """(name, tensor): contiguous, channels_last (with channels_last strides, also for one channel) and an
    unbatched image permuted from (H, W, C), which is channels_last-like but 3-D, hence contiguous for torch."""
    values = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    yield "contiguous", values
    yield "channels_last", torch.empty_like(values, memory_format=torch.channels_last).copy_(values)
    yield "unbatched-hwc", values[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)


POOLS = {
    "max": lambda lib, x: lib.max_pool2d(x, 2, 1, 1),
    "avg": lambda lib, x: lib.avg_pool2d(x, 3, 2, 1),
    "adaptive": lambda lib, x: lib.adaptive_avg_pool2d(x, (2, 3)),
    "global": lambda lib, x: lib.adaptive_avg_pool2d(x, 1),
    "adaptive-max": lambda lib, x: lib.adaptive_max_pool2d(x, (2, 3)),
}
# the pools that also return indices, with return_indices
WITH_INDICES = {
    "max": lambda lib, x: lib.max_pool2d(x, 2, 1, 1, return_indices=True),
    "adaptive-max": lambda lib, x: lib.adaptive_max_pool2d(x, (2, 3), return_indices=True),
}


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("pool", POOLS)
def test_outputs_and_gradients_are_laid_out_as_torchs(backend, pool, channels):
    """Issue 12: max_pool2d's and adaptive_avg_pool2d's outputs for channels_last input were contiguous, and
    avg_pool2d's input gradient a crop of a padded buffer. Now every output (indices too) has torch's strides and
    every input gradient torch's layout: channels_last exactly where torch's is, 1-channel tensors included."""
    for layout, values in _layouts((2, channels, 5, 6)):
        results = []
        for library in (mF, F):
            input = values.clone(memory_format=torch.preserve_format).requires_grad_()
            seen = []
            view = input[...]  # a view sees the gradient the op returns, before it is accumulated
            view.register_hook(seen.append)
            output = POOLS[pool](library, view)
            outputs = WITH_INDICES[pool](library, view) if pool in WITH_INDICES else (output,)
            torch.autograd.grad(output, input, torch.randn_like(output))
            results.append([tensor.stride() for tensor in outputs] + [seen[0].stride()])
        assert results[0] == results[1], layout


def test_avg_pool2d_gradient_is_not_a_view(backend):
    """The input gradient is a tensor of its own, not a crop of a padded buffer (a view with padded strides)."""
    input = torch.randn(2, 3, 5, 6, requires_grad=True)
    seen = []
    view = input[...]
    view.register_hook(seen.append)
    torch.autograd.grad(mF.avg_pool2d(view, 3, 2, 1), input, torch.randn(2, 3, 3, 3))
    assert seen[0]._base is None and seen[0].is_contiguous()


# --------------------------------------------------------------------------------- dtypes and sizes (issue 12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pooling_sums_in_float32_as_torch(backend, dtype):
    """float16/bfloat16 windows are summed in float32 and rounded once, as torch's kernels sum them: 1 plus three
    2^-8 (2^-11 for float16) is 1 after every bfloat16 add but not in float32, and the mean shows it."""
    tiny = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    input = torch.tensor([[[[1.0, tiny, 1.0, tiny], [tiny, tiny, tiny, tiny]]]], dtype=dtype)
    for call in (lambda lib: lib.avg_pool2d(input, 2), lambda lib: lib.adaptive_avg_pool2d(input, (1, 2)),
                 lambda lib: lib.adaptive_avg_pool2d(input, 1)):
        expected = call(F)
        assert torch.equal(call(mF), expected) and expected.float().ne(0.25).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_sum_in_float32(dtype):
    """Overlapping windows' gradients (divisor 1: exact shares) add up in float32 and round once: the middle
    input of three windows gets 2^-8 + 2^-8 + 1 (2^-11 for float16), which float16/bfloat16 adds in another
    order (1 first) would round to 1."""
    tiny = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    input = torch.zeros(1, 1, 1, 3, dtype=dtype, requires_grad=True)
    output = mF.avg_pool2d(input, (1, 3), 1, (0, 1), divisor_override=1)
    (grad,) = torch.autograd.grad(output, input, torch.tensor([[[[tiny, tiny, 1.0]]]], dtype=dtype))
    assert grad[0, 0, 0, 1].item() == 1 + 2 * tiny


def _outcome(call):
    """What a call gives: its error type, or (values, strides) of its output and its input gradient."""
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - the type is the result
        return type(error)


def _forward_and_backward(function, input):
    output = function(input)
    if not input.requires_grad:
        return output, output.stride()
    (grad,) = torch.autograd.grad(output, input, torch.ones_like(output))
    return output, grad


EDGE_CALLS = {
    # the shape is checked before the dtype, which is checked when the kernel is dispatched (an empty batch too)
    "max-bool-empty-plane": ("max_pool2d", torch.zeros(0, 0, 0, 0, dtype=torch.bool), (2,)),
    "max-bool-empty-batch": ("max_pool2d", torch.zeros(0, 2, 4, 4, dtype=torch.bool), (2,)),
    "max-complex-empty-batch": ("max_pool2d", torch.zeros(0, 1, 1, 3, dtype=torch.complex64), (1,)),
    "max-uint8-empty-batch": ("max_pool2d", torch.zeros(0, 2, 4, 4, dtype=torch.uint8), (2,)),
    "avg-uint8-empty-batch": ("avg_pool2d", torch.zeros(0, 2, 4, 4, dtype=torch.uint8), (2,)),
    "avg-int32-empty-plane": ("avg_pool2d", torch.zeros(2, 0, 4, 4, dtype=torch.int32), (2,)),
    "avg-int64-empty-batch": ("avg_pool2d", torch.zeros(0, 2, 4, 4, dtype=torch.int64), (2,)),
    # adaptive pooling dispatches its kernel only when there is an output to compute
    "adaptive-int-no-output": ("adaptive_avg_pool2d", torch.zeros(0, 6, 4, dtype=torch.uint8), (0,)),
    "adaptive-int64-empty-batch": ("adaptive_avg_pool2d", torch.zeros(0, 2, 5, 4, dtype=torch.int64), (3,)),
    "adaptive-int64": ("adaptive_avg_pool2d", torch.zeros(1, 2, 5, 4, dtype=torch.int64), (3,)),
    "adaptive-complex": ("adaptive_avg_pool2d", torch.zeros(1, 2, 5, 4, dtype=torch.complex64), (3,)),
    "adaptive-complex-grad-no-output": (
        "adaptive_avg_pool2d", torch.zeros(0, 1, 4, 6, dtype=torch.complex64, requires_grad=True), ((3, None),)),
    "adaptive-empty-height": ("adaptive_avg_pool2d", torch.zeros(2, 3, 0), (2,)),
    # its backward wants an output element per plane: no channels in a batch, or an output size 0, fail there
    "adaptive-backward-no-channels": ("adaptive_avg_pool2d", torch.zeros(1, 0, 6, 1, requires_grad=True), (2,)),
    "adaptive-backward-no-output": ("adaptive_avg_pool2d", torch.zeros(0, 4, 4, requires_grad=True), (0,)),
    "adaptive-unbatched-no-channels": ("adaptive_avg_pool2d", torch.zeros(0, 4, 4, requires_grad=True), (2,)),
    # a 1×1 output is torch's mean over the plane: its dtypes, its dims, NaN for an empty plane
    "global-int32": ("adaptive_avg_pool2d", torch.zeros(1, 2, 3, dtype=torch.int32), (1,)),
    "global-1d": ("adaptive_avg_pool2d", torch.zeros(3), (1,)),
    "global-2d": ("adaptive_avg_pool2d", torch.ones(3, 4, requires_grad=True), (1,)),
    "global-5d": ("adaptive_avg_pool2d", torch.ones(1, 1, 2, 3, 4, requires_grad=True), (1,)),
    "global-empty-plane": ("adaptive_avg_pool2d", torch.zeros(2, 3, 0, requires_grad=True), (1,)),
    "global-complex": ("adaptive_avg_pool2d", torch.ones(2, 3, 4, dtype=torch.complex64, requires_grad=True), (1,)),
    # adaptive max pooling dispatches its kernel (floating types only) whatever the sizes; its backward, as the
    # average's, wants an output element per plane
    "adaptive-max-int64-empty-batch": ("adaptive_max_pool2d", torch.zeros(0, 2, 5, 4, dtype=torch.int64), (3,)),
    "adaptive-max-int64-no-output": ("adaptive_max_pool2d", torch.zeros(1, 2, 5, 4, dtype=torch.int64), ((0, 2),)),
    "adaptive-max-half-empty-batch": ("adaptive_max_pool2d", torch.zeros(0, 2, 5, 4, dtype=torch.half), (3,)),
    "adaptive-max-backward-no-output": ("adaptive_max_pool2d", torch.zeros(1, 2, 4, 4, requires_grad=True),
                                        ((0, 2),)),
    "adaptive-max-unbatched-no-channels": ("adaptive_max_pool2d", torch.zeros(0, 4, 4, requires_grad=True), (2,)),
    "adaptive-max-bool": ("adaptive_max_pool2d", torch.zeros(1, 2, 4, 4, dtype=torch.bool), (2,)),
}


@pytest.mark.parametrize("name, input, args", EDGE_CALLS.values(), ids=EDGE_CALLS.keys())
def test_zero_sizes_and_dtypes_like_torch(backend, name, input, args):
    """Issue 12, item 8: zero-sized dims and dtypes give torch's exception type (in the forward or the backward),
    or torch's values and gradients; every dtype torch computes is computed."""
    ours = _outcome(lambda: _forward_and_backward(lambda x: getattr(mF, name)(x, *args), input))
    torchs = _outcome(lambda: _forward_and_backward(lambda x: getattr(F, name)(x, *args), input))
    if isinstance(torchs, type):
        assert ours is torchs
        return
    for mine, theirs in zip(ours, torchs):
        if isinstance(theirs, torch.Tensor):
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
            torch.testing.assert_close(mine, theirs, equal_nan=True)
        else:
            assert mine == theirs


# ---------------------------------------------------------------------------------------------------- bad input

BAD_CALLS = {
    "max-2d-input": ("max_pool2d", (2, 2), {"kernel_size": 2}),
    "max-5d-input": ("max_pool2d", (1, 1, 1, 4, 4), {"kernel_size": 2}),
    "max-pad-too-big": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "padding": 2}),
    "max-pad-over-half-kernel-with-dilation": (
        "max_pool2d", (1, 1, 9, 9), {"kernel_size": 3, "dilation": 2, "padding": 2}
    ),
    "max-negative-pad": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "padding": -1}),
    "max-zero-kernel": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 0}),
    "max-zero-kernel-stride-1": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 0, "stride": 1}),
    "max-negative-stride": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "stride": -1}),
    "max-zero-dilation": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "dilation": 0}),
    "max-three-kernel-sizes": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": (2, 2, 2)}),
    "max-three-strides": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "stride": (1, 1, 1)}),
    "max-float-kernel": ("max_pool2d", (1, 1, 5, 5), {"kernel_size": 2.0}),
    "max-output-too-small": ("max_pool2d", (1, 2, 5, 5), {"kernel_size": 6}),
    "max-empty-channels": ("max_pool2d", (1, 0, 5, 5), {"kernel_size": 2}),
    "max-empty-height": ("max_pool2d", (1, 2, 0, 5), {"kernel_size": 2}),
    "avg-2d-input": ("avg_pool2d", (4, 4), {"kernel_size": 2}),
    "avg-5d-input": ("avg_pool2d", (1, 1, 1, 4, 4), {"kernel_size": 2}),
    "avg-pad-too-big": ("avg_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "padding": 2}),
    "avg-zero-divisor": ("avg_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "divisor_override": 0}),
    "avg-float-divisor": ("avg_pool2d", (1, 1, 5, 5), {"kernel_size": 2, "divisor_override": 2.5}),
    "avg-output-too-small": ("avg_pool2d", (2, 5, 5), {"kernel_size": 6}),
    "avg-three-kernel-sizes": ("avg_pool2d", (1, 1, 5, 5), {"kernel_size": (2, 2, 2)}),
    "adaptive-2d-input": ("adaptive_avg_pool2d", (5, 5), {"output_size": 2}),
    "adaptive-5d-input": ("adaptive_avg_pool2d", (1, 1, 1, 5, 5), {"output_size": 2}),
    "adaptive-three-sizes": ("adaptive_avg_pool2d", (1, 1, 5, 5), {"output_size": (1, 2, 3)}),
    "adaptive-one-size": ("adaptive_avg_pool2d", (1, 1, 5, 5), {"output_size": (2,)}),
    "adaptive-negative-size": ("adaptive_avg_pool2d", (1, 1, 5, 5), {"output_size": -1}),
    "adaptive-empty-height": ("adaptive_avg_pool2d", (1, 2, 0, 5), {"output_size": 2}),
    "adaptive-max-2d-input": ("adaptive_max_pool2d", (5, 5), {"output_size": 2}),
    "adaptive-max-5d-input": ("adaptive_max_pool2d", (1, 1, 1, 5, 5), {"output_size": 2}),
    "adaptive-max-three-sizes": ("adaptive_max_pool2d", (1, 1, 5, 5), {"output_size": (1, 2, 3)}),
    "adaptive-max-one-size": ("adaptive_max_pool2d", (1, 1, 5, 5), {"output_size": (2,)}),
    "adaptive-max-negative-size": ("adaptive_max_pool2d", (1, 1, 5, 5), {"output_size": (-1, 2)}),
    "adaptive-max-empty-channels": ("adaptive_max_pool2d", (1, 0, 5, 5), {"output_size": 2}),
    "adaptive-max-empty-width": ("adaptive_max_pool2d", (2, 5, 0), {"output_size": 2}),
    "adaptive-max-float-size": ("adaptive_max_pool2d", (1, 1, 5, 5), {"output_size": (2.0, 2)}),
    "adaptive-max-bool-size": ("adaptive_max_pool2d", (1, 1, 5, 5), {"output_size": True}),
    "adaptive-max-input-dims": ("adaptive_max_pool2d", (5, 5), {"output_size": (2, 2)}),
}


@pytest.mark.parametrize("name, shape, kwargs", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_like_torch(name, shape, kwargs):
    input = torch.randn(shape)
    with pytest.raises(Exception) as expected:
        getattr(F, name)(input, **kwargs)
    with pytest.raises(expected.type) as got:
        getattr(mF, name)(input, **kwargs)
    if expected.type is RuntimeError:  # our own checks: PyTorch's very message
        assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("name, dtype", [("max_pool2d", torch.bool), ("avg_pool2d", torch.bool),
                                         ("avg_pool2d", torch.int32), ("adaptive_avg_pool2d", torch.int64)])
def test_unsupported_dtype_raises_like_torch(name, dtype):
    input = torch.ones(1, 1, 4, 4, dtype=dtype)
    with pytest.raises(NotImplementedError) as expected:
        getattr(F, name)(input, 2)
    with pytest.raises(NotImplementedError) as got:
        getattr(mF, name)(input, 2)
    assert str(got.value) == str(expected.value)


# ------------------------------------------------------------------------------------------------------ modules

MODULES = [
    ("MaxPool2d", (3,), {"stride": 2, "padding": 1, "dilation": 1, "ceil_mode": True}),
    ("MaxPool2d", ((2, 3),), {"return_indices": True}),
    ("AvgPool2d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}),
    ("AvgPool2d", (2,), {"divisor_override": 3}),
    ("AdaptiveAvgPool2d", ((None, 3),), {}),
    ("AdaptiveMaxPool2d", ((None, 3),), {}),
    ("AdaptiveMaxPool2d", (4,), {"return_indices": True}),
]


@pytest.mark.parametrize("name, args, kwargs", MODULES)
def test_modules_are_torch_modules_with_our_computation(name, args, kwargs):
    ours, theirs = getattr(mnn, name)(*args, **kwargs), getattr(torch.nn, name)(*args, **kwargs)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    input = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    assert_same_forward_and_backward(ours, theirs, input, atol=1e-12, rtol=1e-12)


def test_adaptive_max_pool2d_compiles_into_one_graph(backend):
    """torch.compile(fullgraph=True) traces forward and backward: the windows' bounds are Python ints, not values
    read back from tensors (a data-dependent loop length breaks the graph)."""
    input = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(lambda x: mF.adaptive_max_pool2d(x, (2, 3), return_indices=True), backend="aot_eager",
                             fullgraph=True)
    (output, indices), (expected, expected_indices) = compiled(input), mF.adaptive_max_pool2d(input, (2, 3), True)
    assert torch.equal(output, expected) and torch.equal(indices, expected_indices)
    upstream = torch.randn(output.shape, dtype=torch.float64)
    assert torch.equal(*(torch.autograd.grad(y, input, upstream)[0] for y in (output, expected)))
    torch._dynamo.reset()


@pytest.mark.parametrize("output_size", [1, 2])
def test_adaptive_avg_pool2d_trains_compiled_with_dynamic_shapes(backend, output_size):
    """torch.compile(dynamic=True) of a training step, over two input sizes: the global pool's backward divides by
    H·W, a symbolic size (the product is taken in setup_context, which Dynamo traces with the forward)."""
    compiled = torch.compile(lambda x: mF.adaptive_avg_pool2d(x, output_size), backend="aot_eager", dynamic=True)
    for size in (4, 6):
        input = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
        output = compiled(input)
        torch.testing.assert_close(output, F.adaptive_avg_pool2d(input, output_size))
        torch.testing.assert_close(torch.autograd.grad(output.sum(), input)[0],
                                   torch.autograd.grad(F.adaptive_avg_pool2d(input, output_size).sum(), input)[0])
    torch._dynamo.reset()
