"""torch.export and torch.compile, the README's answer for deployment (TorchScript cannot script a custom autograd
Function): a small CNN of manual_conv.nn layers and torchvision's ResNet-18 converted by manual_conv.convert export
on both backends, and the exported program computes what the eager model does, gradients included; torch.compile
of the CNN matches eager too. The exported graphs hold none of ATen's layer ops: they compute by hand."""
import copy
import pickle

import pytest
import torch
import torchvision

import manual_conv
from manual_conv import nn
from manual_conv.convert import ForwardUnderEnable

# ATen's layer ops, which a graph of manual_conv's layers never holds (its GEMMs, addmm included, are fine).
NATIVE_LAYER_OPS = ("convolution", "native_batch_norm", "_native_batch_norm_legit", "batch_norm", "relu",
                    "max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d", "linear")


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def assert_native_layer_ops_absent(exported):
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not {op for op in ops if op.split(".")[:2] in (["aten", name] for name in NATIVE_LAYER_OPS)}, ops


def outputs_and_gradients(model, input):
    output = model(input)
    return output, torch.autograd.grad(output.square().sum(), [input, *model.parameters()])


def assert_exported_matches_eager(model, input, backend):
    """torch.export.export(model): the program's module gives eager's outputs and gradients (input and every
    parameter), and updates BatchNorm's running statistics in training mode as eager does.

    On 'python' only outputs, under no_grad: the exported program runs the Functions' forwards as plain ATen ops,
    and the Python max pooling's forward writes with ``torch.maximum(..., out=)`` (ops/pool.py), which autograd
    refuses whenever an input requires grad. Returns the program."""
    exported = torch.export.export(model, (input,))
    program = exported.module()
    eager = copy.deepcopy(model)
    if backend == "python":
        with torch.no_grad():
            torch.testing.assert_close(program(input), eager(input))
    else:
        input = input.detach().requires_grad_()
        actual, actual_gradients = outputs_and_gradients(program, input)
        expected, expected_gradients = outputs_and_gradients(eager, input)
        torch.testing.assert_close(actual, expected)
        for got, wanted in zip(actual_gradients, expected_gradients, strict=True):
            torch.testing.assert_close(got, wanted)
    torch.testing.assert_close(dict(program.named_buffers()), dict(eager.named_buffers()))
    return exported


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_export_of_a_small_cnn_matches_eager(backend, training):
    model = small_cnn().train(training)
    input = torch.randn(2, 3, 8, 8)
    assert_native_layer_ops_absent(assert_exported_matches_eager(model, input, backend))


@pytest.mark.usefixtures("single_thread")
def test_torch_compile_of_a_small_cnn_matches_eager(backend):
    """A training step's outputs and gradients. aot_eager: Dynamo and AOTAutograd, where the custom Functions
    are traced (Inductor's code generation is tested on a converted model in test_enable.py and on 'cpp' in
    test_conv_cpp.py). fullgraph: no graph break on either backend."""
    assert_compiled_matches_eager(small_cnn(), torch.randn(2, 3, 8, 8, requires_grad=True))


@pytest.mark.usefixtures("single_thread")
def test_torch_compile_of_every_in_place_layer_matches_eager(backend):
    """In-place layers (ResNet's ReLU(inplace=True), MobileNet's ReLU6 and Hardswish) compile without a graph
    break: Dynamo accepts mark_dirty only for an input the Function's forward returns as itself."""
    torch.manual_seed(0)
    in_place = [nn.ReLU6(inplace=True), nn.Hardtanh(inplace=True), nn.Hardswish(inplace=True),
                nn.Hardsigmoid(inplace=True), nn.SiLU(inplace=True), nn.Mish(inplace=True), nn.ELU(inplace=True),
                nn.Dropout(0.3, inplace=True), nn.LeakyReLU(inplace=True)]
    # each after a Linear, which saves its input, not its output (ReLU, ELU and LeakyReLU save y: an in-place op
    # right after them would overwrite it, and the backward would refuse, in torch too)
    model = torch.nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(),
                                nn.Linear(4 * 8 * 8, 6),
                                *(layer for activation in in_place for layer in (activation, nn.Linear(6, 6))))
    assert_compiled_matches_eager(model, torch.randn(2, 3, 8, 8, requires_grad=True))


@pytest.mark.usefixtures("single_thread")
def test_torch_compile_of_a_converted_mobilenet_v3_matches_eager(backend):
    """A torchvision model through convert(), its forward under enable(), compiles without a graph break:
    in-place Hardswish and ReLU, squeeze-excitation on 1 × 1 maps, dropout."""
    torch.manual_seed(0)
    model = manual_conv.convert(torchvision.models.mobilenet_v3_small(num_classes=10))
    assert_compiled_matches_eager(model, torch.randn(2, 3, 32, 32, requires_grad=True))


def assert_compiled_matches_eager(model, input):
    """torch.compile(model, fullgraph=True) gives eager's outputs and gradients, dropout masks drawn alike."""
    torch.manual_seed(1)
    expected, expected_gradients = outputs_and_gradients(copy.deepcopy(model), input)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    actual, actual_gradients = outputs_and_gradients(compiled, input)
    torch._dynamo.reset()
    torch.testing.assert_close(actual, expected)
    for got, wanted in zip(actual_gradients, expected_gradients, strict=True):
        torch.testing.assert_close(got, wanted)


@pytest.mark.usefixtures("single_thread")
def test_export_of_a_converted_resnet18_matches_eager(backend):
    """convert's forward under enable() (a ForwardUnderEnable) exports: torch.export reads the code object of a
    module's forward, which a partial has (and once an object without ``__code__`` did not). The converted model
    still deep copies and pickles with its forward."""
    torch.manual_seed(0)
    model = manual_conv.convert(torchvision.models.resnet18(num_classes=10)).eval()
    input = torch.randn(1, 3, 32, 32)
    assert_native_layer_ops_absent(assert_exported_matches_eager(model, input, backend))
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(vars(copied)["forward"], ForwardUnderEnable)
        torch.testing.assert_close(copied(input), model(input))
