"""Autocast: under torch.autocast every public function of manual_conv.functional follows torch's policy for the
native op (manual_conv.autocast): the output and gradient dtypes are native's, on CPU under bfloat16 and float16 (and
on CUDA under float16 where there is a GPU), with float32 arguments and with a network's mixed ones (lower-precision
activations, float32 parameters), and the values are as close to float32 as native's. Backward and jvp run in the
forward's dtypes when called inside the autocast region. The MNIST network trains a step under autocast."""
import sys
from pathlib import Path

import pytest
import torch

import manual_conv
import manual_conv.functional as mF
from manual_conv import autocast
from manual_conv.ops._utils import Function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from autocast_cases import CASES, RANDOM, native, tensors  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = sorted(name for name, value in vars(mF).items() if callable(value) and not name.startswith("_")
                and getattr(value, "__module__", None) == mF.__name__)
CALLS = [(name, index) for name in sorted(CASES) for index in range(len(CASES[name]))]


def test_every_public_function_has_a_policy_on_both_devices_and_a_case():
    """A function added to manual_conv.functional without a row in autocast.POLICIES (or a case here) fails."""
    assert set(PUBLIC) <= set(autocast.POLICIES)
    assert all(set(devices) == set(autocast.DEVICES) for devices in autocast.POLICIES.values())
    assert set(CASES) == set(PUBLIC)
    steps = set(autocast.POLICIES) - set(PUBLIC)
    assert all(name.startswith("_") and callable(getattr(mF, name)) for name in steps)


def _outputs(result):
    return [result] if isinstance(result, torch.Tensor) else [value for value in result if value is not None]


def _run(function, call, leaves, device, dtype, seed):
    """(outputs, gradients of the leaves) of call(function, *leaves) under autocast to ``dtype`` (None: without),
    backward inside the region too; or the exception."""
    try:
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            torch.manual_seed(seed)
            outputs = _outputs(call(function, *leaves))
            generator = torch.Generator().manual_seed(seed)
            loss = sum((output.float() * torch.randn(output.shape, generator=generator).to(device)).sum()
                       for output in outputs if output.is_floating_point())
            gradients = torch.autograd.grad(loss, leaves, allow_unused=True)
        return outputs, gradients
    except Exception as error:  # noqa: BLE001 (compared with native's)
        return error, None


def _error(tensor, reference):
    return (tensor.double() - reference.double()).abs().max().item() if tensor.numel() else 0.0


def _check_close_as_native(ours, theirs, reference, what):
    """Ours no further from the float32 reference than twice native's distance, or than a few ulps of the dtype: 2
    in float16/bfloat16 (the rounding of a result computed in float32), 32 in float32 (sums in another order)."""
    if not ours.is_floating_point():
        assert torch.equal(ours, theirs), what
        return
    scale = 1 + (reference.abs().max().item() if reference.numel() else 0.0)
    ulps = 32 if ours.dtype == torch.float32 else 2
    bound = 2 * _error(theirs, reference) + ulps * torch.finfo(ours.dtype).eps * scale
    assert _error(ours, reference) <= bound, f"{what}: {_error(ours, reference)} > {bound}"


def check_as_native(name, index, device, autocast_dtype, activation_dtype):
    label, spec, call = CASES[name][index]
    ours_leaves = tensors(spec, activation_dtype, autocast_dtype, device)
    native_leaves = tensors(spec, activation_dtype, autocast_dtype, device)
    ours, our_gradients = _run(getattr(mF, name), call, ours_leaves, device, autocast_dtype, seed=0)
    theirs, their_gradients = _run(native(name), call, native_leaves, device, autocast_dtype, seed=0)
    what = f"{name} ({label}), {activation_dtype} activations"
    if isinstance(theirs, Exception):
        assert type(ours) is type(theirs), f"{what}: native raised {theirs!r}, ours gave {ours!r}"
        return
    assert not isinstance(ours, Exception), f"{what}: {ours!r}"
    assert [output.dtype for output in ours] == [output.dtype for output in theirs], what
    assert [None if g is None else g.dtype for g in our_gradients] == [
        None if g is None else g.dtype for g in their_gradients], what
    reference_leaves = tensors(spec, torch.float32, autocast_dtype, device)
    reference, reference_gradients = _run(native(name), call, reference_leaves, device, None, seed=0)
    if name in RANDOM:  # the same draws only where the dtypes agree
        return
    for position, (our, their, ref) in enumerate(zip(ours, theirs, reference)):
        _check_close_as_native(our, their, ref, f"{what}, output {position}")
    for position, (our, their, ref) in enumerate(zip(our_gradients, their_gradients, reference_gradients)):
        if our is not None:
            _check_close_as_native(our, their, ref, f"{what}, gradient {position}")


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("name, index", CALLS, ids=[f"{name}-{index}" for name, index in CALLS])
def test_cpu_dtypes_and_values_are_natives(backend, name, index, autocast_dtype):
    for activation_dtype in (torch.float32, autocast_dtype):
        check_as_native(name, index, "cpu", autocast_dtype, activation_dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("name, index", CALLS, ids=[f"{name}-{index}" for name, index in CALLS])
def test_cuda_dtypes_and_values_are_natives(name, index):
    with manual_conv.use_backend("python"):
        for activation_dtype in (torch.float32, torch.float16):
            check_as_native(name, index, "cuda", torch.float16, activation_dtype)


class _Scale(Function):
    """y = 3x, recording whether autocast was on where backward and jvp ran; its product with a weight goes
    through matmul, which autocast would cast to the lower precision."""
    generate_vmap_rule = True
    seen = []

    @staticmethod
    def forward(x, w):
        return x @ w

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        _Scale.seen.append(("backward", torch.is_autocast_enabled("cpu")))
        x, w = ctx.saved_tensors
        return grad @ w.T, x.T @ grad

    @staticmethod
    def jvp(ctx, x_dot, w_dot):
        _Scale.seen.append(("jvp", torch.is_autocast_enabled("cpu")))
        x, w = ctx.saved_tensors
        return x_dot @ w + x @ w_dot


def test_backward_and_jvp_run_in_the_forwards_dtypes_inside_an_autocast_region():
    x, w = torch.randn(2, 3, requires_grad=True), torch.randn(3, 3, requires_grad=True)
    _Scale.seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", enabled=False):
            y = _Scale.apply(x, w)
        grad_x, grad_w = torch.autograd.grad(y.sum(), (x, w))
        _, tangent = torch.func.jvp(_Scale.apply, (x.detach(), w.detach()), (torch.ones(2, 3), torch.ones(3, 3)))
    assert _Scale.seen == [("backward", False), ("jvp", False)]
    assert y.dtype == grad_x.dtype == grad_w.dtype == tangent.dtype == torch.float32
    torch.testing.assert_close(grad_w, x.T @ torch.ones(2, 3))
    torch.testing.assert_close(tangent, torch.ones(2, 3) @ w + x @ torch.ones(3, 3))
    # the wrapped staticmethods are where torch.func looks for them, next to the vmap rule
    assert _Scale.__dict__["jvp"].rule.__name__ == "jvp" and _Scale.__dict__["jvp"].rule.__wrapped__
    xs = torch.randn(4, 2, 3)
    torch.testing.assert_close(torch.func.vmap(_Scale.apply, in_dims=(0, None))(xs, w), xs @ w)


def test_native_backward_inside_an_autocast_region_is_what_ours_copies():
    """The behaviour ours follows: native conv's weight gradient, backward called inside the region, keeps the
    forward's dtypes (bfloat16 product, float32 gradient of the float32 weight)."""
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for conv in (torch.nn.functional.conv2d, mF.conv2d):
            output = conv(x, w)
            assert output.dtype == torch.bfloat16
            assert torch.autograd.grad(output.float().sum(), w)[0].dtype == torch.float32


@pytest.mark.usefixtures("single_thread")
def test_mnist_network_trains_a_step_under_autocast_as_native(backend):
    sys.path.insert(0, str(ROOT))
    import train_mnist

    images, labels = torch.randn(4, 1, 28, 28), torch.tensor([3, 1, 4, 1])
    results = {}
    for impl in ("manual", "native"):
        torch.manual_seed(0)
        layers = train_mnist.layer_library(impl)
        model = train_mnist.Net(layers)
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(1)
            logits = model(images)
            loss = layers.CrossEntropyLoss()(logits, labels)
        loss.backward()
        gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
        optimizer.step()
        results[impl] = logits, loss, gradients
    (logits, loss, gradients), (native_logits, native_loss, native_gradients) = results["manual"], results["native"]
    assert logits.dtype == native_logits.dtype == torch.bfloat16
    assert loss.dtype == native_loss.dtype == torch.float32
    torch.testing.assert_close(loss, native_loss, rtol=2e-2, atol=0)
    for name, gradient in gradients.items():
        assert gradient.dtype == torch.float32
        torch.testing.assert_close(gradient, native_gradients[name], rtol=0.1, atol=2e-2 * gradient.abs().max(),
                                   msg=name)


@pytest.mark.usefixtures("single_thread")
def test_cudas_policies_applied_on_cpu(monkeypatch):
    """CUDA's rows (no GPU here) exercised on CPU tensors: softmax gets dtype=float32 unless a dtype is given (also
    positionally), the FP32 rows compute in float32, and normalize's out= is written, never cast."""
    for name, devices in autocast.POLICIES.items():
        monkeypatch.setitem(devices, "cpu", devices["cuda"])
    x = torch.randn(2, 4, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mF.softmax(x, 1).dtype == mF.log_softmax(input=x, dim=1).dtype == torch.float32
        assert mF.softmax(x, 1, 3, torch.float64).dtype == torch.float64
        assert mF.softmax(x.double(), 1).dtype == torch.float64  # not eligible: as given
        for output in (mF.softplus(x), mF.layer_norm(x, (3,)), mF.group_norm(x, 2), mF.normalize(x),
                       mF.cross_entropy(x.flatten(1), torch.tensor([0, 1])), mF.mse_loss(x, x.detach() + 1,
                                                                                        weight=torch.ones_like(x))):
            assert output.dtype == torch.float32
        assert mF.conv2d(x, torch.randn(2, 4, 1, 1)).dtype == torch.bfloat16
        out = torch.empty(2, 4, 3, 3, dtype=torch.bfloat16)
        assert mF.normalize(x.detach(), 2.0, 1, 1e-12, out) is out
        assert mF.normalize(x.detach(), out=out) is out
        (gradient,) = torch.autograd.grad(mF.layer_norm(x, (3,)).sum(), x)
    torch.testing.assert_close(out, torch.nn.functional.normalize(x.detach().float()).bfloat16())
    assert gradient.dtype == torch.bfloat16
