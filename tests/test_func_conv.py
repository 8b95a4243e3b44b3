"""torch.func on the conv family (conv2d, conv_transpose2d and the two gradient maps their backwards are made of):
forward-mode AD by the hand-derived jvp, vmap by the folds of manual_conv/ops/conv_vmap.py, double derivatives
(forward-over-reverse, reverse-over-reverse), per-sample gradients, on both backends; the compiled ops' vmap rules
(im2col and Winograd); and proof that the transforms run through our rules."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

import manual_conv
import manual_conv.functional as mF
import manual_conv.nn as mnn
from manual_conv.ops import conv as conv_ops
from manual_conv.ops._utils import jvp_rule
from manual_conv.ops.conv import (Conv2dBiasGradFunction, Conv2dFunction, Conv2dWeightGradFunction,
                                  ConvTranspose2dFunction)
from transforms import check_derivatives, check_vmap, looped_per_sample_gradients, per_sample_gradients

pytestmark = pytest.mark.usefixtures("single_thread")

TRANSFORM_CASES = {"conv2d": "CONV2D_CASES", "conv_transpose2d": "TRANSPOSED_CASES"}


def tensors(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


# (input, weight, bias or None) shapes and keyword arguments: each variant changes the formula or its fold.
CONV2D_CASES = {
    "plain": ((2, 2, 4, 4), (3, 2, 2, 2), (3,), {}),
    "no-bias": ((2, 2, 4, 4), (3, 2, 2, 2), None, {}),
    "stride-padding-dilation": ((2, 2, 5, 5), (2, 2, 2, 2), (2,), {"stride": 2, "padding": 1, "dilation": 2}),
    "groups": ((2, 2, 4, 4), (2, 1, 3, 3), (2,), {"groups": 2, "padding": (1, 0)}),
    "same-even-kernel": ((2, 1, 4, 3), (2, 1, 2, 2), (2,), {"padding": "same"}),
    "unbatched": ((2, 4, 4), (2, 2, 3, 3), (2,), {"padding": 1}),
}
TRANSPOSED_CASES = {
    "plain": ((2, 2, 3, 3), (2, 3, 2, 2), (3,), {}),
    "stride-output-padding": ((2, 2, 3, 3), (2, 2, 3, 3), (2,), {"stride": 2, "padding": 1, "output_padding": 1}),
    # output_padding reaches past the stride (below the dilation): the backward keeps conv2d's first rows
    "output-padding-past-stride": ((2, 2, 3, 3), (2, 2, 2, 2), None, {"dilation": 2, "output_padding": 1}),
    "groups-no-bias": ((2, 2, 3, 3), (2, 1, 2, 3), None, {"groups": 2, "stride": (1, 2)}),
    "unbatched": ((2, 3, 3), (2, 2, 2, 2), (2,), {"stride": 2}),
}


def call(name, case):
    """(function of the tensors, tensors) for one case."""
    cases = CONV2D_CASES if name == "conv2d" else TRANSPOSED_CASES
    input_shape, weight_shape, bias_shape, kwargs = cases[case]
    shapes = [input_shape, weight_shape] + ([bias_shape] if bias_shape else [])
    function = getattr(mF, name)
    if bias_shape:
        return (lambda x, w, b: function(x, w, b, **kwargs)), tensors(*shapes)
    return (lambda x, w: function(x, w, **kwargs)), tensors(*shapes)


ALL_CASES = [("conv2d", case) for case in CONV2D_CASES] + [("conv_transpose2d", case) for case in TRANSPOSED_CASES]
# gradcheck and gradgradcheck take seconds a case on 'python': the cases whose jvp or fold differs (with and without
# a bias, groups, the first rows of output_padding past the stride); vmap, cheap, runs on all of them
DERIVATIVE_CASES = [("conv2d", "plain"), ("conv2d", "groups"), ("conv2d", "stride-padding-dilation"),
                    ("conv_transpose2d", "stride-output-padding"), ("conv_transpose2d", "output-padding-past-stride"),
                    ("conv_transpose2d", "groups-no-bias")]


@pytest.mark.parametrize("name, case", DERIVATIVE_CASES)
def test_derivatives(backend, name, case):
    """gradcheck forward and reverse, batched both ways; gradgradcheck forward-over-reverse and reverse-over-reverse."""
    function, args = call(name, case)
    check_derivatives(function, *args)


@pytest.mark.parametrize("name, case", ALL_CASES)
def test_vmap_equals_loop(backend, name, case):
    """Every subset of (input, weight, bias) batched, at random dims: the folds into N and into the groups."""
    function, args = call(name, case)
    check_vmap(function, *args)


# The two gradient maps are Functions of their own (the backwards call them): the same checks, called directly.
GRADIENT_MAP_ARGS = ((2, 1), (1, 1), (1, 2), 2)  # stride, padding, dilation, groups


def weight_grad(input, grad_output):
    return Conv2dWeightGradFunction.apply(input, grad_output, (2, 1, 2, 2), *GRADIENT_MAP_ARGS)


def test_weight_grad_map(backend):
    # δ as conv2d's: (5 + 2 − 1 − 1)//2 + 1 = 3 rows, 4 + 2 − 2 − 1 + 1 = 3 columns
    input, grad_output = tensors((2, 2, 5, 4), (2, 2, 3, 3))
    check_derivatives(weight_grad, input, grad_output)
    check_vmap(weight_grad, input, grad_output)


def test_bias_grad_map(backend):
    (grad_output,) = tensors((2, 3, 2, 3))
    check_derivatives(Conv2dBiasGradFunction.apply, grad_output)
    check_vmap(Conv2dBiasGradFunction.apply, grad_output)


# ------------------------------------------------------------------------------------ against torch's natives

def conv_loss(conv, x, w, b):
    return conv(x, w, b, stride=2, padding=1).tanh().sum()


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "jacrev", "hessian", "grad"])
def test_transforms_equal_native(backend, transform):
    """torch.func.jvp, jacfwd, jacrev, hessian and grad of a conv (and of a transposed conv) equal torch's own."""
    x, w, b, x_tangent, w_tangent, b_tangent = tensors((2, 2, 4, 4), (3, 2, 3, 3), (3,), (2, 2, 4, 4), (3, 2, 3, 3),
                                                        (3,))
    xt, wt, bt = tensors((2, 3, 2, 2), (3, 2, 2, 2), (2,), seed=1)

    def results(conv, conv_transpose):
        def conv_call(x, w, b):
            return conv(x, w, b, stride=2, padding=1)

        def transposed_call(x, w, b):
            return conv_transpose(x, w, b, stride=2, output_padding=1)

        def loss(x, w, b):
            return conv_call(x, w, b).tanh().sum() + transposed_call(xt, w[:, :2, :2, :2], b[:2]).sin().sum()

        if transform == "jvp":
            return (torch.func.jvp(conv_call, (x, w, b), (x_tangent, w_tangent, b_tangent)),
                    torch.func.jvp(transposed_call, (xt, wt, bt), (xt.cos(), wt.cos(), bt.cos())))
        if transform == "jacfwd":
            return torch.func.jacfwd(conv_call, argnums=(0, 1, 2))(x, w, b), torch.func.jacfwd(
                transposed_call, argnums=(0, 1, 2))(xt, wt, bt)
        if transform == "jacrev":
            return torch.func.jacrev(conv_call, argnums=(0, 1, 2))(x, w, b), torch.func.jacrev(
                transposed_call, argnums=(0, 1, 2))(xt, wt, bt)
        if transform == "hessian":
            return torch.func.hessian(loss, argnums=(0, 1, 2))(x, w, b)
        return torch.func.grad(loss, argnums=(0, 1, 2))(x, w, b)

    torch.testing.assert_close(results(mF.conv2d, mF.conv_transpose2d), results(F.conv2d, F.conv_transpose2d))


def test_per_sample_gradients_equal_loop(backend):
    """vmap(grad) of one sample's loss, through conv, grouped conv and transposed conv, equals a loop of backward
    passes over single samples: the weight gradient's fold into B·g groups."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(mnn.Conv2d(2, 4, 3, padding=1), torch.nn.Tanh(), mnn.Conv2d(4, 4, 2, groups=2),
                                mnn.ConvTranspose2d(4, 2, 2, stride=2, groups=2)).double()
    inputs, targets = tensors((3, 2, 4, 4), (3, 2, 6, 6))

    def loss(output, target):
        return (output * target).sum()

    expected = looped_per_sample_gradients(model, loss, inputs, targets)
    actual = per_sample_gradients(model, loss, inputs, targets)
    torch.testing.assert_close(actual, expected)


def test_per_sample_gradients_of_channels_last_samples(backend):
    """vmap(grad) over channels_last samples (a channels_last model, or ConvNeXt's permutes): the backward lays
    nothing out under vmap, which has no channels_last copy."""
    conv_weight, transposed_weight, x = tensors((4, 3, 3, 3), (3, 4, 3, 3), (4, 3, 5, 5))
    x = x.contiguous(memory_format=torch.channels_last).unflatten(0, (2, 2))
    for w, conv, native in ((conv_weight, mF.conv2d, F.conv2d),
                            (transposed_weight, mF.conv_transpose2d, F.conv_transpose2d)):
        for argnums in (0, 1):
            def per_sample(conv):
                return torch.func.vmap(torch.func.grad(lambda w, x: conv(x, w).square().sum(), argnums),
                                       in_dims=(None, 0))(w, x)
            torch.testing.assert_close(per_sample(conv), per_sample(native))


def test_channels_last_and_complex(backend):
    """The jvp's tangent is laid out as torch's (channels_last here); complex tensors: the jvp has no conjugates
    (the maps are complex-bilinear), the per-sample gradients of a real loss the backward's conjugates."""
    x, w, x_tangent, w_tangent = tensors((2, 3, 5, 5), (2, 3, 3, 3), (2, 3, 5, 5), (2, 3, 3, 3))
    x, x_tangent = (tensor.to(memory_format=torch.channels_last) for tensor in (x, x_tangent))
    ours = torch.func.jvp(lambda x, w: mF.conv2d(x, w, stride=2), (x, w), (x_tangent, w_tangent))
    native = torch.func.jvp(lambda x, w: F.conv2d(x, w, stride=2), (x, w), (x_tangent, w_tangent))
    torch.testing.assert_close(ours, native)
    assert ours[1].stride() == native[1].stride()

    x, w = (torch.complex(tensor, tensor.flip(0)) for tensor in (x.contiguous(), w))
    ours = torch.func.jvp(lambda x, w: mF.conv2d(x, w), (x, w), (x.conj(), w * 1j))
    native = torch.func.jvp(lambda x, w: F.conv2d(x, w), (x, w), (x.conj(), w * 1j))
    torch.testing.assert_close(ours, native)

    def per_sample(conv):
        return torch.func.vmap(torch.func.grad(lambda w, x: conv(x[None], w).abs().sum()), (None, 0))(w, x)

    torch.testing.assert_close(per_sample(mF.conv2d), per_sample(F.conv2d))


# ------------------------------------------------------------------------------------ through our own rules

class Counting:
    """Wraps a Function's staticmethod, counting its calls."""

    def __init__(self, monkeypatch, function, name):
        self.calls = 0
        original = getattr(function, name)

        def counted(*args):
            self.calls += 1
            return original(*args)

        monkeypatch.setattr(function, name, staticmethod(counted))


def test_transforms_run_through_our_rules(backend, monkeypatch):
    """jvp runs Conv2dFunction.jvp; vmap runs the vmap rules; a per-sample gradient runs the weight gradient's."""
    x, w, b = tensors((2, 2, 4, 4), (3, 2, 3, 3), (3,))
    jvp = Counting(monkeypatch, Conv2dFunction, "jvp")
    functions = (Conv2dFunction, ConvTranspose2dFunction, Conv2dWeightGradFunction, Conv2dBiasGradFunction)
    vmaps = {function: Counting(monkeypatch, function, "vmap") for function in functions}
    torch.func.jvp(lambda x: mF.conv2d(x, w, b), (x,), (x,))
    assert jvp.calls == 1
    torch.func.vmap(lambda w: mF.conv2d(x, w, b))(w.unsqueeze(0))
    assert vmaps[Conv2dFunction].calls == 1

    def loss(w, b, x):
        return mF.conv2d(x.unsqueeze(0), w, b).square().sum()

    torch.func.vmap(torch.func.grad(loss, argnums=(0, 1, 2)), in_dims=(None, None, 0))(w, b, x)
    assert all(vmaps[function].calls for function in functions[1:])


def test_a_wrong_jvp_fails_gradcheck(backend, monkeypatch):
    """Control: gradcheck's forward-mode check does see the jvp."""
    monkeypatch.setattr(Conv2dFunction, "jvp", staticmethod(lambda ctx, *tangents: torch.zeros(ctx.output_shape,
                                                                                                dtype=torch.float64)))
    x, w = (tensor.requires_grad_() for tensor in tensors((1, 1, 3, 3), (1, 1, 2, 2)))
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(mF.conv2d, (x, w), check_forward_ad=True, check_backward_ad=False,
                                 check_undefined_grad=False)


def test_backward_on_cpp_is_made_of_functions(monkeypatch):
    """On 'cpp' (eager) the backward calls the Functions, whose jvp makes forward-over-reverse work; while
    torch.compile traces it calls the compiled ops, and the Functions' jvp reads as torch's placeholder, which
    Dynamo accepts (test_conv_cpp and test_winograd: fullgraph training steps)."""
    with manual_conv.use_backend("cpp"):
        assert conv_ops.differentiable_maps() is conv_ops._FUNCTION_MAPS
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert conv_ops.differentiable_maps().conv2d.func is conv_ops._in_opmath
    for function in (Conv2dFunction, ConvTranspose2dFunction, Conv2dWeightGradFunction, Conv2dBiasGradFunction):
        assert isinstance(vars(function)["jvp"], jvp_rule)


# ------------------------------------------------------------------------------------ the compiled ops

ops = torch.ops.manual_conv


@pytest.mark.skipif(not manual_conv.extension_available(), reason="the compiled extension is not built")
@pytest.mark.parametrize("prefix", ["", "winograd_"])
def test_compiled_ops_vmap_equals_loop(prefix):
    """The ops' register_vmap rules: no loop fallback (its warning would be an error), values equal a loop; a
    Winograd op folded into groups runs the im2col op."""
    args = ([1, 1], [1, 1], [1, 1], 1)
    x, w, b = tensors((2, 2, 4, 4), (3, 2, 3, 3), (3,))
    y = ops.conv2d(x, w, b, *args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_vmap(lambda x, w, b: getattr(ops, prefix + "conv2d")(x, w, b, *args), x, w, b)
        check_vmap(lambda y, w: getattr(ops, prefix + "conv2d_input_grad")(y, w, list(x.shape), *args), y, w)
        check_vmap(lambda x, y: getattr(ops, prefix + "conv2d_weight_grad")(x, y, list(w.shape), *args), x, y)
        if not prefix:
            check_vmap(ops.conv2d_bias_grad, y)
