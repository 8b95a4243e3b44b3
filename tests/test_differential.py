"""Differential testing: every public function of manual_conv.functional against torch.nn.functional.

Hypothesis draws calls: shapes (zero-sized dims too), argument combinations (valid and invalid), the dtype, each
tensor's layout (contiguous, channels_last, a strided slice, a transpose), whether it is passed as a leaf or as a
view of an intermediate result, ±inf and NaN at random positions of the inputs and of the gradient arriving from
above, and an in-place op applied to the output. Each call runs through torch and through manual_conv (on each
backend) from identical inputs, and the two must agree on:

- the exception type, when either raises (in the forward or in the backward);
- the output's values (NaN positions and infinities exactly), dtype, shape and strides (hence memory format);
- every input's gradient (values, dtype, strides) and every input's value after the call (running statistics,
  in-place ops);
- in float16/bfloat16, the error against a float64 reference (torch's own op on the same values in float64): ours
  may be no larger than torch's, in units in the last place.

The examples are derandomized (tests/conftest.py's profile), so a failure reproduces.
"""
import dataclasses
import importlib
import math
import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import manual_conv
import manual_conv.functional as mF
from torch._prims_common import suggest_memory_format

pytestmark = pytest.mark.usefixtures("single_thread")

HALF_DTYPES = (torch.float16, torch.bfloat16)
# Weighted towards float32, the dtype models train in; every other dtype torch computes (or refuses) comes too.
DTYPES = (torch.float32,) * 4 + (torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8,
                                   torch.bool, torch.complex64)
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed")


# --------------------------------------------------------------------------------------------- drawn tensors


@dataclasses.dataclass
class TensorArg:
    """A tensor argument: its values (dense), how it is laid out and how it is passed.

    ``layout``: 'contiguous'; 'channels_last' (4-D); 'sliced', every other element of a last dim twice as long;
    'transposed', the transpose of a tensor whose last two dims are swapped. ``intermediate``: the argument is
    (a view of) a copy of the leaf, a non-leaf as inside a model, rather than the leaf itself.
    """

    values: torch.Tensor
    layout: str = "contiguous"
    requires_grad: bool = False
    intermediate: bool = False
    grad_layout_compared: bool = True

    def materialize(self, dtype=None):
        """(leaf, argument): a fresh leaf holding these values (cast to ``dtype``) and what the call receives."""
        values = self.values if dtype is None else self.values.to(dtype)
        base = values.clone()
        if self.intermediate:
            leaf = base.requires_grad_(self.requires_grad)
            return leaf, _view(leaf.clone(), self.layout)
        leaf = _view(base, self.layout).detach().requires_grad_(self.requires_grad)
        return leaf, leaf


def _view(tensor, layout):
    if layout == "sliced":
        return tensor[..., ::2]
    if layout == "transposed":
        return tensor.transpose(-1, -2)
    return tensor


def _dense_values(shape, layout, make):
    """Values for a tensor that will be viewed in ``layout``: the shape before the view, in its memory format."""
    shape = list(shape)
    if layout == "sliced":
        shape[-1] *= 2
    elif layout == "transposed":
        shape[-1], shape[-2] = shape[-2], shape[-1]
    values = make(shape)
    if layout != "channels_last":
        return values
    # allocated channels_last: .contiguous(memory_format=...) would leave a 1-channel tensor's NCHW strides
    return torch.empty_like(values, memory_format=torch.channels_last).copy_(values)


def random_values(shape, dtype, generator, low=-3, high=4):
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    if not dtype.is_floating_point and not dtype.is_complex:
        return torch.randint(0 if dtype == torch.uint8 else low, high, shape, generator=generator).to(dtype)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) if not dtype.is_complex else (
        torch.randn(shape, generator=generator, dtype=dtype))


def inject_non_finite(values, generator, count):
    """±inf and NaN at ``count`` random positions (floating point only: how complex infinities propagate differs
    among torch's own kernels and the BLAS libraries, e.g. torch's complex convolution is three real ones)."""
    if count == 0 or values.numel() == 0 or not values.is_floating_point():
        return values
    flat = values.reshape(-1).clone()
    positions = torch.randint(0, flat.numel(), (count,), generator=generator)
    choices = torch.tensor([math.inf, -math.inf, math.nan], dtype=torch.float64)
    picks = choices[torch.randint(0, 3, (count,), generator=generator)]
    flat[positions] = picks.to(flat.dtype)
    return flat.view(values.shape)


@st.composite
def tensors(draw, shape, dtype, differentiable=True, layouts=LAYOUTS, non_finite=True, make=None):
    """A TensorArg of ``shape`` and ``dtype``: random values (or ``make(shape, generator)``), a layout, ±inf/NaN
    at a few positions, passed as a leaf or as a view of an intermediate."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    usable = [layout for layout in layouts if _layout_fits(layout, shape)]
    layout = draw(st.sampled_from(usable))

    def build(dense_shape):
        values = make(dense_shape, generator) if make else random_values(dense_shape, dtype, generator)
        count = draw(st.sampled_from((0, 0, 1, 3))) if non_finite else 0
        return inject_non_finite(values, generator, count)

    values = _dense_values(shape, layout, build)
    floating = values.is_floating_point() or values.is_complex()
    requires_grad = differentiable and floating and draw(st.sampled_from((True, True, True, False)))
    intermediate = requires_grad and draw(st.booleans())
    return TensorArg(values, layout, requires_grad, intermediate)


def _layout_fits(layout, shape):
    if layout == "channels_last":
        return len(shape) == 4
    if layout == "transposed":
        return len(shape) >= 2
    return layout == "contiguous" or len(shape) >= 1


def dtypes(allowed=DTYPES):
    return st.sampled_from(allowed)


def pair_forms(pair):
    """The forms torch accepts for a pair: a tuple, a list, and an int or a 1-list when both are equal."""
    forms = [tuple(pair), list(pair)]
    if pair[0] == pair[1]:
        forms += [pair[0], [pair[0]]]
    return st.sampled_from(forms)


def _as_pair(value):
    return (value, value) if isinstance(value, int) else tuple(value) * (2 // len(value))


def pairs(low, high):
    return st.tuples(st.integers(low, high), st.integers(low, high)).flatmap(pair_forms)


# ------------------------------------------------------------------------------------------- running a call


@dataclasses.dataclass
class Call:
    """F.<function>(*args, **kwargs), TensorArgs among them; ``grad_seed`` draws the gradients arriving from
    above (with ±inf/NaN when ``grad_non_finite``); ``inplace`` is applied to the output before the backward.
    ``reference`` names the module whose function is the reference, torch.nn.functional unless it lives elsewhere
    (torchvision.ops.stochastic_depth)."""

    function: str
    args: tuple
    kwargs: dict
    grad_seed: int = 0
    grad_non_finite: bool = False
    grad_layout: str = "contiguous"
    inplace: str = "none"  # 'none', 'whole' (output.mul_(2)) or 'view' (output[..., :1].mul_(2))
    rng_seed: int = 0
    reference: str = "torch.nn.functional"


@dataclasses.dataclass
class Outcome:
    """What one library did with a Call: the error type and where it was raised, or the outputs, the inputs'
    values after the call and their gradients."""

    error: type = None
    stage: str = None
    outputs: tuple = ()
    inputs_after: tuple = ()
    grads: tuple = ()
    grad_layouts_compared: tuple = ()


def _tensor_args(call):
    return [value for value in (*call.args, *call.kwargs.values()) if isinstance(value, TensorArg)]


def run(library, call, dtype_override=None, grad_dtypes=None):
    """Run ``call`` through ``library`` (torch.nn.functional or manual_conv.functional); ``dtype_override`` and
    ``grad_dtypes`` make the float64 reference run (see ``_gradients``)."""
    leaves, arguments = {}, {}
    for arg in _tensor_args(call):
        dtype = None
        if dtype_override is not None and (arg.values.is_floating_point() or arg.values.is_complex()):
            dtype = dtype_override[arg.values.is_complex()]
        leaves[id(arg)], arguments[id(arg)] = arg.materialize(dtype)
    args = [arguments.get(id(value), value) for value in call.args]
    kwargs = {key: arguments.get(id(value), value) for key, value in call.kwargs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(call.rng_seed)
        try:
            output = getattr(library, call.function)(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the type is the result
            return Outcome(type(error), "forward")
        # a None in a tuple (multi_head_attention_forward's weights when not needed) is not an output to compare
        outputs = tuple(o for o in output if o is not None) if isinstance(output, tuple) else (output,)
        try:
            _apply_inplace(outputs[0], call.inplace)
            grads = _gradients(outputs, list(leaves.values()), call, grad_dtypes)
        except Exception as error:  # noqa: BLE001
            return Outcome(type(error), "backward")
    compared = tuple(arg.grad_layout_compared for arg in _tensor_args(call) if leaves[id(arg)].requires_grad)
    return Outcome(outputs=tuple(o.detach() for o in outputs), inputs_after=tuple(t.detach() for t in leaves.values()),
                   grads=grads, grad_layouts_compared=compared if grads else ())


def _apply_inplace(output, inplace):
    if inplace == "none" or output.dtype == torch.bool:
        return
    target = output if inplace == "whole" or output.dim() == 0 else output[..., :1]
    target.mul_(2)


def _gradients(outputs, leaves, call, grad_dtypes=None):
    """The gradients of the leaves for random gradients arriving at the outputs, drawn in each output's dtype, or
    in ``grad_dtypes`` (the dtypes of the measured run's outputs): the float64 reference then gets the very values
    the float16/bfloat16 run got, rather than values that differ from them by a rounding (up to half an ulp of the
    gradient, which a correctly rounded result would inherit as error)."""
    differentiable = [o for o in outputs if o.requires_grad]
    wanting = [leaf for leaf in leaves if leaf.requires_grad]
    if not differentiable or not wanting:
        return ()
    generator = torch.Generator().manual_seed(call.grad_seed)
    grad_outputs = []
    for position, output in enumerate(outputs):
        if not output.requires_grad:
            continue
        layout = call.grad_layout if _layout_fits(call.grad_layout, output.shape) else "contiguous"
        drawn = output.dtype if grad_dtypes is None else grad_dtypes[position]
        make = lambda shape: random_values(shape, drawn, generator).to(output.dtype)  # noqa: E731
        values = _dense_values(output.shape, layout, make)
        values = inject_non_finite(values, generator, 2 if call.grad_non_finite else 0)
        grad_outputs.append(_view(values, layout))
    grads = torch.autograd.grad(differentiable, wanting, grad_outputs, allow_unused=True, materialize_grads=True)
    return tuple(g.detach() for g in grads)


# ----------------------------------------------------------------------------------------------- comparison


def assert_same_outcome(ours, theirs, reference=None):
    """Same error type and stage, or equal outputs, inputs after the call and gradients."""
    assert (ours.error, ours.stage) == (theirs.error, theirs.stage), (
        f"manual_conv: {ours.error} in {ours.stage}; torch: {theirs.error} in {theirs.stage}")
    if theirs.error is not None:
        return
    for kind in ("outputs", "inputs_after", "grads"):
        mine, wanted = getattr(ours, kind), getattr(theirs, kind)
        assert len(mine) == len(wanted), kind
        references = getattr(reference, kind) if reference is not None else [None] * len(wanted)
        layouts = theirs.grad_layouts_compared if kind == "grads" else [True] * len(wanted)
        for index, (actual, expected, exact, layout) in enumerate(zip(mine, wanted, references, layouts)):
            assert_same_tensor(actual, expected, exact, f"{kind}[{index}]", layout)


def assert_same_tensor(actual, expected, reference, what, layout_compared=True):
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype}, torch {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, torch {tuple(expected.shape)}"
    # torch computes a complex convolution as three real ones and elementwise ops (the Gauss trick): the layout
    # of its gradients and of a 1-channel output follows that decomposition, not its layers' rule; not compared.
    complex_layout = expected.is_complex() and (what.startswith("grads") or expected.dim() == 4 and
                                                expected.shape[1] == 1)
    if layout_compared and expected.numel() > 0 and not complex_layout:
        assert suggest_memory_format(actual) == suggest_memory_format(expected), (
            f"{what}: memory format {suggest_memory_format(actual)}, torch {suggest_memory_format(expected)}")
        # An output's strides decide what a user may do with it (.view, in-place ops on views); a gradient's
        # exact strides are autograd's business, its memory format is not.
        assert not what.startswith("outputs") or strides_that_matter(actual) == strides_that_matter(expected), (
            f"{what}: strides {actual.stride()}, torch {expected.stride()}")
    if not (expected.is_floating_point() or expected.is_complex()):
        assert torch.equal(actual, expected), f"{what}: values differ"
        return
    assert_same_non_finite(actual, expected, what)
    if expected.dtype in HALF_DTYPES and reference is not None:
        assert_no_less_precise(actual, expected, reference, what)
        return
    tolerance = {torch.float32: 2e-5, torch.complex64: 2e-5}.get(expected.dtype, 1e-10)
    finite = expected.isfinite()
    scale = max(1.0, expected[finite].abs().max().item()) if finite.any() else 1.0
    if reference is not None and expected.is_floating_point() and not torch.allclose(
            actual[finite], expected[finite], rtol=tolerance, atol=tolerance * scale):
        # A float32 result of a float16/bfloat16 call (mixed precision: a float32 parameter's gradient, running
        # statistics) that torch computes partly at the half precision: ours may be closer to float64 than that.
        assert_no_less_precise(actual, expected, reference, what)
        return
    torch.testing.assert_close(actual[finite], expected[finite], rtol=tolerance, atol=tolerance * scale,
                               msg=lambda message: f"{what}: {message}")


def strides_that_matter(tensor):
    """The strides of the dims with more than one element: the layout, whatever size-1 dims are given."""
    return tuple(stride for size, stride in zip(tensor.shape, tensor.stride()) if size > 1)


def assert_same_non_finite(actual, expected, what):
    for part in ((actual.real, expected.real), (actual.imag, expected.imag)) if expected.is_complex() else (
            (actual, expected),):
        mine, wanted = part
        assert torch.equal(mine.isnan(), wanted.isnan()), f"{what}: NaN positions differ"
        infinite = wanted.isinf()
        assert torch.equal(mine.isinf(), infinite), f"{what}: infinite positions differ"
        assert torch.equal(mine[infinite], wanted[infinite]), f"{what}: infinities of another sign"


def ulps(values, reference, dtype):
    """|values − reference| in units in the last place of ``dtype`` at the reference's magnitude."""
    info = torch.finfo(dtype)
    magnitude = reference.abs().clamp(min=info.tiny)
    ulp = info.eps * torch.exp2(torch.floor(torch.log2(magnitude)))
    return (values.double() - reference) / ulp


def assert_no_less_precise(actual, expected, reference, what):
    """float16/bfloat16: our largest error against float64 is no larger than torch's (or half an ulp, a correctly
    rounded result), in ulps, where torch's result is finite."""
    finite = expected.isfinite() & reference.isfinite()
    if not finite.any():
        return
    reference = reference.double()[finite]
    ours = ulps(actual[finite], reference, expected.dtype).abs().max().item()
    theirs = ulps(expected[finite], reference, expected.dtype).abs().max().item()
    assert ours <= max(theirs, 0.5) + 0.05, f"{what}: error {ours:.2f} ulp, torch's {theirs:.2f} ulp"


def check(call, backend):
    """Run ``call`` through torch (or its ``reference``) and through manual_conv on ``backend``, and compare."""
    reference_library = importlib.import_module(call.reference)
    theirs = run(reference_library, call)
    with manual_conv.use_backend(backend):
        ours = run(mF, call)
    reference = None
    if theirs.error is None and any(arg.values.dtype in HALF_DTYPES for arg in _tensor_args(call)):
        reference = run(reference_library, call, dtype_override={False: torch.float64, True: torch.complex128},
                        grad_dtypes=[output.dtype for output in theirs.outputs])
        reference = None if reference.error is not None else reference
    assert_same_outcome(ours, theirs, reference)


@st.composite
def call_options(draw):
    """The parts of a Call that every function shares: gradients from above, the in-place op, the RNG seed."""
    return {"grad_seed": draw(st.integers(0, 2**31)), "grad_non_finite": draw(st.sampled_from((False, False, True))),
            "grad_layout": draw(st.sampled_from(("contiguous", "contiguous", "sliced", "channels_last"))),
            "inplace": draw(st.sampled_from(("none", "none", "whole", "view"))),
            "rng_seed": draw(st.integers(0, 2**31))}


def image_shape(draw, batch=(0, 2), channels=(0, 3), size=(0, 6), unbatched=True):
    shape = [draw(st.integers(*channels)), draw(st.integers(*size)), draw(st.integers(*size))]
    if not unbatched or draw(st.sampled_from((True, True, True, False))):
        shape.insert(0, draw(st.integers(*batch)))
    return shape


# ------------------------------------------------------------------------------------------- convolution


# Convolution weights are drawn finite: where an infinite weight meets the zero padding, torch's CPU backends
# disagree (its im2col kernels multiply the padding and give NaN at the borders, oneDNN skips it), and which one
# runs depends on the dtype, the layer's shape and heuristics. manual_conv multiplies the padding, as the
# zero-padded formula says. Inputs and the gradient from above do hold ±inf and NaN.


@st.composite
def conv2d_calls(draw):
    dtype = draw(dtypes())
    groups = draw(st.sampled_from((1, 1, 2, 0)))
    per_group_in, per_group_out = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    shape = image_shape(draw, channels=(1, 1), size=(0, 7))
    shape[-3] = max(groups, 1) * per_group_in
    # torch returns a tensor with 0 channels for an input with 0 channels, whatever the weight's output channels
    # (its path for inputs without elements); manual_conv returns the bias broadcast to (N, C_out, H_out, W_out).
    assume(per_group_in > 0 or groups == 0)
    kernel = (draw(st.integers(0, 3)), draw(st.integers(1, 3)))
    weight_shape = (max(groups, 1) * per_group_out, per_group_in, *kernel)
    kwargs = {"groups": groups, "stride": draw(st.one_of(pairs(1, 3), st.just(0))),
              "padding": draw(st.one_of(pairs(0, 2), st.sampled_from(("same", "valid")))),
              "dilation": draw(pairs(1, 2))}
    args = (draw(tensors(shape, dtype)), draw(conv_weights(weight_shape, dtype)))
    if draw(st.booleans()):
        kwargs["bias"] = draw(tensors((weight_shape[0],), dtype))
    return Call("conv2d", args, kwargs, **draw(call_options()))


@st.composite
def conv_weights(draw, shape, dtype):
    """A conv weight, finite (see above). The layout of the gradient of a weight with one channel per group is
    not compared: torch's oneDNN kernels give it channels_last strides where its others leave it contiguous
    (1-channel tensors count as both), and which runs depends on the dtype and the layer."""
    weight = draw(tensors(shape, dtype, non_finite=False))
    weight.grad_layout_compared = shape[1] != 1
    return weight


@st.composite
def conv_transpose2d_calls(draw):
    dtype = draw(dtypes())
    groups = draw(st.sampled_from((1, 1, 2)))
    per_group_in, per_group_out = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    shape = image_shape(draw, channels=(1, 1), size=(0, 5))
    shape[-3] = groups * per_group_in
    weight_shape = (groups * per_group_in, per_group_out, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kwargs = {"groups": groups, "stride": draw(pairs(1, 3)), "padding": draw(pairs(0, 2)),
              "output_padding": draw(pairs(0, 2)), "dilation": draw(pairs(1, 2))}
    # An output size of 0 is an error for torch's float64 and integer kernels and an empty output for its oneDNN
    # ones (float32, float16, bfloat16); manual_conv raises in every dtype, as for a negative size.
    sizes = [(h - 1) * s - 2 * p + d * (k - 1) + op + 1 for h, k, s, p, d, op in zip(
        shape[-2:], weight_shape[2:], *(_as_pair(kwargs[key]) for key in (
            "stride", "padding", "dilation", "output_padding")))]
    assume(shape[0] == 0 and len(shape) == 4 or all(size != 0 for size in sizes))
    args = (draw(tensors(shape, dtype)), draw(conv_weights(weight_shape, dtype)))
    if draw(st.booleans()):
        kwargs["bias"] = draw(tensors((groups * per_group_out,), dtype))
    return Call("conv_transpose2d", args, kwargs, **draw(call_options()))


# ---------------------------------------------------------------------------------------------- pooling


def _windows_inside(size, kernel, stride, padding, dilation, ceil_mode):
    """Whether every pooling window along one dim reads at least one input element (torch's max pooling returns
    indices outside the plane for windows wholly in the padding, and its backward then writes out of bounds)."""
    from manual_conv.ops.pool import pooling_output_size

    out = pooling_output_size(size, kernel, stride, padding, dilation, ceil_mode)
    return all(any(0 <= y * stride - padding + i * dilation < size for i in range(kernel)) for y in range(out))


@st.composite
def max_pool2d_calls(draw):
    dtype = draw(dtypes())
    shape = image_shape(draw)
    kernel, padding, dilation = draw(pairs(1, 3)), draw(pairs(0, 1)), draw(pairs(1, 2))
    stride = draw(st.one_of(st.none(), pairs(1, 3)))
    ceil_mode = draw(st.booleans())
    as_pairs = [_as_pair(value) for value in (kernel, padding, dilation)]
    strides = as_pairs[0] if stride is None else _as_pair(stride)
    for axis in range(2):
        k, p, d = (pair[axis] for pair in as_pairs)
        if shape[-2 + axis] > 0 and 2 * p <= d * (k - 1) + 1:
            assume(_windows_inside(shape[-2 + axis], k, strides[axis], p, d, ceil_mode))
    kwargs = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation,
              "ceil_mode": ceil_mode, "return_indices": draw(st.booleans())}
    return Call("max_pool2d", (draw(tensors(shape, dtype)),), kwargs, **draw(call_options()))


@st.composite
def avg_pool2d_calls(draw):
    dtype = draw(dtypes())
    kwargs = {"kernel_size": draw(pairs(1, 3)), "stride": draw(st.one_of(st.none(), pairs(1, 3))),
              "padding": draw(pairs(0, 1)), "ceil_mode": draw(st.booleans()),
              "count_include_pad": draw(st.booleans()), "divisor_override": draw(st.sampled_from((None, None, 1, 3)))}
    return Call("avg_pool2d", (draw(tensors(image_shape(draw), dtype)),), kwargs, **draw(call_options()))


@st.composite
def adaptive_avg_pool2d_calls(draw):
    dtype = draw(dtypes())
    output_size = draw(st.one_of(st.integers(0, 4), st.tuples(st.one_of(st.none(), st.integers(1, 4)),
                                                              st.one_of(st.none(), st.integers(1, 4)))))
    return Call("adaptive_avg_pool2d", (draw(tensors(image_shape(draw, size=(0, 7)), dtype)), output_size), {},
                **draw(call_options()))


@st.composite
def adaptive_max_pool2d_calls(draw, function):
    dtype = draw(dtypes())
    output_size = draw(st.one_of(st.integers(-1, 4), st.tuples(st.one_of(st.none(), st.integers(0, 8)),
                                                               st.one_of(st.none(), st.integers(1, 8)))))
    kwargs = {"return_indices": draw(st.booleans())} if draw(st.booleans()) else {}
    return Call(function, (draw(tensors(image_shape(draw, size=(0, 7)), dtype)), output_size), kwargs,
                **draw(call_options()))


# ------------------------------------------------------------------------------------------- activations


def any_shape(draw, dims=(0, 4), size=(0, 4)):
    return [draw(st.integers(*size)) for _ in range(draw(st.integers(*dims)))]


@st.composite
def relu_calls(draw):
    return Call("relu", (draw(tensors(any_shape(draw), draw(dtypes()))),), {"inplace": draw(st.booleans())},
                **draw(call_options()))


@st.composite
def elementwise_calls(draw, function):
    return Call(function, (draw(tensors(any_shape(draw), draw(dtypes()))),), {}, **draw(call_options()))


@st.composite
def gelu_calls(draw):
    input = draw(tensors(any_shape(draw), draw(dtypes())))
    approximate = draw(st.sampled_from(("none", "tanh", "tanh", "exact")))
    if approximate == "none" and input.values.is_floating_point():
        # torch's bug, not copied: its vectorised float32/bfloat16 CPU kernel gives gelu(+inf) = NaN, where its
        # strided path, float64 and float16 give +inf, the limit of x·Φ(x). So no +inf here.
        input.values.masked_fill_(input.values == math.inf, -math.inf)
    return Call("gelu", (input,), {"approximate": approximate}, **draw(call_options()))


@st.composite
def softmax_calls(draw, function):
    shape = any_shape(draw)
    dtype = draw(dtypes())
    kwargs = {"dim": draw(st.integers(-len(shape) - 1, len(shape)))}
    if draw(st.booleans()):
        # Not float64 → float32: the float64 input's gradient would have float32's precision, and torch's float32
        # softmax kernels use their own exp, so the gradients differ by more than the float64 tolerance.
        kwargs["dtype"] = draw(st.sampled_from((torch.float64,) if dtype == torch.float64 else
                                               (torch.float32, torch.float64)))
    return Call(function, (draw(tensors(shape, dtype)),), kwargs, **draw(call_options()))


# torch's bug, not copied: for a NaN input, torch's hardtanh (relu6), elu and hardswish backwards give 0 or NaN in
# their vectorised CPU loops (a blend on x > min_val, x > 0, x ≥ 3) and pass δ (δ·scale for elu) in their scalar
# loops (x ≤ min_val ? 0 : δ, ...), which run for strided tensors and for the tail of a contiguous one, so which one
# a NaN meets depends on its position. manual_conv passes δ, as the scalar loops and torch._decomp do. So no NaN in
# their inputs when they require grad (tests/test_activation.py compares with the scalar loop).
NAN_INPUT_GRADIENT_DIFFERS = {"relu6", "hardtanh", "hardtanh_", "elu", "elu_", "hardswish"}


@st.composite
def activation_calls(draw, function, takes_inplace=True, **parameters):
    """A call of an element-wise activation on any dtype and shape: ``parameters`` name strategies for its
    arguments, and inplace is drawn when the function takes it."""
    input = draw(tensors(any_shape(draw), draw(dtypes())))
    kwargs = {name: draw(values) for name, values in parameters.items()}
    if takes_inplace:
        kwargs["inplace"] = draw(st.booleans())
    if function in NAN_INPUT_GRADIENT_DIFFERS and input.requires_grad:
        input.values.nan_to_num_(nan=math.inf, posinf=math.inf, neginf=-math.inf)
    if function == "hardsigmoid" and input.values.dtype == torch.float64:
        # torch's bug, not copied: its float64 backward multiplies by float32's 1/6 (0.16666667163…), a float32
        # gradient (tests/test_activation.py checks ours, δ/6, and torch's); float64 forwards only here
        input.requires_grad = input.intermediate = False
    if function == "silu" and kwargs["inplace"] and input.values.is_complex():
        # torch's bug, not copied: its in-place silu_ lets a complex input that requires grad through (silu refuses
        # it) and returns δ·f'(x), not δ·conj(f'(x)) as its convention; manual_conv refuses both
        input.requires_grad = input.intermediate = False
    return Call(function, (input,), kwargs, **draw(call_options()))


HARDTANH_BOUNDS = st.sampled_from(((-1.0, 1.0), (0, 6), (-0.5, 2), (-2.5, -1), (0.25, 0.25), (1.0, -1.0), (-1.5, 0)))


@st.composite
def hardtanh_calls(draw, function):
    """hardtanh or hardtanh_: bounds of both kinds, equal ones, min_val > max_val (hardtanh's ValueError,
    hardtanh_'s clamp to max_val) and negative ones (refused for uint8)."""
    min_val, max_val = draw(HARDTANH_BOUNDS)
    return draw(activation_calls(function, takes_inplace=function == "hardtanh", min_val=st.just(min_val),
                                 max_val=st.just(max_val)))


NEGATIVE_SLOPES = st.sampled_from((0.01, 0.01, 0.2, 0.0, -0.5, 1.5, None))
ELU_ALPHAS = st.sampled_from((1.0, 1.0, 0.5, 2, 0.0, -1.0))
ELU_SCALES = st.sampled_from((1.0, 1.0, 2.0, 0.5, -1.0))

# ------------------------------------------------------------------------------------------ linear, dropout


@st.composite
def linear_calls(draw):
    dtype = draw(dtypes())
    in_features, out_features = draw(st.integers(0, 4)), draw(st.integers(0, 3))

    shape = any_shape(draw, dims=(0, 3)) + [in_features]
    weight_shape = draw(st.sampled_from(((out_features, in_features),) * 4 + ((in_features,), (out_features, 2))))
    args = [draw(tensors(shape, dtype)), draw(tensors(weight_shape, dtype))]
    if draw(st.booleans()):
        args.append(draw(tensors((out_features,), dtype)))
    return Call("linear", tuple(args), {}, **draw(call_options()))


@st.composite
def dropout_calls(draw):
    kwargs = {"p": draw(st.sampled_from((0.0, 0.2, 0.5, 0.5, 1.0, 1.5))), "training": draw(st.booleans()),
              "inplace": draw(st.booleans())}
    return Call("dropout", (draw(tensors(any_shape(draw), draw(dtypes()))),), kwargs, **draw(call_options()))


# ----------------------------------------------------------------------------------------------- losses

FLOATING = (torch.float32,) * 3 + (torch.float64, torch.float16, torch.bfloat16)
# torch takes int64 and uint8 class indices and refuses every other dtype.
TARGET_DTYPES = (torch.int64,) * 6 + (torch.uint8,) * 2 + (torch.int32, torch.int16, torch.int8, torch.bool,
                                                            torch.float32)


@st.composite
def class_index_target(draw, input_shape, ignore_index):
    """Class indices for an input of ``input_shape`` (class dim 1, or 0 when 1-D): mostly in range, some equal to
    ignore_index, now and then one out of range."""
    classes = input_shape[0 if len(input_shape) == 1 else 1]
    shape = [] if len(input_shape) == 1 else [input_shape[0], *input_shape[2:]]
    dtype = draw(st.sampled_from(TARGET_DTYPES))

    def make(dense_shape, generator):
        target = torch.randint(0, max(classes, 1), dense_shape, generator=generator)
        special = torch.rand(dense_shape, generator=generator)
        target[special < 0.15] = ignore_index
        if draw(st.sampled_from((False, False, False, True))):
            target[special > 0.95] = classes + 150
        if dtype.is_floating_point or dtype == torch.bool:
            return target.to(dtype)
        return target.clamp(torch.iinfo(dtype).min, torch.iinfo(dtype).max).to(dtype)  # uint8: −100 → 0

    return draw(tensors(shape, dtype, differentiable=False, make=make, non_finite=False))


@st.composite
def class_probability_target(draw, input_shape, dtype):
    def make(dense_shape, generator):
        logits = torch.randn(dense_shape, generator=generator, dtype=torch.float64)
        logits[torch.rand(dense_shape, generator=generator) < 0.2] = -math.inf  # classes of probability 0
        class_dim = 0 if len(input_shape) == 1 else 1
        return logits.softmax(class_dim).nan_to_num(0.0).to(dtype) if dense_shape[class_dim] else logits.to(dtype)

    return draw(tensors(input_shape, dtype, make=make))


def loss_input_shape(draw):
    classes = draw(st.integers(1, 4))
    dims = draw(st.sampled_from((1, 2, 2, 2, 3, 4)))
    if dims == 1:
        return [classes]
    return [draw(st.integers(0, 3)), classes] + [draw(st.integers(0, 3)) for _ in range(dims - 2)]


def reduction_kwargs(draw):
    return {"reduction": draw(st.sampled_from(("mean", "mean", "sum", "none")))}


def torch_mishandles_byte_target(input_shape, kwargs):
    """Calls with uint8 class indices for which torch's behaviour is a bug that manual_conv does not copy (it
    takes them as int64 indices, or refuses them in the forward):

    - (C,) or (N, C) input with reduction='none': torch prints an out-of-range uint8 target as a character
      ("Target \\x05 is out of bounds.") and raises UnicodeDecodeError instead of IndexError for bytes ≥ 128;
    - (N, C, d1, ...) input: torch's nll_loss2d reads int64 targets only and refuses uint8 ("expected scalar type
      Long but found Byte"), except in the forward of an empty target with a reduction, whose backward then fails;
    - cross_entropy with label smoothing, class weights and reduction='mean': torch gathers the weights with the
      target, and gather refuses a uint8 index.
    """
    target = kwargs["target"].values
    if target.dtype != torch.uint8:
        return False
    if kwargs.get("label_smoothing", 0) > 0 and "weight" in kwargs and kwargs["reduction"] == "mean":
        return True
    if len(input_shape) > 2:
        return target.numel() == 0 and kwargs["reduction"] != "none"
    classes = input_shape[0 if len(input_shape) == 1 else 1]
    out_of_range = (target != kwargs.get("ignore_index", -100)) & (target >= classes)
    return kwargs["reduction"] == "none" and bool(out_of_range.any())


@st.composite
def cross_entropy_calls(draw):
    dtype = draw(dtypes(FLOATING + (torch.int64,)))
    shape = loss_input_shape(draw)
    kwargs = reduction_kwargs(draw)
    kwargs["label_smoothing"] = draw(st.sampled_from((0.0, 0.0, 0.1, 1.0, 1.5)))
    if draw(st.booleans()):
        # torch computes the log-probabilities in the logits' dtype: with a wider target (float32 logits, float64
        # probabilities) its loss has the wider dtype but the narrower one's rounding errors, which the wider
        # dtype's tolerance cannot absorb. tests/test_loss.py compares those mixed dtypes at the logits' precision.
        narrower = [d for d in FLOATING if dtype == torch.int64 or torch.promote_types(dtype, d) == dtype]
        kwargs["target"] = draw(class_probability_target(shape, draw(dtypes(tuple(narrower)))))
    else:
        kwargs["ignore_index"] = draw(st.sampled_from((-100, -100, 0, 1)))
        kwargs["target"] = draw(class_index_target(shape, kwargs["ignore_index"]))
    if draw(st.booleans()):
        classes = shape[0 if len(shape) == 1 else 1]
        kwargs["weight"] = draw(tensors((classes,), dtype, layouts=("contiguous",),
                                        make=lambda s, g: torch.rand(s, generator=g, dtype=torch.float64).to(dtype)))
    assume(not torch_mishandles_byte_target(shape, kwargs))
    return Call("cross_entropy", (draw(tensors(shape, dtype)),), kwargs, **draw(call_options()))


@st.composite
def nll_loss_calls(draw):
    dtype = draw(dtypes(FLOATING + (torch.int64,)))
    shape = loss_input_shape(draw)
    kwargs = reduction_kwargs(draw)
    kwargs["ignore_index"] = draw(st.sampled_from((-100, -100, 0, 1)))
    kwargs["target"] = draw(class_index_target(shape, kwargs["ignore_index"]))
    if draw(st.booleans()):
        classes = shape[0 if len(shape) == 1 else 1]
        kwargs["weight"] = draw(tensors((classes,), dtype, differentiable=draw(st.booleans()), layouts=("contiguous",),
                                        make=lambda s, g: torch.rand(s, generator=g, dtype=torch.float64).to(dtype)))
    assume(not torch_mishandles_byte_target(shape, kwargs))
    # torch's nll_loss2d backward makes its input gradient like a 4-D input and then requires it contiguous: for a
    # channels_last or transposed input it raises "grad_input must be contiguous" (manual_conv returns the gradient).
    layouts = ("contiguous", "sliced") if len(shape) == 4 else LAYOUTS
    return Call("nll_loss", (draw(tensors(shape, dtype, layouts=layouts)),), kwargs, **draw(call_options()))


@st.composite
def mse_loss_calls(draw):
    dtype = draw(dtypes())
    shape = any_shape(draw)
    target_shape = draw(st.sampled_from((shape, shape, shape[1:], [1] * len(shape))))
    kwargs = reduction_kwargs(draw)
    if draw(st.sampled_from((False, False, True))):
        kwargs["weight"] = draw(tensors(shape, dtype))
    target_dtype = draw(dtypes((dtype,) * 3 + (torch.float64,)))
    args = (draw(tensors(shape, dtype)), draw(tensors(target_shape, target_dtype)))
    return Call("mse_loss", args, kwargs, **draw(call_options()))


# -------------------------------------------------------------------------------------------- normalization


# One or two values per normalized group: x̂ ≡ 0 or x̂ = ±1, and the input's gradient r·(ĝ − mean(ĝ) − x̂·mean(ĝ ⊙ x̂))
# is 0 up to ε (with one value γ's, Σ g ⊙ x̂, is 0 too). What torch returns there is rounding noise: its kernels get
# x̂ from fused multiply-adds, r·x − r·μ, whose residual for x = μ is not 0 (in float32 torch's own error exceeds the
# tolerance in one call in ten), and an infinite γ or gradient from above times that residual gives ±inf where
# 0·inf is NaN. Those gradients are not compared, and one value per group gets no inf/NaN in γ or from above.
DEGENERATE_GROUPS = (1, 2)


@st.composite
def layer_norm_calls(draw):
    dtype = draw(dtypes())
    shape = any_shape(draw, dims=(1, 4))
    normalized = shape[len(shape) - draw(st.integers(1, len(shape))):]
    if draw(st.sampled_from((False,) * 5 + (True,))):
        normalized = [size + 1 for size in normalized]
    kwargs = {"eps": draw(st.sampled_from((1e-5, 1e-5, 0.1)))}
    parameter_dtype = draw(st.sampled_from((dtype, dtype, torch.float32)))
    group = math.prod(normalized)
    for name in ("weight", "bias"):
        if draw(st.booleans()):
            plain = name == "weight" and group == 1
            kwargs[name] = draw(tensors(normalized, parameter_dtype, differentiable=not plain, non_finite=not plain))
    # torch's bug: with a float16/bfloat16 input, a float32 bias and no weight, its backward raises "expected scalar
    # type Half but found Float" (unless there are no rows to normalize).
    rows = math.prod(shape[:len(shape) - len(normalized)])
    assume(not (dtype in HALF_DTYPES and parameter_dtype == torch.float32 and "weight" not in kwargs
                and "bias" in kwargs and rows > 0))
    options = draw(call_options())
    options["grad_non_finite"] &= group != 1
    input = draw(tensors(shape, dtype, differentiable=group not in DEGENERATE_GROUPS))
    return Call("layer_norm", (input, normalized), kwargs, **options)


@st.composite
def batch_norm_calls(draw):
    dtype = draw(dtypes())
    channels = draw(st.integers(0, 3))
    shape = [draw(st.integers(0, 3)), channels] + [draw(st.integers(0, 3)) for _ in range(draw(st.integers(0, 2)))]
    training = draw(st.booleans())
    parameter_dtype = draw(st.sampled_from((dtype, dtype, torch.float32)))
    positive = lambda s, g: torch.rand(s, generator=g, dtype=torch.float64).add(0.5).to(parameter_dtype)  # noqa: E731
    running = draw(st.sampled_from((True, True, not training)))
    group = math.prod(shape[:1] + shape[2:])
    args = [draw(tensors(shape, dtype, differentiable=not (training and group in DEGENERATE_GROUPS)))]
    for make in (None, positive):
        args.append(draw(tensors((channels,), parameter_dtype, differentiable=False, layouts=("contiguous",),
                                 make=make, non_finite=False)) if running else None)
    kwargs = {"training": training, "momentum": draw(st.sampled_from((0.1, 0.5, 1.0))),
              "eps": draw(st.sampled_from((1e-5, 1e-5, 0.1)))}
    for name in ("weight", "bias"):
        if draw(st.booleans()):
            kwargs[name] = draw(tensors((channels,), parameter_dtype, layouts=("contiguous",)))
    return Call("batch_norm", tuple(args), kwargs, **draw(call_options()))


# ------------------------------------------------------------------------------------------------ attention


# torch's CPU attention has two kernels that disagree where inf or NaN enter: its fused (flash) kernel and its math
# path (the reference its docs give), which manual_conv follows. The fused kernel takes the row max with std::max,
# which skips a NaN score when the row is short, and so gives such a row 0 instead of NaN, and its backward sums
# δ ⊙ O per row instead of ∂L/∂P ⊙ P, so NaN and inf land elsewhere. Calls that torch runs on its fused kernel get
# finite inputs and gradients from above. The fused kernel also saves its output for the backward, so an in-place
# op on the output makes torch's backward raise (manual_conv does not need the output): no in-place op there.


def _graph_nodes(output):
    """The names of the autograd nodes behind ``output``."""
    names, stack, seen = [], [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _torch_runs_fused_attention(call):
    """Whether torch computes ``call`` with its fused CPU attention kernel somewhere (its graph holds the kernel's
    node; the query requires grad so that there is a graph)."""
    arguments = {}
    for arg in _tensor_args(call):
        tensor = arg.materialize()[1].detach()
        arguments[id(arg)] = tensor.requires_grad_(arg.requires_grad or arg is call.args[0] and
                                                   tensor.is_floating_point())
    args = [arguments.get(id(value), value) for value in call.args]
    kwargs = {key: arguments.get(id(value), value) for key, value in call.kwargs.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            output = getattr(importlib.import_module(call.reference), call.function)(*args, **kwargs)
    except Exception:  # noqa: BLE001 - a call that raises runs no kernel
        return False
    output = output[0] if isinstance(output, tuple) else output
    return any("FlashAttention" in name for name in _graph_nodes(output))


def _finite_where_torch_fuses(call):
    """Whether torch runs ``call`` on its fused attention kernel; if so, ``call`` now has finite inputs (masks keep
    their −∞), finite gradients from above and no in-place op (see above)."""
    fused = _torch_runs_fused_attention(call)
    if fused:
        masks = [value for key, value in call.kwargs.items() if key.endswith("mask")]
        for arg in _tensor_args(call):
            if arg.values.is_floating_point() and all(arg is not mask for mask in masks):
                arg.values = arg.values.nan_to_num(0.5, 2.0, -2.0)
                # The fused kernel lays its gradients out (N, L, H, E), which c10 calls channels_last when E = 1;
                # manual_conv's are contiguous, as torch's math path's.
                arg.grad_layout_compared = arg.values.shape[-1] != 1
        call.grad_non_finite, call.inplace = False, "none"
    return fused


# Mostly contiguous: torch's fused kernel runs only where the last dim of query, key and value is contiguous.
ATTENTION_LAYOUTS = ("contiguous",) * 4 + LAYOUTS


@st.composite
def attention_masks(draw, shape, dtype):
    """A mask of ``shape``: bool (True: may attend), float (added; −∞ at some positions) or, for torch's errors,
    integer; now and then a whole row masked."""
    def make(dense_shape, generator):
        allowed = torch.rand(dense_shape, generator=generator) < 0.7
        if len(dense_shape) > 1 and torch.rand((), generator=generator) < 0.3:
            allowed[..., :1, :] = False
        if not (dtype.is_floating_point or dtype.is_complex):
            return allowed.to(dtype)
        values = torch.randn(dense_shape, generator=generator, dtype=torch.float64)
        return values.masked_fill(~allowed, -math.inf).to(dtype)

    return draw(tensors(shape, dtype, differentiable=draw(st.booleans()), non_finite=False, make=make))


@st.composite
def scaled_dot_product_attention_calls(draw):
    # Half the calls are as models make them (4-D floating point, no dropout, contiguous heads), where torch runs its
    # fused kernel, the other half anything.
    model_like = draw(st.booleans())
    dtype = draw(dtypes(FLOATING if model_like else DTYPES))
    dims = 4 if model_like else draw(st.sampled_from((2, 3, 4, 4)))
    heads, features = draw(st.integers(1, 3)), draw(st.integers(0, 4))
    length, source = draw(st.integers(int(model_like), 4)), draw(st.integers(int(model_like), 4))
    value_features = features if model_like else draw(st.sampled_from((features,) * 3 + (draw(st.integers(0, 4)),)))
    query_lead = [[], [heads], [draw(st.integers(0, 2)), heads]][dims - 2]
    key_lead, value_lead = list(query_lead), list(query_lead)
    key_features, value_source = features, source
    kwargs = {}
    variant = draw(st.sampled_from(("same",) * 6 + ("one key head", "groups", "broadcast", "features", "source")))
    if variant == "one key head" and dims > 2:
        key_lead[-1] = value_lead[-1] = 1
    elif variant == "groups":
        kwargs["enable_gqa"] = True
        if dims > 2:
            query_lead[-1] = heads * draw(st.integers(1, 2))
            value_lead[-1] = draw(st.sampled_from((heads,) * 3 + (1,)))
    elif variant == "broadcast" and dims == 4:
        key_lead = value_lead = draw(st.sampled_from(([heads], [1, heads])))
    elif variant == "features":
        key_features += 1
    elif variant == "source" and dims == 2:  # only where torch's fused kernel never runs: it reads S off the value
        value_source += 1
    query = draw(tensors((*query_lead, length, features), dtype, layouts=ATTENTION_LAYOUTS))
    key = draw(tensors((*key_lead, source, key_features), dtype, layouts=ATTENTION_LAYOUTS))
    value = draw(tensors((*value_lead, value_source, value_features), dtype, layouts=ATTENTION_LAYOUTS))
    mask_kind = draw(st.sampled_from(("none",) * 3 + ("bool", "bool", "float", "float32", "integer", "few dims")))
    if mask_kind != "none":
        mask_shape = draw(st.sampled_from(([length, source], [1, source], [length, 1],
                                           [*query_lead, length, source], [*query_lead[:-1], 1, length, source])))
        if mask_kind == "few dims":  # torch's IndexError where it looks at the mask's last two dims
            mask_shape = draw(st.sampled_from(([], [source])))
        mask_dtype = {"float": dtype, "float32": torch.float32, "integer": torch.int64}.get(mask_kind, torch.bool)
        kwargs["attn_mask"] = draw(attention_masks(mask_shape, mask_dtype))
    if draw(st.sampled_from((False, False, False, True))):
        kwargs["is_causal"] = True
    kwargs["dropout_p"] = 0.0 if model_like else draw(st.sampled_from((0.0, 0.0, 0.3, 1.0, -0.5, 1.5)))
    kwargs["scale"] = draw(st.sampled_from((None,) * 5 + (0.5, -1.0, 0.0, 2)))
    call = Call("scaled_dot_product_attention", (query, key, value), kwargs, **draw(call_options()))
    fused = _finite_where_torch_fuses(call)
    # torch's bug: its fused kernel fills the causal mask's −∞ in before it scales the scores, so a scale of 0 makes
    # them −∞·0 = NaN and a negative one +∞ (its math path and manual_conv mask those keys at any scale).
    assume(not (fused and kwargs.get("is_causal") and kwargs["scale"] is not None and kwargs["scale"] <= 0))
    return call


@st.composite
def multi_head_attention_forward_calls(draw):
    # No float16/bfloat16: the function chains linear (rounded to the dtype, as torch's), attention and linear, and
    # torch rounds each step of its attention where manual_conv rounds once; the error of the whole against float64
    # is then set by how the projections condition it, and either library's can be the larger by chance.
    # tests/test_attention.py compares the two in the mean; linear's and attention's own strategies draw them.
    dtype = draw(dtypes((torch.float32,) * 3 + (torch.float64, torch.int64)))
    heads, head_dim = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    embed = heads * head_dim
    batch, length, source = draw(st.integers(0, 2)), draw(st.integers(0, 3)), draw(st.integers(0, 3))
    batched = draw(st.sampled_from((True, True, True, False)))
    lead = (lambda sequence: [sequence, batch]) if batched else (lambda sequence: [sequence])
    arrangement = draw(st.sampled_from(("self", "self", "key is value", "separate", "packed")))
    key_dim, value_dim = (draw(st.integers(1, 4)), draw(st.integers(1, 4))) if arrangement == "separate" else (
        embed, embed)
    query = draw(tensors(lead(length) + [embed], dtype))
    if arrangement == "self":  # one tensor three times: torch projects it with one product
        source, key, value = length, query, query
    else:
        key = draw(tensors(lead(source) + [key_dim], dtype))
        value = key if arrangement == "key is value" else draw(tensors(lead(source) + [value_dim], dtype))
    weight = lambda shape: draw(tensors(shape, dtype, layouts=("contiguous",)))  # noqa: E731
    has_bias = draw(st.booleans())
    args = [query, key, value, embed, heads, None if arrangement == "separate" else weight((3 * embed, embed)),
            weight((3 * embed,)) if has_bias else None]
    with_bias_kv = draw(st.sampled_from((False, False, True)))
    args += [weight((1, 1, embed)) if with_bias_kv else None, weight((1, 1, embed)) if with_bias_kv else None,
             draw(st.sampled_from((False, False, True))), draw(st.sampled_from((0.0, 0.0, 0.5, 1.0))),
             weight((embed, embed)), weight((embed,)) if has_bias else None]
    kwargs = {"training": draw(st.booleans()), "need_weights": draw(st.booleans()),
              "average_attn_weights": draw(st.booleans())}
    if arrangement == "separate":
        kwargs.update(use_separate_proj_weight=True, q_proj_weight=weight((embed, embed)),
                      k_proj_weight=weight((embed, key_dim)), v_proj_weight=weight((embed, value_dim)))
    mistake = draw(st.sampled_from((None,) * 12 + ("embed_dim", "attn_mask", "key_padding_mask", "is_causal")))
    if mistake == "embed_dim":
        args[3] += 1
    mask_dtype = draw(st.sampled_from((torch.bool, torch.bool, dtype if dtype.is_floating_point else torch.bool)))
    if draw(st.booleans()) or mistake == "key_padding_mask":
        padding_shape = [batch + (mistake == "key_padding_mask"), source] if batched else [source]
        kwargs["key_padding_mask"] = draw(attention_masks(padding_shape, mask_dtype))
    if draw(st.booleans()) or mistake == "attn_mask":
        mask_shape = draw(st.sampled_from(([length, source], [batch * heads if batched else heads, length, source])))
        mask_shape[-2] += mistake == "attn_mask"
        kwargs["attn_mask"] = draw(attention_masks(mask_shape, mask_dtype))
        kwargs["is_causal"] = draw(st.sampled_from((False, False, True)))
    elif mistake == "is_causal":
        kwargs["is_causal"] = True
    call = Call("multi_head_attention_forward", tuple(args), kwargs, **draw(call_options()))
    _finite_where_torch_fuses(call)
    return call
def _normalization_parameters(draw, channels, parameter_dtype, plain):
    """weight and bias for (C,) channels, each drawn or not; a weight of one value per group (``plain``) keeps
    inf/NaN out and takes no gradient (see DEGENERATE_GROUPS)."""
    kwargs = {}
    for name in ("weight", "bias"):
        if draw(st.booleans()):
            shape = draw(st.sampled_from(((channels,),) * 5 + ((channels + 1,),)))
            flat = name == "weight" and plain
            kwargs[name] = draw(tensors(shape, parameter_dtype, layouts=("contiguous", "sliced"),
                                        differentiable=not flat, non_finite=not flat))
    return kwargs


@st.composite
def group_norm_calls(draw):
    dtype = draw(dtypes())
    num_groups = draw(st.sampled_from((1, 1, 2, 2, 3, 0, -1)))
    per_group = draw(st.integers(0, 3))
    channels = max(num_groups, 1) * per_group + draw(st.sampled_from((0,) * 6 + (1,)))
    shape = [draw(st.integers(0, 3)), channels] + [draw(st.integers(0, 3)) for _ in range(draw(st.integers(0, 2)))]
    group = per_group * math.prod(shape[2:])
    # One value per group: y = β + the rounding residual of x·α − μ·α (α = γ/√ε, x = μ), which torch's vectorized
    # kernel and ours round differently (neither is exactly β); with ε = 1e-5, α·x is 316·γ·x and that residual
    # exceeds the tolerance (one call in a thousand). Drawn with ε = 0.1 there, where it is far below.
    kwargs = {"eps": draw(st.sampled_from((1e-5, 1e-5, 0.1) if group != 1 else (0.1,)))}
    parameter_dtype = draw(st.sampled_from((dtype, dtype, torch.float32)))
    kwargs.update(_normalization_parameters(draw, channels, parameter_dtype, group == 1))
    # torch's bug: with a float16/bfloat16 input, a float32 bias and no weight, its backward raises "expected scalar
    # type Float but found BFloat16" (it allocates the bias's gradient in the input's dtype).
    assume(not (dtype in HALF_DTYPES and parameter_dtype == torch.float32 and "weight" not in kwargs
                and "bias" in kwargs and shape[0] > 0))
    options = draw(call_options())
    options["grad_non_finite"] &= group != 1
    input = draw(tensors(shape, dtype, differentiable=group not in DEGENERATE_GROUPS))
    return Call("group_norm", (input, num_groups), kwargs, **options)


@st.composite
def instance_norm_calls(draw):
    dtype = draw(dtypes())
    channels = draw(st.integers(0, 3))
    shape = [draw(st.integers(0, 3)), channels] + [draw(st.integers(0, 3)) for _ in range(draw(st.integers(0, 2)))]
    if draw(st.sampled_from((False,) * 9 + (True,))):
        shape = shape[:draw(st.integers(0, 1))]
    use_input_stats = draw(st.booleans())
    plane = math.prod(shape[2:])
    kwargs = {"use_input_stats": use_input_stats, "momentum": draw(st.sampled_from((0.1, 0.5, 1.0))),
              "eps": draw(st.sampled_from((1e-5, 1e-5, 0.1)))}
    parameter_dtype = draw(st.sampled_from((dtype, dtype, torch.float32)))
    kwargs.update(_normalization_parameters(draw, channels, parameter_dtype, plain=False))
    # The running statistics take part in the weight's dtype (else the input's), whatever their own. Not drawn more
    # precise than that: they come back with its precision (torch rounds them otherwise than manual_conv, by an ulp
    # of the coarser dtype, far beyond their own dtype's tolerance).
    statistics = draw(st.sampled_from(("both",) * 4 + ("none", "mean only")))
    computed_in = parameter_dtype if "weight" in kwargs else dtype
    statistics_dtype = draw(st.sampled_from((parameter_dtype,) * 3 + (torch.float64, torch.bfloat16)))
    if statistics_dtype.is_floating_point and computed_in.is_floating_point:
        assume(torch.finfo(statistics_dtype).eps >= torch.finfo(computed_in).eps)
    positive = lambda s, g: torch.rand(s, generator=g, dtype=torch.float64).add(0.5).to(statistics_dtype)  # noqa: E731
    for name, make in (("running_mean", None), ("running_var", positive)):
        if statistics == "both" or statistics == "mean only" and name == "running_mean":
            kwargs[name] = draw(tensors((channels,), statistics_dtype, differentiable=False, layouts=("contiguous",),
                                        make=make, non_finite=False))
    # torch's bug, not copied: for an empty batch it sets the running statistics to the mean of no repeats, NaN
    # (manual_conv leaves them as they are, as batch_norm does for an empty batch).
    assume(not (shape[:1] == [0] and "running_mean" in kwargs))
    degenerate = use_input_stats and plane in DEGENERATE_GROUPS
    options = draw(call_options())
    # torch's bug: for a batch of one 4-D sample and a channels_last gradient from above, its input, weight and bias
    # gradients are wrong, in training and evaluation (off by the gradient's size; its own autograd through the
    # formula agrees with manual_conv: tests/test_norm.py).
    assume(not (len(shape) == 4 and shape[0] == 1 and options["grad_layout"] == "channels_last"))
    return Call("instance_norm", (draw(tensors(shape, dtype, differentiable=not degenerate)),), kwargs, **options)


@st.composite
def normalize_calls(draw):
    dtype = draw(dtypes())
    shape = any_shape(draw)
    ndim = len(shape)
    kwargs = {"p": draw(st.sampled_from((2.0, 2.0, 2, 1.0, 0, 3.0, 1.5, 0.5, -1.0, math.inf, -math.inf, "fro")))}
    dim = draw(st.one_of(st.integers(-ndim - 1, ndim), st.none(), st.lists(st.integers(-ndim, max(ndim - 1, 0)),
                                                                             min_size=1, max_size=2).map(tuple)))
    if dim != 1 or draw(st.booleans()):
        kwargs["dim"] = dim
    kwargs["eps"] = draw(st.sampled_from((1e-12, 1e-12, 0.5)))
    # torch's float16 artefact: its backward for a finite p < 1 (p ≠ 0) raises |x| to the power p − 2 in float16,
    # which overflows to inf for small |x| (|x|⁻³ > 65504 for |x| < 0.025 at p = −1) where the gradient is finite;
    # manual_conv computes in float32 and rounds once (one call in 500).
    assume(not (dtype == torch.float16 and kwargs["p"] in (0.5, -1.0)))
    # A slice of one element (p ≠ 0) is normalized to sgn(x) where |x| ≥ ε: its gradient is 0 up to rounding, which
    # is what torch returns there (in float16 the two terms of g/d − g·x²/d³ cancel to 0 or not, by chance). Not
    # compared, as DEGENERATE_GROUPS.
    reduced = range(ndim) if dim is None else [dim] if isinstance(dim, int) else dim
    one_element = all(-ndim <= d < max(ndim, 1) for d in reduced) and math.prod(
        shape[d] for d in reduced if ndim) == 1 and kwargs["p"] != 0
    input = draw(tensors(shape, dtype, differentiable=not one_element))
    if draw(st.sampled_from((False,) * 9 + (True,))):
        kwargs["out"] = draw(tensors(shape, draw(dtypes((dtype, dtype, torch.float64))), differentiable=False,
                                     layouts=("contiguous",), non_finite=False))
    return Call("normalize", (input,), kwargs, **draw(call_options()))


# ------------------------------------------------------------------------------------------- stochastic depth


@st.composite
def stochastic_depth_calls(draw):
    args = (draw(tensors(any_shape(draw), draw(dtypes()))), draw(st.sampled_from((0.2, 0.5, 0.5, 1.0, 0.0, 1.5))),
            draw(st.sampled_from(("row", "row", "batch", "col"))))
    kwargs = {"training": draw(st.booleans())} if draw(st.booleans()) else {}
    return Call("stochastic_depth", args, kwargs, **draw(call_options()), reference="torchvision.ops")


# ---------------------------------------------------------------------------------------------------- tests

CALLS = {
    "conv2d": conv2d_calls(),
    "conv_transpose2d": conv_transpose2d_calls(),
    "max_pool2d": max_pool2d_calls(),
    "avg_pool2d": avg_pool2d_calls(),
    "adaptive_avg_pool2d": adaptive_avg_pool2d_calls(),
    "adaptive_max_pool2d": adaptive_max_pool2d_calls("adaptive_max_pool2d"),
    "adaptive_max_pool2d_with_indices": adaptive_max_pool2d_calls("adaptive_max_pool2d_with_indices"),
    "relu": relu_calls(),
    "relu_": elementwise_calls("relu_"),
    "sigmoid": elementwise_calls("sigmoid"),
    "tanh": elementwise_calls("tanh"),
    "gelu": gelu_calls(),
    "relu6": activation_calls("relu6"),
    "hardtanh": hardtanh_calls("hardtanh"),
    "hardtanh_": hardtanh_calls("hardtanh_"),
    "leaky_relu": activation_calls("leaky_relu", negative_slope=NEGATIVE_SLOPES),
    "leaky_relu_": activation_calls("leaky_relu_", takes_inplace=False, negative_slope=NEGATIVE_SLOPES),
    "elu": activation_calls("elu", alpha=ELU_ALPHAS),
    "elu_": activation_calls("elu_", takes_inplace=False, alpha=ELU_ALPHAS, scale=ELU_SCALES,
                             input_scale=ELU_SCALES),
    "silu": activation_calls("silu"),
    "mish": activation_calls("mish"),
    "hardswish": activation_calls("hardswish"),
    "hardsigmoid": activation_calls("hardsigmoid"),
    "softplus": activation_calls("softplus", takes_inplace=False, beta=st.sampled_from((1, 1, 2.0, 0.5, -1.0, 0)),
                                 threshold=st.sampled_from((20, 20, 1.0, 0, -1.5, "20"))),
    "softmax": softmax_calls("softmax"),
    "log_softmax": softmax_calls("log_softmax"),
    "linear": linear_calls(),
    "dropout": dropout_calls(),
    "cross_entropy": cross_entropy_calls(),
    "nll_loss": nll_loss_calls(),
    "mse_loss": mse_loss_calls(),
    "layer_norm": layer_norm_calls(),
    "batch_norm": batch_norm_calls(),
    "scaled_dot_product_attention": scaled_dot_product_attention_calls(),
    "multi_head_attention_forward": multi_head_attention_forward_calls(),
    "group_norm": group_norm_calls(),
    "instance_norm": instance_norm_calls(),
    "normalize": normalize_calls(),
    "stochastic_depth": stochastic_depth_calls(),
}


def test_every_public_function_is_drawn():
    """A function added to manual_conv.functional without a strategy here fails this test."""
    ours = {name for name, value in vars(mF).items() if callable(value) and not name.startswith("_")
            and getattr(value, "__module__", None) == mF.__name__}
    assert ours == set(CALLS)


@pytest.mark.parametrize("function", CALLS)
@settings(max_examples=60)
@given(data=st.data())
def test_matches_torch(backend, function, data):
    check(data.draw(CALLS[function], label=function), backend)
