"""manual_conv.convert: torchvision models on the hand-written layers train exactly like the originals.

For resnet18, mobilenet_v2 and vgg11_bn (weights=None, float64, batches of 4 small images): outputs, the loss, every
parameter gradient, the parameters after an SGD step and the BatchNorm running statistics equal the native
model's, in training and in evaluation mode, and the autograd graph runs through manual_conv's Functions.
"""
import collections
import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn

import manual_conv
import manual_conv.nn as mnn

# Backward nodes of PyTorch's own implementations of the layers convert() replaces.
TORCH_LAYER_NODES = {
    "ConvolutionBackward0", "NativeBatchNormBackward0", "AddmmBackward0", "ReluBackward0",
    "MaxPool2DWithIndicesBackward0", "AdaptiveAvgPool2DBackward0", "NativeDropoutBackward0",
    "LogSoftmaxBackward0", "NllLossBackward0", "HardtanhBackward0",
}


def graph_node_names(tensor):
    """Counter of the autograd node class names reachable from tensor.grad_fn."""
    names, seen, stack = collections.Counter(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names[type(node).__name__] += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def assert_close_to_scale(actual, expected, name):
    """|actual − expected| ≤ 1e-7 · max|expected| (+ 1e-9): float64 rounding is relative to a tensor's scale.

    The two implementations sum in different orders; through ~50 BatchNorm backwards of a freshly initialised
    network (gradients up to ~1e4) the difference reaches ~1e-9 of the scale, while a wrong formula is off by
    O(1). The floor covers conv biases followed by BatchNorm in training, whose gradient is exactly 0 (rounding
    noise on both sides)."""
    atol = 1e-7 * expected.abs().max().item() + 1e-9 if expected.is_floating_point() else 0
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=name)


def assert_same_step(native, converted, input, target, seed):
    """One training step on both models: forward (dropout masks from ``seed``), loss, backward, SGD update.
    Outputs, losses and every parameter gradient must agree; then parameters and buffers (BatchNorm running
    statistics, num_batches_tracked) after the update. Returns the two losses."""
    outputs, losses = [], []
    for model, loss_function in ((native, nn.CrossEntropyLoss()), (converted, mnn.CrossEntropyLoss())):
        torch.manual_seed(seed)
        outputs.append(model(input))
        losses.append(loss_function(outputs[-1], target))
        losses[-1].backward()
    assert_close_to_scale(outputs[1], outputs[0], "output")
    assert_close_to_scale(losses[1], losses[0], "loss")
    for (name, expected), actual in zip(native.named_parameters(), converted.parameters()):
        assert_close_to_scale(actual.grad, expected.grad, f"gradient of {name}")
    with torch.no_grad():
        for parameter in (*native.parameters(), *converted.parameters()):
            parameter -= 0.1 * parameter.grad
            parameter.grad = None
    for (name, expected), actual in zip(native.state_dict().items(), converted.state_dict().values()):
        assert_close_to_scale(actual, expected, f"{name} after the step")
    return losses


# model: input height and width, small as float64 is slow (vgg's five max-pools need 32)
MODEL_INPUT_SIZES = {"resnet18": 32, "mobilenet_v2": 32, "vgg11_bn": 32}


@pytest.mark.parametrize("model_name", MODEL_INPUT_SIZES)
def test_torchvision_model_matches_native(model_name):
    """A training step (batch statistics, running statistics updated, dropout active), then an evaluation-mode
    step (running statistics used and left alone, dropout off), on the native and on the converted model.
    Batch 4 keeps 4+ values per channel in the last BatchNorms (1×1 maps): with 2, the BatchNorm gradient is
    almost entirely cancellation and its rounding dominates both implementations."""
    torch.manual_seed(0)
    native = getattr(torchvision.models, model_name)(weights=None, num_classes=10).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert's warnings are tested below
        converted = manual_conv.convert(native)
    assert not any(type(module) in (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU) for module in converted.modules())
    input = torch.randn(4, 3, MODEL_INPUT_SIZES[model_name], MODEL_INPUT_SIZES[model_name], dtype=torch.float64)
    target = torch.tensor([3, 7, 0, 9])

    expected_loss, loss = assert_same_step(native.train(), converted.train(), input, target, seed=1)
    manual_nodes = graph_node_names(loss)
    assert manual_nodes["Conv2dFunctionBackward"] > 0 and manual_nodes["CrossEntropyFunctionBackward"] == 1
    assert manual_nodes["BatchNormFunctionBackward"] > 0
    assert not TORCH_LAYER_NODES & set(manual_nodes)
    assert TORCH_LAYER_NODES & set(graph_node_names(expected_loss))  # the check above does see torch's nodes

    converted.load_state_dict(native.state_dict())  # the same start: rounding differences do not compound
    expected_loss, loss = assert_same_step(native.eval(), converted.eval(), input, target, seed=2)
    assert graph_node_names(loss)["BatchNormEvalFunctionBackward"] > 0


class SmallModel(nn.Module):
    """A user module holding supported layers directly and inside Sequential, ModuleList and ModuleDict."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.blocks = nn.ModuleList([nn.Conv2d(4, 4, 1)])
        self.activations = nn.ModuleDict({"gate": nn.Sigmoid()})
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.Dropout(0.2), nn.Identity())

    def forward(self, x):
        x = self.blocks[0](self.features(x))
        return self.head(x * self.activations["gate"](x))


def test_default_converts_a_deep_copy_and_leaves_the_model_alone():
    model = SmallModel()
    converted = manual_conv.convert(model)
    assert converted is not model and type(converted) is SmallModel
    assert type(model.features[0]) is nn.Conv2d and type(converted.features[0]) is mnn.Conv2d
    assert type(converted.blocks[0]) is mnn.Conv2d and type(converted.activations["gate"]) is mnn.Sigmoid
    assert type(converted.head[3]) is nn.Identity
    assert all(ours is not theirs for ours, theirs in zip(converted.parameters(), model.parameters()))


def test_inplace_keeps_parameters_buffers_hooks_and_the_optimizer():
    model = SmallModel()
    parameters, buffers = list(model.parameters()), list(model.buffers())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    calls = []
    model.features[0].register_forward_hook(lambda module, args, output: calls.append(type(module)))

    converted = manual_conv.convert(model, inplace=True)

    assert converted is model and type(model.features[0]) is mnn.Conv2d and type(model.features[1]) is mnn.BatchNorm2d
    assert all(a is b for a, b in zip(model.parameters(), parameters))
    assert all(a is b for a, b in zip(model.buffers(), buffers))
    before = model.features[0].weight.detach().clone()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    assert calls == [mnn.Conv2d]
    assert not torch.equal(model.features[0].weight, before)
    assert model.features[1].num_batches_tracked.item() == 1


def test_state_dicts_load_both_ways():
    native = torchvision.models.resnet18(weights=None, num_classes=10)
    converted = manual_conv.convert(native)
    assert list(converted.state_dict()) == list(native.state_dict())
    fresh_native = torchvision.models.resnet18(weights=None, num_classes=10)
    fresh_native.load_state_dict(converted.state_dict())
    converted.load_state_dict(fresh_native.state_dict())
    for expected, actual in zip(native.state_dict().values(), fresh_native.state_dict().values()):
        assert torch.equal(expected, actual)


def test_one_warning_names_the_unsupported_layers():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.SELU(), nn.Sequential(nn.SELU(), nn.Dropout2d()), nn.Softsign(), nn.ReLU()
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = manual_conv.convert(model)
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = str(caught[0].message)
    assert "SELU ×2 (1, 2.0)" in message and "Dropout2d ×1 (2.1)" in message and "Softsign ×1 (3)" in message
    assert type(converted[1]) is nn.SELU and type(converted[4]) is mnn.ReLU
    # converting again changes nothing and warns about the same layers only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = manual_conv.convert(converted, inplace=True)
    assert again is converted and type(converted[0]) is mnn.Conv2d and len(caught) == 1


def test_supported_model_converts_silently_and_twins_are_not_converted_again():
    model = SmallModel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = manual_conv.convert(model)
        assert [type(m) for m in manual_conv.convert(converted).modules()] == [type(m) for m in converted.modules()]


def test_a_supported_layer_itself_and_subclasses_of_supported_layers():
    assert type(manual_conv.convert(nn.BatchNorm1d(3))) is mnn.BatchNorm1d

    class MyLinear(nn.Linear):
        pass

    # Under enable() (the default) MyLinear's forward, torch's F.linear, runs by hand: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(manual_conv.convert(MyLinear(2, 3))) is MyLinear
    with pytest.warns(UserWarning, match=r"MyLinear ×1 \(<root>\)"):
        assert type(manual_conv.convert(MyLinear(2, 3), functional=False)) is MyLinear


def test_user_modules_are_searched():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3)
            self.norm = nn.LayerNorm(2)

        def forward(self, x):
            return self.norm(self.conv(x).permute(0, 2, 3, 1))

    block = Block()
    converted = manual_conv.convert(block)
    assert type(converted) is Block and type(converted.conv) is mnn.Conv2d and type(converted.norm) is mnn.LayerNorm
    input = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(converted(input), block(input))
    assert copy.deepcopy(converted).conv.__class__ is mnn.Conv2d
