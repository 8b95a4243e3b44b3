"""Argument normalisation and error helpers shared by the op families, matching torch.nn.functional's forms,
and the base class of their autograd Functions."""
import functools
import inspect
import numbers

import torch
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from .. import autocast


def _pair(value, name, dims=2):
    """An int or a sequence of 1 or ``dims`` ints -> a tuple of ``dims`` ints, as torch's IntArrayRef[dims] parsing."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, list, tuple)):
        raise TypeError(f"argument '{name}' must be an int or a tuple of ints, not {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        return (int(value),) * dims
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        raise TypeError(f"argument '{name}' must be an int or a tuple of ints, but got {value!r}")
    if len(value) == 1:
        return (int(value[0]),) * dims
    if len(value) != dims:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of {dims} values to match the "
            f"convolution dimensions, but got {name}={list(value)}"
        )
    return tuple(int(v) for v in value)


_SCALAR_TYPE_NAMES = {torch.bool: "Bool", torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short",
                      torch.int32: "Int", torch.int64: "Long", torch.float16: "Half", torch.bfloat16: "BFloat16",
                      torch.float32: "Float", torch.float64: "Double", torch.complex64: "ComplexFloat",
                      torch.complex128: "ComplexDouble"}


def scalar_type_name(dtype):
    """The name PyTorch's C++ error messages give a dtype: Long, Float, Double..."""
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def not_implemented_for(kernel, dtype):
    """PyTorch's error for a kernel that has no implementation for an (integer or bool) dtype."""
    return NotImplementedError(f'"{kernel}" not implemented for \'{scalar_type_name(dtype)}\'')


def require_floating(dtype, kernel):
    """Raise PyTorch's NotImplementedError when a floating-point-only kernel gets another dtype."""
    if not dtype.is_floating_point:
        raise not_implemented_for(kernel, dtype)


def opmath_dtype(dtype):
    """The dtype torch's kernels compute in for ``dtype`` (ATen's ``at::opmath_type``): float32 for float16 and
    bfloat16, the dtype itself otherwise. Layers computing in it and rounding once at the end are as exact as
    torch's; rounding after every step of a composite formula is not (bfloat16 has 8 significant bits)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def suggests_channels_last(tensor):
    """Whether ``tensor.suggest_memory_format()`` is channels_last: c10's rule (``is_channels_last_strides_2d_s4``
    in c10/core/MemoryFormat.h), by which torch's layers choose the layout of their outputs and gradients.

    A 4-D tensor is channels_last when its strides grow in the order C, W, H, N. Size-1 dims are ambiguous, and
    c10 settles them by the strides themselves: an N×1×H×W tensor is channels_last only when its C stride is not
    the N stride (so 1-channel tensors, which ``is_contiguous(memory_format=...)`` calls both contiguous and
    channels_last, follow the layout they were made in). An empty tensor is never channels_last.
    """
    if tensor.dim() != 4 or tensor.stride(1) == 0:
        return False
    smallest = 0
    for dim in (1, 3, 2, 0):
        size, stride = tensor.shape[dim], tensor.stride(dim)
        if size == 0 or stride < smallest or (dim == 0 and smallest == tensor.stride(1)):
            return False
        smallest = stride * size
    return True


class Function(torch.autograd.Function):
    """torch.autograd.Function whose subclasses' forward signature is worked out once, when the class is made, and
    whose backward and jvp run with autocast off.

    For a Function with a setup_context, torch 2.14's ``apply`` binds the call's arguments to forward's
    signature on every call (``torch.autograd.function._bind_default_args``), and ``inspect.signature`` rebuilds
    that signature from the function each time: about 30 µs of every apply (a batch-1 ReLU: 80 → 51 µs).
    ``inspect.signature`` returns a function's ``__signature__`` when it has one, so storing it there leaves
    only the binding itself.

    Autocast: manual_conv.functional casts the arguments by torch's policy and runs forward with autocast off
    (``manual_conv.autocast``). ``.backward()`` called inside an autocast region would otherwise run backward (and
    jvp) under it, casting their products to the lower precision; with autocast off they compute in the dtypes the
    forward used, as native backward does (the role torch.amp.custom_bwd plays for custom Functions). The
    subclass's own ``backward`` and ``jvp`` staticmethods are replaced by wrapped ones of the same name, so
    torch.autograd and torch.func find them where they look (``vmap`` and ``generate_vmap_rule`` stay as they
    are); the jvp as a ``jvp_rule``, which torch.compile can trace past.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward" in vars(cls):  # not for a base of several Functions (it would write into torch's forward)
            cls.forward.__signature__ = inspect.signature(cls.forward)
        for name in ("backward", "jvp"):
            if isinstance(vars(cls).get(name), staticmethod):
                rule = autocast.disabled(vars(cls)[name].__func__)
                setattr(cls, name, jvp_rule(_first_order(rule)) if name == "jvp" else staticmethod(rule))


def _first_order(jvp):
    """``jvp``, refusing to run under two forward-mode transforms (jvp of jvp, jacfwd of jacfwd).

    torch runs a custom Function's jvp with forward gradients off, so an outer forward-mode level sees the inner
    tangent as a constant: its result would be 0, silently (torch 2.14, for every custom Function). The second
    derivatives that work go through reverse mode at least once: hessian (jacfwd of jacrev), jacrev of jacfwd,
    jacrev of jacrev, jvp of grad.
    """

    @functools.wraps(jvp)
    def first_order(ctx, *tangents):
        if not torch.compiler.is_compiling() and _forward_mode_levels() > 1:
            raise RuntimeError(
                "manual_conv: forward mode over forward mode (torch.func.jvp of jvp, jacfwd of jacfwd) is not "
                "supported: torch runs a custom autograd.Function's jvp with forward gradients off, so the result "
                "would be 0. Use reverse mode for one of the two: torch.func.hessian (jacfwd of jacrev), jacrev of "
                "jacfwd, or jvp of grad.")
        return jvp(ctx, *tangents)

    return first_order


def _forward_mode_levels():
    """How many torch.func forward-mode (jvp) transforms are active."""
    return sum(interpreter.key() == TransformType.Jvp for interpreter in retrieve_all_functorch_interpreters())


def laid_out_like(tensor, like, memory_format, dtype):
    """``tensor`` (of ``like``'s shape) as ``dtype`` and with the strides of ``torch.empty_like(like,
    memory_format=memory_format)``: the layout torch's kernels allocate their outputs and gradients in, exactly (the
    strides of size-1 dims included: they decide whether a 1-channel tensor counts as channels_last). ``tensor``
    itself when it already is so; else a copy, the only one (rounding to float16/bfloat16 needs a new tensor anyway).
    """
    if is_vmapped(tensor) or is_vmapped(like):  # a slice of a batch has no layout of its own to give it
        return tensor.to(dtype)
    strides = torch.empty_like(like, memory_format=memory_format, device="meta").stride()
    if tensor.dtype == dtype and tensor.stride() == strides:
        return tensor
    return torch.empty_strided(like.shape, strides, dtype=dtype, device=tensor.device).copy_(tensor)


def is_vmapped(tensor):
    """Whether ``tensor`` is batched by an enclosing ``torch.func.vmap`` (at any level, under other transforms'
    wrappers too): its values are then a batch of slices, so no Python control flow may read them (``.item()``,
    ``if t.any()``), and writing it into a tensor made inside would drop the batch."""
    if torch.compiler.is_compiling():  # Dynamo cannot trace functorch's queries; it traces vmap as a whole
        return False
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        if functorch.is_batchedtensor(tensor):
            return True
        tensor = functorch.get_unwrapped(tensor)
    return False


class jvp_rule:
    """A Function's ``jvp`` as ``Function.__init_subclass__`` installs it, so that torch.compile can still trace the
    Function (subclasses write an ordinary ``@staticmethod``).

    Dynamo refuses any autograd.Function whose class defines jvp ("Unsupported custom jvp",
    torch/_dynamo/variables/misc.py: a graph break, and an error under fullgraph=True), though a compiled graph never
    runs forward mode. Read while Dynamo traces (a ``TracingContext`` is active) this attribute is torch's own
    placeholder ``torch.autograd.Function.jvp``, so Dynamo traces the call as it did before jvp existed; read anywhere
    else (autograd's forward mode, torch.func) it is the rule, as a staticmethod would be.
    """

    def __init__(self, rule):
        self.rule = rule

    def __get__(self, instance, owner=None):
        if torch._guards.TracingContext.try_get() is not None:
            return torch.autograd.Function.jvp
        return self.rule
