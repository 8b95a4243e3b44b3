"""Autocast (automatic mixed precision): every public function of manual_conv.functional casts its tensor arguments
under ``torch.autocast`` as torch's Autocast dispatch key casts those of the native op, then runs our Functions
with autocast off for that device, as torch redispatches below the Autocast key. Output dtypes, and with them the
gradients' dtypes (a cast's backward casts back), are then native's.

The policy of each function on each device is the list torch puts the native op on (torch 2.14):

- CUDA: ``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_FP32``, ``AT_FORALL_FP32_SET_OPT_DTYPE`` and
  ``AT_FORALL_PROMOTE`` in aten/src/ATen/autocast_mode.h, registered for AutocastCUDA in autocast_mode.cpp;
- CPU: the lists registered for AutocastCPU in aten/src/ATen/autocast_mode.cpp (mirrored by
  ``AutocastCPUTestLists`` in torch/testing/_internal/autocast_test_lists.py), and checked empirically:
  tests/test_autocast.py compares every function's output and gradient dtypes with native's on CPU, under bfloat16
  and float16, with float32 and with mixed (lower-precision activation, float32 parameter) arguments.

The policies (``cached_cast`` and the ``WrapFunction_`` specialisations of autocast_mode.h):

- ``LOWER_PRECISION_FP``: every floating tensor argument on the device, except float64 ones, is cast to the
  autocast dtype (``torch.get_autocast_dtype(device)``): conv, linear, attention.
- ``FP32``: those arguments are cast to float32: the losses; on CUDA also softplus, layer_norm, group_norm and
  normalize.
- ``FP32_SET_OPT_DTYPE``: when the first argument is such a tensor and no ``dtype`` is given, the op runs with
  ``dtype=torch.float32``: softmax and log_softmax on CUDA.
- ``AS_GIVEN``: on no list; the op runs in the dtypes it is given: pooling, activations, dropout, batch_norm,
  instance_norm; on CPU also softmax, log_softmax, softplus, layer_norm, group_norm and normalize (whose mixed
  arguments, e.g. a bfloat16 input with float32 γ and β, native accepts, and so do ours).
- ``COMPOSITE``: the native function is itself made of listed ops; ours is made of our public functions, which
  follow their own policies (multi_head_attention_forward: its projections are ``linear``, its attention
  ``scaled_dot_product_attention``, or the steps of ``_heads_attending_with_weights``).

Some rows stand for a composite native function whose ops' policies add up to one of the above:
cross_entropy on CUDA (log_softmax in float32, then nll_loss, FP32), normalize on CUDA (x / ‖x‖ with the norm,
``linalg_vector_norm``, in float32: x promotes, FP32), mse_loss (``mse_loss``, FP32, without a weight; with one,
pow, mul and sum: FP32 on CUDA, where pow is on FP32's list; AS_GIVEN on CPU, where none is, so that its dtypes
promote), and multi_head_attention_forward's attention weights (softmax's dtype: float32 on CUDA, the lower
precision on CPU). Not reproduced: the Autocast key's cache of the lower-precision copies of float32 leaves (a
speed-up that changes no value).
"""
import contextlib
import functools
import inspect

import torch

LOWER_PRECISION_FP = "lower_precision_fp"
FP32 = "fp32"
FP32_SET_OPT_DTYPE = "fp32_set_opt_dtype"
AS_GIVEN = "as_given"
COMPOSITE = "composite"

DEVICES = ("cpu", "cuda")


def _both(policy):
    return {"cpu": policy, "cuda": policy}


def _cuda_only(policy):
    return {"cpu": AS_GIVEN, "cuda": policy}


# function name -> {device type: policy}
POLICIES = {
    "conv2d": _both(LOWER_PRECISION_FP),
    "conv_transpose2d": _both(LOWER_PRECISION_FP),
    "linear": _both(LOWER_PRECISION_FP),
    "scaled_dot_product_attention": _both(LOWER_PRECISION_FP),
    "multi_head_attention_forward": _both(COMPOSITE),
    "cross_entropy": _both(FP32),
    "nll_loss": _both(FP32),
    "mse_loss": _both(COMPOSITE),
    "softmax": _cuda_only(FP32_SET_OPT_DTYPE),
    "log_softmax": _cuda_only(FP32_SET_OPT_DTYPE),
    "softplus": _cuda_only(FP32),
    "layer_norm": _cuda_only(FP32),
    "group_norm": _cuda_only(FP32),
    "normalize": _cuda_only(FP32),
    # steps of composites: mse_loss with a weight (pow, mul, sum), and multi_head_attention_forward's need_weights
    # branch (baddbmm or bmm, softmax, bmm; its weights take softmax's dtype, ``softmax_dtype``)
    "_mse_loss": _both(FP32),
    "_weighted_mse_loss": _cuda_only(FP32),
    "_heads_attending_with_weights": _both(LOWER_PRECISION_FP),
    **{name: _both(AS_GIVEN) for name in (
        "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d_with_indices", "adaptive_max_pool2d",
        "relu", "relu_", "sigmoid", "tanh", "gelu", "hardtanh", "hardtanh_", "relu6", "leaky_relu", "leaky_relu_",
        "elu", "elu_", "silu", "mish", "hardswish", "hardsigmoid", "dropout", "stochastic_depth", "batch_norm",
        "instance_norm",
    )},
}


def _device_type(args, kwargs):
    """The device type of the first tensor argument (None without one): the Autocast key that dispatches."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device.type
    return None


def _eligible(value, device):
    """A tensor autocast casts: floating, on the device, not float64 (``is_eligible`` in autocast_mode.h)."""
    return (isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == device
            and value.dtype != torch.float64)


def _cast(value, dtype, device):
    return value.to(dtype) if _eligible(value, device) else value


def follows_policy(function):
    """``function`` (a public function of manual_conv.functional, or a step named in POLICIES) under torch.autocast:
    its tensor arguments cast by its policy on the device of its first tensor, then run with autocast off there.
    Outside autocast, ``function`` itself is called. (An ``out=`` tensor is written, never cast.) One frame is added
    between the caller and ``function``: warnings that point at the caller count it."""
    policies = POLICIES[function.__name__]
    signature = inspect.signature(function)
    out_position = list(signature.parameters).index("out") if "out" in signature.parameters else None

    @functools.wraps(function)
    def under_policy(*args, **kwargs):
        device = _device_type(args, kwargs)
        if device not in policies or not torch.is_autocast_enabled(device):
            return function(*args, **kwargs)
        policy = policies[device]
        if policy == COMPOSITE:
            return function(*args, **kwargs)
        if policy in (LOWER_PRECISION_FP, FP32):
            dtype = torch.get_autocast_dtype(device) if policy == LOWER_PRECISION_FP else torch.float32
            args = tuple(value if position == out_position else _cast(value, dtype, device)
                         for position, value in enumerate(args))
            kwargs = {key: value if key == "out" else _cast(value, dtype, device) for key, value in kwargs.items()}
        elif policy == FP32_SET_OPT_DTYPE:
            bound = signature.bind(*args, **kwargs)
            first = next(iter(bound.arguments.values()))
            if _eligible(first, device) and bound.arguments.get("dtype") is None:
                bound.arguments["dtype"] = torch.float32
            args, kwargs = bound.args, bound.kwargs
        with torch.autocast(device, enabled=False):
            return function(*args, **kwargs)

    return under_policy


def softmax_dtype(scores):
    """The dtype native softmax gives ``scores`` under the autocast now in force on their device: float32 where
    softmax is FP32_SET_OPT_DTYPE and they are eligible, else theirs."""
    device = scores.device.type
    if (POLICIES["softmax"].get(device) == FP32_SET_OPT_DTYPE and torch.is_autocast_enabled(device)
            and _eligible(scores, device)):
        return torch.float32
    return scores.dtype


def disabled(function):
    """``function`` run with autocast off on every device where it is on (backward and jvp of our Functions: they
    then compute in the dtypes their forward saw, as native backward does, also when called inside an autocast
    region; cf. torch.amp.custom_bwd)."""

    @functools.wraps(function)
    def without_autocast(*args):
        enabled = [device for device in DEVICES if torch.is_autocast_enabled(device)]
        if not enabled:
            return function(*args)
        with contextlib.ExitStack() as stack:
            for device in enabled:
                stack.enter_context(torch.autocast(device, enabled=False))
            return function(*args)

    return without_autocast
