"""Every torchvision classification model, converted, trains exactly like the native one and runs by hand.

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights, 10 classes, a batch
of 4, or 16 at input size 1, at the smallest input the model accepts in both modes), in training mode and then in
evaluation mode:
  - ``convert()`` leaves no layer (it warns for any layer it leaves: here a warning is an error);
  - the converted model's outputs, the input gradient and every parameter gradient match the native model's, and
    after one SGD step so do the parameters and the BatchNorm statistics: in float32 to a tolerance relative to each
    tensor's scale, or, where float32 rounding disagrees (deep networks whose BatchNorms see a few values per
    channel amplify rounding: RegNetY-128GF's float32 gradients are ~100% off float64 natively too), in float64
    from the same start, to float64 rounding (there the parameters after the step follow from the gradients, and
    only the gradients, outputs and buffers are compared: ``step_in_float64``);
  - the autograd graph of the forward and backward holds no node of torch's own layer ops (convolution, linear's
    addmm, pooling, normalisation, softmax, activations, dropout, attention), only manual_conv's Functions and
    building blocks (add, mul, matmul, view, cat, mean, ...), while the native model's graph does hold them.

CI runs every model on both backends ('cpp' and 'python').
"""
import gc
import warnings

import pytest
import torch
import torchvision

import manual_conv

MODELS = torchvision.models.list_models(module=torchvision.models)

# The smallest square input (height = width) each model accepts in both modes, found by trying every size from 1
# up (ViT and MaxViT take their input size as a builder argument, so it is set here to their smallest: one patch
# for ViT; MaxViT's grid and window partitions of 7 × 7 need 224). Models not listed accept size 1 (their padded
# convolutions and pools never shrink a map below 1 × 1).
INPUT_SIZES = {
    "alexnet": 63, "googlenet": 15, "inception_v3": 299, "maxvit_t": 224, "squeezenet1_0": 21, "squeezenet1_1": 17,
    **dict.fromkeys(["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"], 32),
    **dict.fromkeys(["densenet121", "densenet161", "densenet169", "densenet201"], 29),
    **dict.fromkeys(["swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"], 4),
    **{name: 32 for name in MODELS if name.startswith("vgg")},
    "vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14,
}
# Builder arguments that set the input size the model is built for.
SIZE_ARGUMENTS = {"vit_": "image_size", "maxvit": "input_size"}


# A BatchNorm in training over a 1 × 1 map normalises only the batch: over 2 values its outputs are ±1 whatever its
# input, so the gradient it passes back is exactly 0 (in practice rounding noise amplified ~1e4×); over 4, a deep
# network's gradients are so ill-conditioned that float64 implementations differ by ~1e-5 (RegNets). Batch 16 at
# input size 1 (every map 1 × 1), 4 otherwise (larger early maps give the statistics more values).
def batch_size(size):
    return 16 if size == 1 else 4


# Substrings of the names of torch's autograd nodes for the layer ops that must run by hand.
NATIVE_LAYER_NODES = (
    "Convolution", "Addmm", "Linear", "Pool", "BatchNorm", "LayerNorm", "GroupNorm", "Softmax", "Relu", "Threshold",
    "Hardtanh", "Gelu", "Silu", "Hardswish", "Hardsigmoid", "LeakyRelu", "Elu", "Mish", "Softplus", "Sigmoid",
    "Tanh", "Dropout", "Attention", "Normalize",
)

def model_cases():
    return [pytest.param(name, backend, id=f"{name}-{backend}") for name in MODELS for backend in ("cpp", "python")]


def build(name, dtype=torch.float32):
    size = INPUT_SIZES.get(name, 1)
    arguments = {"num_classes": 10}
    for prefix, argument in SIZE_ARGUMENTS.items():
        if name.startswith(prefix):
            arguments[argument] = size if argument == "image_size" else (size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet's and Inception's FutureWarning about init_weights
        return torchvision.models.get_model(name, weights=None, **arguments).to(dtype)


def is_ours(node):
    """A node of one of manual_conv's autograd Functions."""
    return getattr(getattr(node, "_forward_cls", None), "__module__", "").startswith("manual_conv.")


def native_layer_nodes(tensor):
    """The names of torch's layer-op nodes in the autograd graph of ``tensor``."""
    found, seen, stack = set(), set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if not is_ours(node) and any(part in name for part in NATIVE_LAYER_NODES):
            found.add(name)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def outputs_of(result):
    """The model's output tensors: one, or GoogLeNet's and Inception's (logits, auxiliary logits) in training."""
    return [result] if isinstance(result, torch.Tensor) else [tensor for tensor in result if tensor is not None]


def step(model, input, seed):
    """Forward (dropout masks and stochastic depth drawn from ``seed``), a loss weighing every output by fixed random
    weights, backward, one SGD step of the parameters that require a gradient. Returns ({name: tensor} to compare,
    the loss): the outputs, the input gradient, each such parameter's gradient and value after the step, and every
    buffer after it. The gradients and the state after the step are the model's own tensors, not copies (the
    largest models hold 2.5 GB of parameters)."""
    input = input.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    outputs = outputs_of(model(input))
    generator = torch.Generator().manual_seed(seed)
    loss = sum((output * torch.randn(output.shape, generator=generator, dtype=output.dtype)).sum()
               for output in outputs)
    model.zero_grad(set_to_none=True)
    loss.backward()
    trained = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
    results = {f"output {index}": output.detach() for index, output in enumerate(outputs)}
    results["input gradient"] = input.grad
    results.update((f"gradient of {name}", parameter.grad) for name, parameter in trained
                   if parameter.grad is not None)
    with torch.no_grad():
        for _, parameter in trained:
            if parameter.grad is not None:
                parameter -= 0.1 * parameter.grad
    results.update((f"{name} after the step", parameter.detach()) for name, parameter in trained)
    results.update((f"{name} after the step", buffer) for name, buffer in model.named_buffers())
    return results, loss


# Tensors are compared a piece of this many numbers at a time: the temporaries of a comparison of RegNetY-128GF's
# largest weight (55M numbers) at once would take another GB beside its two models and their gradients (13 GB).
PIECE = 1 << 20


def mismatches(actual, expected, relative):
    """The names whose tensors differ by more than ``relative`` × (the expected tensor's largest magnitude + 1):
    the two implementations round differently, by amounts relative to a tensor's scale."""
    assert actual.keys() == expected.keys()
    wrong = []
    for name, value in expected.items():
        if not value.is_floating_point():
            if not torch.equal(actual[name], value):
                wrong.append(name)
            continue
        if actual[name].shape != value.shape:
            wrong.append(name)
            continue
        pieces = [(got, want) for got, want in zip(actual[name].reshape(-1).split(PIECE),
                                                   value.reshape(-1).split(PIECE), strict=True) if want.numel()]
        scale = max((piece.nan_to_num().abs().max().item() for _, piece in pieces), default=0) + 1
        if not all(torch.allclose(got, want, rtol=0, atol=relative * scale, equal_nan=True) for got, want in pieces):
            wrong.append(name)
    return wrong


def reset(model, parameters, buffers):
    with torch.no_grad():
        for parameter, value in zip(model.parameters(), parameters):
            parameter.copy_(value)
        for buffer, value in zip(model.buffers(), buffers):
            buffer.copy_(value)


@pytest.mark.parametrize("name, backend", model_cases())
def test_model_matches_native_and_runs_by_hand(name, backend):
    if backend == "cpp" and not manual_conv.extension_available():
        pytest.skip("the compiled extension manual_conv._C is not built")
    try:
        check_model(name, backend)
        failure = None
    except Exception as error:  # the message only: pytest would keep the frames, and with them the models (GBs)
        failure = f"{type(error).__name__}: {error}"
    gc.collect()
    assert failure is None, failure


def check_model(name, backend):
    torch.manual_seed(0)
    native = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # convert warns for every layer it leaves native
        converted = manual_conv.convert(native)
    initial = [parameter.detach().clone() for parameter in native.parameters()]
    size = INPUT_SIZES.get(name, 1)
    input = torch.randn(batch_size(size), 3, size, size, generator=torch.Generator().manual_seed(1))

    with manual_conv.use_backend(backend):
        # Each mode starts from the initial parameters (after a step, gradients of ~1e4 from BatchNorms over a few
        # values leave a network that overflows) and the buffers as they are: evaluation uses the running
        # statistics the training step left.
        for seed, mode in enumerate(("train", "eval"), start=2):
            buffers = [buffer.clone() for buffer in native.buffers()]
            for model in (native, converted):
                reset(model, initial, buffers)
                getattr(model, mode)()
            expected, native_loss = step(native, input, seed)
            actual, loss = step(converted, input, seed)
            assert native_layer_nodes(loss) == set(), f"{mode}: torch's layer ops in the graph"
            assert native_layer_nodes(native_loss), "the check sees torch's nodes"
            wrong = mismatches(actual, expected, relative=1e-4)
            del actual, expected, loss, native_loss
            for model in (native, converted):
                model.zero_grad(set_to_none=True)
            if wrong:  # float32 rounding amplified: the same step in float64, from the same start
                assert_same_in_float64(native, converted, input, seed, initial, buffers, wrong, mode)


# Parameters whose float64 gradients one pass computes, at most: RegNetY-128GF's 637M, all at once, would take 5 GB
# per model on top of the float64 model (5 GB).
FLOAT64_PASS_ELEMENTS = 160_000_000


def assert_same_in_float64(native, converted, input, seed, initial, buffers, wrong, mode):
    """The step again in float64, from the same start, computing only the gradients of the parameters in ``wrong``,
    in passes of at most FLOAT64_PASS_ELEMENTS. In each pass one model at a time is float64, on the model itself
    (copies of the largest would not fit in memory): native's results are kept while the converted model runs the
    pass. Afterwards both models are float32 again."""
    names = [name for name, parameter in native.named_parameters() if any(name in entry for entry in wrong)]
    sizes = dict((name, parameter.numel()) for name, parameter in native.named_parameters())
    passes, elements = [[]], 0
    for name in names:
        if passes[-1] and elements + sizes[name] > FLOAT64_PASS_ELEMENTS:
            passes.append([])
            elements = 0
        passes[-1].append(name)
        elements += sizes[name]
    try:
        for chosen in passes:
            expected, actual = (step_in_float64(model, chosen, input, seed, initial, buffers)
                                for model in (native, converted))
            still_wrong = mismatches(actual, expected, relative=1e-7)
            assert not still_wrong, f"{mode}: differ in float64 too: {still_wrong[:5]}"
            del expected, actual
    finally:
        for model in (native, converted):
            model.zero_grad(set_to_none=True)
            model.float().requires_grad_(True)


def step_in_float64(model, chosen, input, seed, initial, buffers):
    """``step`` of ``model`` made float64, from the initial parameters, with gradients for the parameters named in
    ``chosen`` only; then the model is float32 again. The results are float64 tensors no longer the model's, all
    but the parameters after the step: the step subtracts 0.1 × the gradient from the same initial values in both
    models, so equal gradients are equal parameters (and RegNetY-128GF's would take another 1.3 GB)."""
    model.zero_grad(set_to_none=True)
    model.double()
    reset(model, initial, buffers)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in chosen)
    results, _ = step(model, input.double(), seed)
    for name in chosen:
        del results[f"{name} after the step"]
    model.zero_grad(set_to_none=True)
    model.float()
    return results
