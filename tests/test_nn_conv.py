"""manual_conv.nn.Conv2d / ConvTranspose2d as drop-in replacements of torch.nn's: the same repr, parameters,
state_dict and initialisation, state dicts that load both ways, every padding_mode, forward(output_size=...),
and the same outputs and gradients, computed by our Functions."""
import pytest
import torch

import manual_conv.nn as mnn

pytestmark = pytest.mark.usefixtures("single_thread")

# Constructor arguments: (in_channels, out_channels, kernel_size) and keywords.
CONV2D_ARGUMENTS = {
    "defaults": ((4, 6, 3), {}),
    "everything": ((4, 6, (3, 2)), {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2), "groups": 2}),
    "no-bias": ((4, 6, 3), {"bias": False}),
    "padding-same-even-kernel": ((4, 6, (2, 4)), {"padding": "same", "dilation": (3, 1)}),
    "padding-valid": ((4, 6, 3), {"padding": "valid"}),
    "depthwise": ((4, 4, 3), {"groups": 4, "padding": 1}),
    "reflect": ((4, 6, 3), {"padding": 1, "padding_mode": "reflect"}),
    "replicate": ((4, 6, 3), {"padding": (2, 1), "padding_mode": "replicate", "stride": 2}),
    "circular": ((4, 6, (3, 2)), {"padding": (1, 2), "padding_mode": "circular", "groups": 2}),
    "reflect-same": ((4, 6, (2, 3)), {"padding": "same", "padding_mode": "reflect"}),
    "circular-same-dilated": ((4, 6, 3), {"padding": "same", "padding_mode": "circular", "dilation": 2}),
}
CONV_TRANSPOSE2D_ARGUMENTS = {
    "defaults": ((4, 6, 3), {}),
    "everything": ((4, 6, (3, 2)), {"stride": (2, 3), "padding": (1, 0), "output_padding": (1, 2), "groups": 2,
                                    "dilation": (1, 2)}),
    "no-bias": ((4, 6, 3), {"bias": False, "stride": 2}),
    "output-padding-below-dilation": ((4, 6, 3), {"dilation": 2, "output_padding": 1}),
}
MODULES = [(mnn.Conv2d, torch.nn.Conv2d, arguments) for arguments in CONV2D_ARGUMENTS.values()] + [
    (mnn.ConvTranspose2d, torch.nn.ConvTranspose2d, arguments) for arguments in CONV_TRANSPOSE2D_ARGUMENTS.values()
]
MODULE_IDS = [f"Conv2d-{name}" for name in CONV2D_ARGUMENTS] + [
    f"ConvTranspose2d-{name}" for name in CONV_TRANSPOSE2D_ARGUMENTS
]


def twins(ours, theirs, arguments, seed=0):
    """Our module and torch's, built from the same arguments after the same seed, in float64."""
    args, kwargs = arguments
    torch.manual_seed(seed)
    our_module = ours(*args, **kwargs).double()
    torch.manual_seed(seed)
    their_module = theirs(*args, **kwargs).double()
    return our_module, their_module


@pytest.mark.parametrize("ours, theirs, arguments", MODULES, ids=MODULE_IDS)
def test_same_class_tree_repr_parameters_and_initialisation(ours, theirs, arguments):
    our_module, their_module = twins(ours, theirs, arguments)
    assert isinstance(our_module, theirs)
    assert repr(our_module) == repr(their_module)
    assert [name for name, _ in our_module.named_parameters()] == [name for name, _ in their_module.named_parameters()]
    assert list(our_module.state_dict()) == list(their_module.state_dict())
    for ours_tensor, theirs_tensor in zip(our_module.state_dict().values(), their_module.state_dict().values()):
        assert torch.equal(ours_tensor, theirs_tensor)  # the same seed gives the same initialisation


@pytest.mark.parametrize("ours, theirs, arguments", MODULES, ids=MODULE_IDS)
def test_state_dicts_load_both_ways(ours, theirs, arguments):
    our_module, their_module = twins(ours, theirs, arguments)
    _, other_seed_twin = twins(ours, theirs, arguments, seed=1)
    our_module.load_state_dict(other_seed_twin.state_dict())
    their_module.load_state_dict(our_module.state_dict())
    for name, tensor in other_seed_twin.state_dict().items():
        assert torch.equal(our_module.state_dict()[name], tensor)
        assert torch.equal(their_module.state_dict()[name], tensor)


def assert_same_output_and_grads(our_module, their_module, input, **forward_kwargs):
    """Our module's output and the gradients of input, weight and bias equal torch.nn's, for the same input."""
    outputs, grads = [], []
    for module in (our_module, their_module):
        leaf = input.detach().clone().requires_grad_()
        output = module(leaf, **forward_kwargs)
        grad_output = torch.randn(output.shape, dtype=output.dtype, generator=torch.Generator().manual_seed(0))
        outputs.append(output)
        grads.append(torch.autograd.grad(output, [leaf, *module.parameters()], grad_output))
    torch.testing.assert_close(outputs[0], outputs[1])
    for our_grad, their_grad in zip(*grads, strict=True):
        torch.testing.assert_close(our_grad, their_grad)
    return outputs[0]


@pytest.mark.parametrize("ours, theirs, arguments", MODULES, ids=MODULE_IDS)
def test_output_and_gradients_match_torch(backend, ours, theirs, arguments):
    """Including the four padding modes; the graph's last node is our Function."""
    our_module, their_module = twins(ours, theirs, arguments)
    torch.manual_seed(0)
    input = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    output = assert_same_output_and_grads(our_module, their_module, input)
    assert type(output.grad_fn).__name__ == f"{ours.__name__}FunctionBackward"
    assert_same_output_and_grads(our_module, their_module, input[0])  # unbatched


@pytest.mark.parametrize("output_size", [(11, 12), [2, 6, 12, 11], torch.Size([11, 11])], ids=str)
def test_conv_transpose2d_forward_output_size(backend, output_size):
    """output_size picks the output_padding (a stride-2 layer maps 5 rows to 11 or 12), as torch.nn does."""
    arguments = ((4, 6, 3), {"stride": 2, "padding": 1, "output_padding": 0})
    our_module, their_module = twins(mnn.ConvTranspose2d, torch.nn.ConvTranspose2d, arguments)
    input = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    output = assert_same_output_and_grads(our_module, their_module, input, output_size=output_size)
    assert list(output.shape[-2:]) == list(output_size)[-2:]
    unbatched_size = list(output_size)[-2:] if len(output_size) == 4 else output_size
    assert_same_output_and_grads(our_module, their_module, input[0], output_size=unbatched_size)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_conv_transpose2d_supports_only_zeros_padding(padding_mode):
    """Rejected by the constructor and, when set afterwards, by forward: ValueError with torch's message."""
    errors = []
    for module_class in (mnn.ConvTranspose2d, torch.nn.ConvTranspose2d):
        with pytest.raises(ValueError) as construction:
            module_class(4, 6, 3, padding_mode=padding_mode)
        module = module_class(4, 6, 3)
        module.padding_mode = padding_mode
        with pytest.raises(ValueError) as call:
            module(torch.randn(1, 4, 5, 5))
        errors.append((str(construction.value), str(call.value)))
    assert errors[0] == errors[1]
