"""Per-sample gradients by torch.func's recipe (functional_call + vmap(grad)) on manual_conv's layers equal a loop of
single-sample backward passes: on train_mnist.py's network and on ResNet-18's basic blocks (torchvision's, converted
by manual_conv.convert), with manual_conv's losses and batched targets, on both backends, in float64.

The recipe runs every layer's vmap rule over the batch of samples, and grad runs each backward (and, through the
vmap, the backwards' own batching); the loop runs the ordinary autograd graph. Small sizes: CI runs this on 2 cores.
"""
import math
import os
import sys
import warnings

import pytest
import torch
import torchvision
from transforms import looped_per_sample_gradients, per_sample_gradients

import manual_conv
import manual_conv.functional as MF

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_mnist  # noqa: E402  (the network, exactly as trained)

BATCH = 3


def assert_per_sample_gradients_match_the_loop(model, loss, inputs, targets):
    vmapped = per_sample_gradients(model, loss, inputs, targets)
    looped = looped_per_sample_gradients(model, loss, inputs, targets)
    assert vmapped.keys() == looped.keys() == dict(model.named_parameters()).keys()
    for name, expected in looped.items():
        torch.testing.assert_close(vmapped[name], expected, msg=lambda message: f"{name}: {message}")
        # Each sample has its own gradient: a recipe that broadcast one sample's would not pass.
        assert not torch.allclose(expected[0], expected[1]), name


def converted(module):
    """manual_conv.convert(module), which must leave no layer running natively (it warns about any it leaves)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return manual_conv.convert(module)


@pytest.mark.usefixtures("single_thread")
def test_mnist_network(backend):
    """train_mnist.py's network from manual_conv.nn with cross-entropy; its dropouts in eval mode (the identity),
    since a mask drawn per sample would differ between the recipe and the loop."""
    torch.manual_seed(0)
    model = train_mnist.Net(train_mnist.layer_library("manual")).double()
    for module in model.modules():
        module.train(not isinstance(module, torch.nn.Dropout))
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(BATCH, 1, 28, 28, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 10, (BATCH,), generator=generator)
    assert_per_sample_gradients_match_the_loop(model, MF.cross_entropy, inputs, targets)


def batch_norm_block(channels, stride):
    """torchvision's BasicBlock as ResNet-18 makes it (BatchNorm2d; a 1x1 conv and BatchNorm2d on the shortcut
    where it downsamples), in eval mode with random running statistics: in training mode BatchNorm mixes the
    samples of a batch and updates its buffers, so a per-sample gradient is defined with its running statistics."""
    in_channels = channels if stride == 1 else channels // 2
    downsample = None if stride == 1 else torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, channels, 1, stride, bias=False), torch.nn.BatchNorm2d(channels))
    block = torchvision.models.resnet.BasicBlock(in_channels, channels, stride, downsample)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return block.eval(), in_channels


def group_norm_block(channels, stride):
    """The same block with GroupNorm for BatchNorm, as Opacus's ModuleValidator.fix makes it for DP-SGD, in
    training mode (GroupNorm normalises each sample by itself)."""
    block = torchvision.models.resnet.BasicBlock(channels, channels, stride, norm_layer=lambda width: (
        torch.nn.GroupNorm(math.gcd(2, width), width)))
    return block, channels


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("make_block, stride", [(batch_norm_block, 1), (batch_norm_block, 2),
                                                (group_norm_block, 1)],
                         ids=["batch-norm", "batch-norm-downsample", "group-norm"])
def test_resnet_basic_block(backend, make_block, stride):
    """ResNet-18's basic block converted by manual_conv.convert (its in-place ReLU and ``out += identity``
    included), mean squared error against a batched target."""
    torch.manual_seed(0)
    block, in_channels = make_block(4, stride)
    model = converted(block.double())
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(BATCH, in_channels, 6, 6, generator=generator, dtype=torch.float64)
    targets = torch.randn(BATCH, 4, 6 // stride, 6 // stride, generator=generator, dtype=torch.float64)
    assert_per_sample_gradients_match_the_loop(model, MF.mse_loss, inputs, targets)
