"""The drop-in promise for real model code (issue 12), on the examples that broke it, beside the differential
harness (test_differential.py) that draws the general case: in-place ops on outputs and on views, and bounded
memory for ViT's patch embedding."""
import pytest
import torch
from torch import nn

import manual_conv
import manual_conv.nn as mnn

pytestmark = pytest.mark.usefixtures("single_thread")


def forward_backward(model, input):
    input = input.detach().clone().requires_grad_()
    output = model(input)
    output.backward(torch.ones_like(output))
    return output.detach(), input.grad, [parameter.grad for parameter in model.parameters()]


def assert_same_training_step(ours, theirs, input):
    actual, expected = forward_backward(ours, input), forward_backward(theirs, input)
    torch.testing.assert_close(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1])
    for mine, wanted in zip(actual[2], expected[2], strict=True):
        torch.testing.assert_close(mine, wanted)


def twin_models(build):
    """The same model built from manual_conv.nn and from torch.nn, with the same weights."""
    torch.manual_seed(0)
    ours = build(mnn)
    theirs = build(nn)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_conv_then_inplace_relu(backend):
    """A conv's output may be overwritten in place, as by ReLU(inplace=True) after every conv of 18 torchvision
    models: it is the conv's own tensor, never a view of a buffer made inside (on 'python' it was, and the backward
    failed with "Output 0 of Conv2dFunction is a view and is being modified inplace")."""
    ours, theirs = twin_models(lambda library: nn.Sequential(library.Conv2d(3, 4, 3), library.ReLU(inplace=True)))
    assert_same_training_step(ours, theirs, torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("view", ["flatten", "slice"])
def test_inplace_dropout_on_a_view(backend, view):
    """Dropout(inplace=True) on a view of another tensor (after Flatten, as in every EfficientNet's classifier):
    the Function has one output, so autograd accepts the in-place change of a view. Same mask as torch's."""
    def build(library):
        layers = [library.Conv2d(3, 4, 3)]
        layers += [library.Flatten()] if view == "flatten" else [Slice()]
        features = 24 if view == "slice" else 144
        return nn.Sequential(*layers, library.Dropout(0.2, inplace=True), library.Linear(features, 5))

    ours, theirs = twin_models(build)
    input = torch.randn(2, 3, 8, 8)
    torch.manual_seed(1)
    actual = forward_backward(ours.train(), input)
    torch.manual_seed(1)
    expected = forward_backward(theirs.train(), input)
    for mine, wanted in zip([actual[0], actual[1], *actual[2]], [expected[0], expected[1], *expected[2]], strict=True):
        torch.testing.assert_close(mine, wanted)


class Slice(nn.Module):
    """Every sixth feature of each sample: a strided view."""

    def forward(self, input):
        return input.flatten(1)[:, ::6]


def peak_bytes(step):
    """The largest total of CPU bytes allocated and not yet freed while step() runs (profiler memory events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as recording:
        step()
    live = peak = 0
    for _, change in sorted((event.start_ns(), event.nbytes()) for event in recording.profiler.kineto_results.events()
                            if event.name() == "[memory]"):
        live += change
        peak = max(peak, live)
    return peak


def test_vit_patch_embedding_memory_is_bounded(backend):
    """ViT-B/16's patch embedding (768×3×16×16, stride 16, 224×224): forward+backward within 3× native's peak
    memory. Its input gradient, as a correlation of the stride-spread δ with the kernel, once asked for 39 GB per
    image on 'python'; col2im needs no more than the columns of a tile."""
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(2, 3, 224, 224, generator=generator, requires_grad=True)
    weight = torch.randn(768, 3, 16, 16, generator=generator, requires_grad=True)
    grad_output = torch.randn(2, 768, 14, 14, generator=generator)

    def step(library):
        return lambda: torch.autograd.grad(library.conv2d(input, weight, None, 16), (input, weight), grad_output)

    ours, native = peak_bytes(step(manual_conv.functional)), peak_bytes(step(torch.nn.functional))
    assert ours <= 3 * native
