"""manual_conv.enable() and convert()'s forward under it: torch's functional calls in model code run the twins.

Every route (torch.nn.functional.NAME, torch.NAME, Tensor.NAME, in-place forms) is called once under enable() and
must go through its route, give torch's values and gradients, and leave a graph of manual_conv's Functions without
torch's node for the op. Calls without a twin, or with arguments the twin lacks, pass through. Calls made by
manual_conv's own code (a module named manual_conv.*, an autograd Function's forward and backward) are not
rerouted, in eager mode and under torch.compile. convert() runs the model under enable() unless functional=False,
and warns exactly for the layers whose computation stays native.
"""
import copy
import importlib
import io
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

import manual_conv

enable_module = importlib.import_module("manual_conv.enable")  # manual_conv.enable is the mode itself

pytestmark = pytest.mark.usefixtures("single_thread")


def graph_nodes(tensor):
    """Every autograd node reachable from tensor.grad_fn."""
    nodes, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return nodes


def is_ours(node):
    """A node of one of manual_conv's autograd Functions."""
    return getattr(getattr(node, "_forward_cls", None), "__module__", "").startswith("manual_conv.")


def leaf(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()


X, W, B = leaf(2, 3, 6, 6), leaf(4, 3, 3, 3, seed=1), leaf(4, seed=2)
SEQUENCE = leaf(2, 5, 4, seed=3)  # (batch, tokens, features)
MEAN, VAR = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
TARGET = torch.tensor([1, 3])

# route key -> the call model code makes. A twin with one required argument needs none: it is called as key(X).
EXAMPLES = {
    F.conv2d: lambda: F.conv2d(X, W, B, padding=1),
    F.conv_transpose2d: lambda: F.conv_transpose2d(X, W.transpose(0, 1), B, stride=2),
    F.max_pool2d: lambda: F.max_pool2d(X, 2),
    F.max_pool2d_with_indices: lambda: F.max_pool2d(X, 3, 2, 1, return_indices=True),
    torch.max_pool2d: lambda: torch.max_pool2d(X, [2, 2], padding=1),
    F.adaptive_max_pool2d: lambda: F.adaptive_max_pool2d(X, (2, 3)),
    F.adaptive_max_pool2d_with_indices: lambda: F.adaptive_max_pool2d(X, 2, return_indices=True),
    F.avg_pool2d: lambda: F.avg_pool2d(X, 3, 2, 1),
    F.adaptive_avg_pool2d: lambda: F.adaptive_avg_pool2d(X, 1),
    F.softmax: lambda: F.softmax(SEQUENCE, dim=-1),
    torch.softmax: lambda: torch.softmax(SEQUENCE, 1),
    torch.Tensor.softmax: lambda: SEQUENCE.softmax(-1),
    F.log_softmax: lambda: F.log_softmax(SEQUENCE, 1),
    torch.log_softmax: lambda: torch.log_softmax(SEQUENCE, dim=2, dtype=torch.float32),
    torch.Tensor.log_softmax: lambda: SEQUENCE.log_softmax(0),
    F.linear: lambda: F.linear(SEQUENCE, W[:, :, 0, 0].T[:, :4].contiguous(), B[:3]),
    F.dropout: lambda: F.dropout(X, 0.3),
    torch.dropout: lambda: torch.dropout(X, 0.3, True),
    torch.dropout_: lambda: torch.dropout_(X * 1, 0.3, train=True),
    F.cross_entropy: lambda: F.cross_entropy(SEQUENCE[:, 0], TARGET, label_smoothing=0.1),
    F.nll_loss: lambda: F.nll_loss(SEQUENCE[:, 0], TARGET, reduction="sum"),
    F.mse_loss: lambda: F.mse_loss(SEQUENCE, SEQUENCE.flip(0)),
    F.layer_norm: lambda: F.layer_norm(SEQUENCE, (4,), B, B.flip(0)),
    torch.layer_norm: lambda: torch.layer_norm(SEQUENCE, [5, 4], None, None, 1e-3, False),
    F.batch_norm: lambda: F.batch_norm(X, MEAN.clone(), VAR.clone(), B[:3], B[1:], training=True),
    torch.batch_norm: lambda: torch.batch_norm(X, B[:3], B[1:], MEAN, VAR, False, 0.1, 1e-5, True),
    F.group_norm: lambda: F.group_norm(X, 3, B[:3], B[1:]),
    torch.group_norm: lambda: torch.group_norm(X, 1, None, None, 1e-3),
    torch.instance_norm: lambda: torch.instance_norm(X, B[:3], B[1:], None, None, True, 0.1, 1e-5, False),
    F.scaled_dot_product_attention: lambda: F.scaled_dot_product_attention(
        SEQUENCE, SEQUENCE.flip(1), SEQUENCE.flip(0), is_causal=True),
    # (sequence 2, batch 5, embedding 4), 2 heads: W's first 48 values the in-projection, the next 16 the out-one
    F.multi_head_attention_forward: lambda: F.multi_head_attention_forward(
        SEQUENCE, SEQUENCE, SEQUENCE, 4, 2, W.flatten()[:48].view(12, 4), B.repeat(3), None, None, False, 0.0,
        W.flatten()[48:64].view(4, 4), B),
}


def example(route_key):
    """The call exercising a route: EXAMPLES', or key(X) (on a non-leaf for an in-place form)."""
    if route_key in EXAMPLES:
        return EXAMPLES[route_key]
    if getattr(route_key, "__name__", "").endswith("_"):
        return lambda: route_key(X * 1)
    return lambda: route_key(X)


def route_names():
    return [f"{getattr(key, '__module__', None) or 'Tensor'}.{key.__name__}" for key in enable_module._ROUTES]


def test_every_route_has_an_example():
    """A twin added to manual_conv.functional is routed at once; a twin with more than one required argument then
    needs its calls here."""
    for key, route in enable_module._ROUTES.items():
        required = [p for p in route.signature.parameters.values() if p.default is p.empty and p.kind != p.VAR_KEYWORD]
        assert key in EXAMPLES or len(required) == 1, f"add an example call of {key} to EXAMPLES"


def flat_tensors(result):
    return [result] if isinstance(result, torch.Tensor) else list(result)


@pytest.mark.parametrize("key", list(enable_module._ROUTES), ids=route_names())
def test_each_route_runs_the_twin_and_matches_torch(key, backend, monkeypatch):
    """The example call goes through routes to key's twin: key's own, or, for a torch.nn.functional function that
    calls a Tensor method without dispatching itself (F.sigmoid calls input.sigmoid()), the method's."""
    used = []

    class Recorded:
        def __init__(self, key, route):
            self.key, self.route = key, route
            self.twin, self.signature = route.twin, route.signature

        def bind(self, args, kwargs):
            used.append(self.key)
            return self.route.bind(args, kwargs)

    twin = enable_module._ROUTES[key].twin
    for route_key, route in list(enable_module._ROUTES.items()):
        monkeypatch.setitem(enable_module._ROUTES, route_key, Recorded(route_key, route))
    call = example(key)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the implicit-dim warning of a softmax, on both sides
        with manual_conv.enable():
            actual = flat_tensors(call())
        torch.manual_seed(0)
        expected = flat_tensors(call())
    assert used and all(enable_module._ROUTES[route_key].twin is twin for route_key in used)
    assert used == [key] or "handle_torch_function" not in key.__code__.co_names
    assert len(actual) == len(expected)
    for mine, theirs in zip(actual, expected):
        torch.testing.assert_close(mine, theirs)
    output = actual[0]
    nodes = graph_nodes(output)
    assert any(is_ours(node) for node in nodes) and not any(is_ours(node) for node in graph_nodes(expected[0]))
    inputs = [tensor for tensor in (X, W, B, SEQUENCE) if tensor.grad_fn is None]
    gradient = torch.ones_like(output)
    mine = torch.autograd.grad(output, inputs, gradient, retain_graph=True, allow_unused=True)
    theirs = torch.autograd.grad(expected[0], inputs, gradient, retain_graph=True, allow_unused=True)
    for a, b in zip(mine, theirs):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_calls_without_a_route_or_with_arguments_the_twin_lacks_pass_through():
    output = torch.empty(2, 3, 6, 6, dtype=torch.float64)
    with manual_conv.enable():
        joined = torch.cat([X, X]).relu()
        hard = F.hardshrink(X)
        written = torch.sigmoid(X.detach(), out=output)  # the twin has no out=
        summed = X.sum()
    assert is_ours(joined.grad_fn) and type(joined.grad_fn.next_functions[0][0]).__name__ == "CatBackward0"
    assert type(hard.grad_fn).__name__ == "HardshrinkBackward0" and type(summed.grad_fn).__name__ == "SumBackward0"
    assert written is output and torch.equal(output, torch.sigmoid(X.detach()))


def test_outside_the_mode_torch_is_torch_also_after_an_error():
    with pytest.raises(ValueError), manual_conv.enable():
        raise ValueError
    assert type(torch.relu(X).grad_fn).__name__ == "ReluBackward0"


def test_decorator_and_nesting():
    @manual_conv.enable()
    def relu_depth(x, depth):
        return x.relu() if depth == 0 else relu_depth(x, depth - 1)

    assert is_ours(relu_depth(X, 2).grad_fn)
    with manual_conv.enable():
        with manual_conv.enable():
            assert is_ours(F.relu(X).grad_fn)
        assert is_ours(F.relu(X).grad_fn)
    assert not is_ours(F.relu(X).grad_fn)


def test_decorator_without_parentheses_and_on_a_generator_function():
    @manual_conv.enable
    def relu(x):
        return x.relu()

    @manual_conv.enable()
    def relus(x):
        while True:
            x = yield x.relu()

    assert relu.__name__ == "relu" and is_ours(relu(X).grad_fn)
    steps = relus(X)
    assert is_ours(next(steps).grad_fn)
    assert not is_ours(F.relu(X).grad_fn)  # between steps the mode is off
    assert is_ours(steps.send(X).grad_fn)


def test_passed_through_calls_reach_an_outer_mode():
    class Recorder(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.calls.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Recorder() as recorder, manual_conv.enable():
        torch.cat([X, X])
    assert recorder.calls == ["cat"]


# ------------------------------------------------------------------------------ manual_conv's own code: not rerouted

# Code that runs as manual_conv's own (its module is named manual_conv.*), calling torch.tanh.
OWN_CODE = '''
import torch


def tanh_of(x):
    return torch.tanh(x)


class TwiceTanh(torch.autograd.Function):
    """2·tanh(x), its forward and backward calling torch.tanh."""

    @staticmethod
    def forward(x):
        return 2 * torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * grad * (1 - torch.tanh(x) ** 2)
'''


@pytest.fixture
def own_code(monkeypatch):
    """A manual_conv module calling torch.tanh, with torch.tanh routed to a stand-in twin that returns 42 (the
    real twin's values are torch's, so only a stand-in shows whether a call was routed)."""
    module = types.ModuleType("manual_conv.probe")
    exec(compile(OWN_CODE, "manual_conv/probe.py", "exec"), module.__dict__)
    monkeypatch.setitem(enable_module._ROUTES, torch.tanh,
                        enable_module._Route(lambda input: torch.full_like(input, 42.0)))
    torch._dynamo.reset()
    yield module
    torch._dynamo.reset()


def model_and_own_code(module, x):
    """Model code's torch.tanh (routed: 42), then our own code's (not routed), in a function and in a Function."""
    with manual_conv.enable():
        return torch.tanh(x), module.tanh_of(x), module.TwiceTanh.apply(x)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "aot_eager"])
def test_calls_from_our_own_code_are_not_rerouted(own_code, compiled):
    function = model_and_own_code
    if compiled:
        function = torch.compile(model_and_own_code, backend="aot_eager", fullgraph=True)
    x = leaf(3, 4)
    routed, from_function, from_autograd_function = function(own_code, x)
    tanh = torch.tanh(x.detach())
    assert torch.equal(routed, torch.full_like(x, 42.0))
    torch.testing.assert_close(from_function, tanh)
    torch.testing.assert_close(from_autograd_function, 2 * tanh)
    with manual_conv.enable():  # the backward, too, is our own code: run it while the mode is active
        (gradient,) = torch.autograd.grad((from_function + from_autograd_function).sum(), x)
    torch.testing.assert_close(gradient, 3 * (1 - tanh**2))


# ------------------------------------------------------------------------------------------ convert(functional=...)


class FunctionalBlock(nn.Module):
    """Model code calling torch's functions itself (as torchvision's DenseNet, Swin, ConvNeXt do)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torchvision.models.convnext.LayerNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        x = self.norm(x).permute(0, 2, 3, 1)
        x = F.layer_norm(x, (4,), self.fc.weight[0, :4], None)
        x = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1).flatten(1)
        x = F.dropout(x, 0.2, self.training)
        return F.linear(x, self.fc.weight, self.fc.bias).softmax(-1).tanh()


def block_and_input():
    torch.manual_seed(0)
    return FunctionalBlock().double(), torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)


def native_layer_nodes(tensor):
    """torch's own nodes of layer ops in the graph of tensor (building blocks such as mean, permute are fine)."""
    layer_ops = ("Convolution", "Relu", "Threshold", "Pool", "Norm", "Softmax", "Dropout", "Addmm", "Tanh")
    return sorted(type(node).__name__ for node in graph_nodes(tensor)
                  if not is_ours(node) and any(op in type(node).__name__ for op in layer_ops))


def test_convert_runs_the_forward_under_enable(backend):
    native, input = block_and_input()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LayerNorm2d's own forward calls only twins: no warning
        converted = manual_conv.convert(native)
    assert type(converted.norm) is torchvision.models.convnext.LayerNorm2d
    torch.manual_seed(1)
    output = converted(input)
    torch.manual_seed(1)
    expected = native(input)
    torch.testing.assert_close(output, expected)
    assert native_layer_nodes(output) == []
    assert native_layer_nodes(expected) != []  # the check sees torch's nodes
    parameters = [input, *converted.parameters()]
    for mine, theirs in zip(torch.autograd.grad(output.sum(), parameters),
                            torch.autograd.grad(expected.sum(), [input, *native.parameters()])):
        torch.testing.assert_close(mine, theirs)


class SubclassedBatchNorm(nn.BatchNorm2d):
    """A subclass of a supported layer without code of its own: torch's BatchNorm2d.forward calls F.batch_norm."""


@pytest.mark.parametrize("wrap", [lambda layer: layer, nn.Sequential,
                                  lambda layer: nn.Sequential(nn.Sequential(layer))],
                         ids=["root", "in Sequential", "in nested Sequential"])
def test_a_subclass_called_by_torch_containers_runs_by_hand(backend, wrap):
    """Between the converted forward's wrapper and the layer only torch's frames (Sequential, Module.__call__):
    the call is still model code's, so it is routed."""
    torch.manual_seed(0)
    native = wrap(SubclassedBatchNorm(4)).double()
    input = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converted = manual_conv.convert(native)
    output = converted(input)
    expected = native(input)
    torch.testing.assert_close(output, expected)
    assert native_layer_nodes(output) == [] and native_layer_nodes(expected) != []


def test_functional_false_leaves_the_forward_and_warns_for_subclasses():
    native, input = block_and_input()
    with pytest.warns(UserWarning, match=r"LayerNorm2d ×1 \(norm\)"):
        converted = manual_conv.convert(native, functional=False)
    assert "forward" not in vars(converted)
    assert set(native_layer_nodes(converted(input))) >= {"ReluBackward0", "NativeLayerNormBackward0"}


def test_the_forward_under_enable_is_added_once_and_copies_and_pickles():
    native, input = block_and_input()
    converted = manual_conv.convert(native)
    again = manual_conv.convert(converted, inplace=True)
    assert again is converted and type(vars(converted)["forward"].forward).__name__ == "method"
    assert vars(converted)["forward"].forward.__func__ is FunctionalBlock.forward
    assert list(converted.state_dict()) == list(native.state_dict())
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(converted), torch.load(buffer, weights_only=False)):
        assert vars(copied)["forward"].forward.__self__ is copied
        assert native_layer_nodes(copied.eval()(input)) == []


def test_subclasses_of_supported_layers_warn_only_for_native_computation():
    class PlainLinear(nn.Linear):  # torch's forward: F.linear, routed
        pass

    # A LayerNorm whose forward calls a module-level helper naming a function that enable() leaves to torch.
    scope = {"__name__": "helper", "F": F, "nn": nn}
    exec(compile(f"""
def native_call(x):
    return F.{min(enable_module.native_function_names())}


class NativeHelper(nn.LayerNorm):
    def forward(self, x):
        native_call(x)
        return super().forward(x)
""", "helper.py", "exec"), scope)
    model = nn.Sequential(PlainLinear(4, 4), scope["NativeHelper"](4))
    with pytest.warns(UserWarning) as caught:
        converted = manual_conv.convert(model)
    message = " ".join(str(warning.message) for warning in caught)
    assert "NativeHelper ×1 (1)" in message and "PlainLinear" not in message
    with manual_conv.enable():  # only the converted model's own forward runs under enable(), not its layers'
        assert is_ours(converted[0](torch.randn(2, 4)).grad_fn)
    with pytest.warns(UserWarning, match="PlainLinear ×1 \\(0\\)"):
        manual_conv.convert(model, functional=False)


# ------------------------------------------------------------------------------------------------- torch.compile


def compiled_graph_ops(model, input, backend):
    """A training step of torch.compile(model) (fullgraph), and the ATen ops of its forward and backward graphs."""
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return make_boxed_func(graph_module.forward)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=capture, bw_compiler=capture), fullgraph=True)
    compiled(input).sum().backward()
    return {str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}


# ATen's layer ops, which a graph of manual_conv's Functions never holds (its GEMMs, addmm included, are fine).
NATIVE_LAYER_OPS = ("convolution", "relu", "threshold_backward", "max_pool2d_with_indices", "adaptive_avg_pool2d",
                    "native_layer_norm", "_softmax", "native_dropout", "tanh")


@pytest.mark.parametrize("backend_name", ["aot_eager", "inductor"])
def test_torch_compile_of_a_converted_model_trains(backend_name):
    native, input = block_and_input()
    model = manual_conv.convert(native)
    parameters = [input, *model.parameters()]
    torch.manual_seed(1)
    expected = model(input)
    expected_gradients = torch.autograd.grad(expected.square().sum(), parameters)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend_name, fullgraph=True)
    torch.manual_seed(1)
    output = compiled(input)
    torch.testing.assert_close(output, expected)
    for actual, wanted in zip(torch.autograd.grad(output.square().sum(), parameters), expected_gradients):
        torch.testing.assert_close(actual, wanted)
    torch._dynamo.reset()


def test_compiled_graph_of_a_converted_model_holds_no_native_layer_op():
    native, input = block_and_input()
    ops = compiled_graph_ops(manual_conv.convert(native), input, "aot_eager")
    assert not [op for op in ops if op.startswith("aten.") and any(name in op for name in NATIVE_LAYER_OPS)], ops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native_ops = compiled_graph_ops(manual_conv.convert(native, functional=False), input, "aot_eager")
    assert {"aten.relu.default", "aten._softmax.default"} <= native_ops  # the check sees torch's ops
    torch._dynamo.reset()
