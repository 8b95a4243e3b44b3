"""Calls of every public function of manual_conv.functional as a network makes them under autocast, shared by
tests/test_autocast.py: each case names its activations (which a mixed-precision network hands over in the lower
precision) and its parameters (float32 leaves), and calls a function (ours or native) with them."""
import torch
import torch.nn.functional as F
import torchvision

ACTIVATION, PARAMETER = "activation", "parameter"


def _mha(function, need_weights):
    def call(f, query, key, in_weight, in_bias, out_weight, out_bias):
        return f(query, key, key, 4, 2, in_weight, in_bias, None, None, False, 0.0, out_weight, out_bias,
                 training=False, need_weights=need_weights)
    return call


def _batch_norm(training):
    def call(f, x, weight, bias, running_mean, running_var):
        return f(x, running_mean.detach().clone(), running_var.detach().abs(), weight, bias, training=training)
    return call


TARGET = torch.tensor([0, 4, 2])

# name -> [(label, [(role, shape), ...], call(function, *tensors)), ...]
CASES = {
    "conv2d": [("bias", [(ACTIVATION, (2, 3, 5, 5)), (PARAMETER, (4, 3, 3, 3)), (PARAMETER, (4,))],
                lambda f, x, w, b: f(x, w, b, padding=1)),
               ("no bias", [(ACTIVATION, (2, 3, 5, 5)), (PARAMETER, (4, 3, 3, 3))], lambda f, x, w: f(x, w))],
    "conv_transpose2d": [("bias", [(ACTIVATION, (2, 3, 4, 4)), (PARAMETER, (3, 2, 3, 3)), (PARAMETER, (2,))],
                          lambda f, x, w, b: f(x, w, b, stride=2))],
    "max_pool2d": [("", [(ACTIVATION, (2, 3, 4, 4))], lambda f, x: f(x, 2)),
                   ("indices", [(ACTIVATION, (2, 3, 4, 4))], lambda f, x: f(x, 2, return_indices=True))],
    "avg_pool2d": [("", [(ACTIVATION, (2, 3, 4, 4))], lambda f, x: f(x, 2))],
    "adaptive_avg_pool2d": [("", [(ACTIVATION, (2, 3, 5, 5))], lambda f, x: f(x, (2, 3))),
                            ("global", [(ACTIVATION, (2, 3, 5, 5))], lambda f, x: f(x, 1))],
    "adaptive_max_pool2d_with_indices": [("", [(ACTIVATION, (2, 3, 5, 5))], lambda f, x: f(x, 2))],
    "adaptive_max_pool2d": [("", [(ACTIVATION, (2, 3, 5, 5))], lambda f, x: f(x, 2))],
    "dropout": [("", [(ACTIVATION, (2, 8))], lambda f, x: f(x, 0.5))],
    "stochastic_depth": [("", [(ACTIVATION, (4, 3))], lambda f, x: f(x, 0.5, "row"))],
    "linear": [("bias", [(ACTIVATION, (2, 3)), (PARAMETER, (4, 3)), (PARAMETER, (4,))], lambda f, x, w, b: f(x, w, b)),
               ("3-D", [(ACTIVATION, (2, 2, 3)), (PARAMETER, (4, 3))], lambda f, x, w: f(x, w))],
    "softmax": [("", [(ACTIVATION, (2, 5))], lambda f, x: f(x, dim=1)),
                ("dtype", [(ACTIVATION, (2, 5))], lambda f, x: f(x, dim=1, dtype=torch.float64))],
    "log_softmax": [("", [(ACTIVATION, (2, 5))], lambda f, x: f(x, dim=1))],
    "cross_entropy": [("indices", [(ACTIVATION, (3, 5))], lambda f, x: f(x, TARGET.to(x.device))),
                      ("weight", [(ACTIVATION, (3, 5)), (PARAMETER, (5,))],
                       lambda f, x, w: f(x, TARGET.to(x.device), w.detach().abs(), label_smoothing=0.1)),
                      ("probabilities", [(ACTIVATION, (3, 5)), (ACTIVATION, (3, 5))],
                       lambda f, x, p: f(x, p.softmax(1)))],
    "nll_loss": [("", [(ACTIVATION, (3, 5)), (PARAMETER, (5,))],
                  lambda f, x, w: f(x, TARGET.to(x.device), w.detach().abs()))],
    "mse_loss": [("", [(ACTIVATION, (2, 3)), (PARAMETER, (2, 3))], lambda f, x, y: f(x, y)),
                 ("weight", [(ACTIVATION, (2, 3)), (PARAMETER, (2, 3)), (PARAMETER, (2, 3))],
                  lambda f, x, y, w: f(x, y, weight=w.abs()))],
    "layer_norm": [("affine", [(ACTIVATION, (2, 3, 4)), (PARAMETER, (4,)), (PARAMETER, (4,))],
                    lambda f, x, w, b: f(x, (4,), w, b)),
                   ("", [(ACTIVATION, (2, 3, 4))], lambda f, x: f(x, (3, 4)))],
    "batch_norm": [("training", [(ACTIVATION, (2, 3, 4, 4))] + [(PARAMETER, (3,))] * 4, _batch_norm(True)),
                   ("eval", [(ACTIVATION, (2, 3, 4, 4))] + [(PARAMETER, (3,))] * 4, _batch_norm(False))],
    "instance_norm": [("", [(ACTIVATION, (2, 3, 4, 4)), (PARAMETER, (3,)), (PARAMETER, (3,))],
                       lambda f, x, w, b: f(x, weight=w, bias=b))],
    "group_norm": [("", [(ACTIVATION, (2, 4, 3, 3)), (PARAMETER, (4,)), (PARAMETER, (4,))],
                    lambda f, x, w, b: f(x, 2, w, b))],
    "normalize": [("", [(ACTIVATION, (2, 3))], lambda f, x: f(x, dim=1))],
    "scaled_dot_product_attention": [
        ("", [(ACTIVATION, (1, 2, 3, 4))] * 3, lambda f, q, k, v: f(q, k, v)),
        ("float mask", [(ACTIVATION, (1, 2, 3, 4))] * 3 + [(PARAMETER, (3, 3))],
         lambda f, q, k, v, m: f(q, k, v, attn_mask=m))],
    "multi_head_attention_forward": [
        (label, [(ACTIVATION, (3, 2, 4)), (ACTIVATION, (5, 2, 4)), (PARAMETER, (12, 4)), (PARAMETER, (12,)),
                 (PARAMETER, (4, 4)), (PARAMETER, (4,))], _mha(None, need_weights))
        for label, need_weights in (("weights", True), ("no weights", False))],
}
ELEMENTWISE = {
    "relu": lambda f, x: f(x), "relu_": lambda f, x: f(x.clone()), "sigmoid": lambda f, x: f(x),
    "tanh": lambda f, x: f(x), "gelu": lambda f, x: f(x, approximate="tanh"), "hardtanh": lambda f, x: f(x),
    "hardtanh_": lambda f, x: f(x.clone()), "relu6": lambda f, x: f(x), "leaky_relu": lambda f, x: f(x, 0.1),
    "leaky_relu_": lambda f, x: f(x.clone(), 0.1), "elu": lambda f, x: f(x), "elu_": lambda f, x: f(x.clone()),
    "silu": lambda f, x: f(x), "mish": lambda f, x: f(x), "hardswish": lambda f, x: f(x),
    "hardsigmoid": lambda f, x: f(x), "softplus": lambda f, x: f(x, beta=2),
}
CASES.update({name: [("", [(ACTIVATION, (2, 5))], call)] for name, call in ELEMENTWISE.items()})
RANDOM = {"dropout", "stochastic_depth"}  # values compared with the same seed before both calls


def native(name):
    """torch's twin of our public function ``name``."""
    return torchvision.ops.stochastic_depth if name == "stochastic_depth" else getattr(F, name)


def tensors(roles_and_shapes, activation_dtype, rounded_to, device="cpu", seed=0):
    """Leaves requiring grad: activations in ``activation_dtype``, parameters in float32; values ≈ N(0, 1) rounded
    to ``rounded_to`` (so that every dtype holds the same numbers)."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for role, shape in roles_and_shapes:
        values = torch.randn(shape, generator=generator).to(rounded_to).float()
        dtype = activation_dtype if role == ACTIVATION else torch.float32
        made.append(values.to(device, dtype).requires_grad_())
    return made
