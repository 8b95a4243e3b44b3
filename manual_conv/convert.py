"""convert(model): run an existing PyTorch model on manual_conv's hand-written layers.

Every torch.nn layer that has a twin in ``manual_conv.nn`` (a subclass of the torch.nn class of the same name,
overriding only the computation) is swapped for it; everything else stays as it is. The model's forward then runs
under ``manual_conv.enable()``, so that the torch functions model code calls itself (F.relu, F.layer_norm,
x.softmax(-1)) run by hand too.
"""
import copy
import functools
import inspect
import sys
import types
import warnings

from torch import nn

from . import nn as manual_nn
from .enable import enable, native_function_names
from .torch_names import runs_natively

# Modules that only hold other modules: convert looks inside them. Any module whose class is not from torch.nn
# (a user's model, torchvision's blocks) is looked inside too.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
# torch.nn layers without computation of their own: nothing to do by hand, nothing to warn about.
_NO_COMPUTATION = (nn.Identity,)


def _twins():
    """{torch.nn or torchvision.ops class: its manual_conv.nn twin}, by name, for every twin manual_conv.nn defines
    (torchvision's only once torchvision is loaded, as it is wherever a model holds its layers)."""
    libraries = [nn]
    names = list(vars(manual_nn))
    if "torchvision.ops" in sys.modules:
        libraries.append(sys.modules["torchvision.ops"])
        names += manual_nn.TORCHVISION_TWINS
    twins = {}
    for name in names:
        twin = getattr(manual_nn, name)
        for library in libraries:
            original = getattr(library, name, None)
            is_twin = isinstance(twin, type) and isinstance(original, type) and twin is not original
            if is_twin and issubclass(twin, original):
                twins[original] = twin
    return twins


def _is_torch_nn_layer(module):
    """A torch.nn layer (or a subclass of one), as opposed to a container or a user's composite module."""
    return not isinstance(module, _CONTAINERS) and any(
        cls.__module__.startswith("torch.nn.") and cls is not nn.Module for cls in type(module).__mro__
    )


def _is_torchvision_ops_layer(module):
    """A torchvision.ops module (or a subclass of one) without children, that computes: a layer, as opposed to
    torchvision's blocks (SqueezeExcitation, Conv2dNormActivation, MLP), which hold layers and are looked inside,
    and Permute, a view. (A module of torchvision.ops exists only once torchvision.ops is loaded.)"""
    is_from_torchvision_ops = any(cls.__module__.startswith("torchvision.ops.") for cls in type(module).__mro__)
    return is_from_torchvision_ops and next(module.children(), None) is None and not isinstance(
        module, sys.modules["torchvision.ops"].Permute)


def convert(module, inplace=False, functional=True):
    """Swap every supported torch.nn layer of ``module`` (and ``module`` itself, if it is one) for its
    manual_conv.nn twin, and return the converted module.

    Supported: the torch.nn classes (exact type) that manual_conv.nn has a twin for — Conv2d, ConvTranspose2d,
    Linear, ReLU, Sigmoid, Tanh, GELU, Softmax, LogSoftmax, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
    AdaptiveMaxPool2d, Dropout, Flatten, CrossEntropyLoss, NLLLoss, MSELoss, LayerNorm, BatchNorm1d, BatchNorm2d,
    GroupNorm, InstanceNorm1d/2d/3d, MultiheadAttention (with its out-projection, which its forward reads, so
    torchvision's ViT encoder blocks run by hand), and the Lazy variants of Conv2d, ConvTranspose2d, Linear,
    BatchNorm1d, BatchNorm2d and InstanceNorm1d/2d/3d — and torchvision.ops.StochasticDepth. Containers and modules
    that are not from torch.nn are searched recursively (torchvision.ops' blocks too, such as SqueezeExcitation).
    Other torch.nn and torchvision.ops layers (e.g. SELU, Dropout2d, FrozenBatchNorm2d, and subclasses of supported
    layers) stay as they are; those that run natively are named in one UserWarning.

    With ``functional=True`` (the default) the converted module's forward runs under ``manual_conv.enable()``:
    the torch functions that model code calls itself (torchvision's DenseNet ``F.relu``, Swin ``F.linear`` and
    ``F.softmax``) run their manual_conv.functional twins, and so does the forward of a layer convert leaves. A
    subclass of a supported layer (ConvNeXt's LayerNorm2d, a LayerNorm whose forward permutes and calls
    ``F.layer_norm``) then runs by hand, and convert does not warn about it, when the code of its own classes (the
    classes of its MRO before the supported one, and the module-level functions they call) names no function that
    enable() leaves to torch (``enable.native_function_names``: interpolate, pad, the in-place sigmoid_, ...): its
    computation is the supported layer's, which calls its twin's function, and its own code's. Every other layer
    left (a layer without a twin, or a subclass naming such a function) is named in the warning: it runs natively.
    With ``functional=False`` the forward is left alone, and every layer left, subclasses included, is named.

    By default the model is deep-copied first (as torch.ao.quantization.convert does) and ``module`` is left
    untouched. With ``inplace=True`` ``module`` itself is converted: a twin adds no state of its own, so each
    layer becomes its twin by a change of class, keeping its very Parameter and buffer objects (an optimizer
    built before the swap keeps working), its hooks and its state_dict keys (state_dicts load both ways). The
    forward under enable() is an instance attribute ``forward`` (a ``ForwardUnderEnable``), which deep copies and
    pickles with the module and leaves its class, state_dict and hooks alone; converting again adds no second one.
    """
    if not inplace:
        module = copy.deepcopy(module)
    twins = _twins()
    unsupported = []
    _convert_in_place(module, "", twins, unsupported, functional)
    if unsupported:
        warnings.warn(_unsupported_message(unsupported), UserWarning, stacklevel=2)
    if functional and not isinstance(vars(module).get("forward"), ForwardUnderEnable):
        module.forward = ForwardUnderEnable(module.forward)
    return module


class ForwardUnderEnable(functools.partial):
    """A module's forward, run under manual_conv.enable(): ``convert(functional=True)`` sets one as the converted
    module's ``forward``. ``forward`` is the bound forward it replaces.

    A ``functools.partial`` of ``forward``, so that it deep copies and pickles as a partial does (with the module:
    the bound forward is the module's class's), and torch.export, which reads the code object of a module's
    forward, finds one (it looks inside a partial; any other callable object fails there with "no attribute
    __code__")."""

    def __new__(cls, forward):
        return super().__new__(cls, _call_under_enable, forward)

    @property
    def forward(self):
        return self.args[0]


def _call_under_enable(forward, *args, **kwargs):
    with enable():
        return forward(*args, **kwargs)


def _unsupported_message(unsupported):
    """One line per class: "SELU ×2 (features.0.2, features.1.2, ...)"."""
    paths_by_type = {}
    for path, type_name in unsupported:
        paths_by_type.setdefault(type_name, []).append(path or "<root>")
    classes = ", ".join(
        f"{type_name} ×{len(paths)} ({', '.join(paths[:3])}{', ...' if len(paths) > 3 else ''})"
        for type_name, paths in paths_by_type.items()
    )
    return f"manual_conv.convert: {runs_natively('torch.nn layers', classes)}"


def _convert_in_place(module, path, twins, unsupported, functional):
    """Give ``module`` its twin's class, or look inside it, or record it as unsupported."""
    module_type = type(module)
    if module_type in twins:
        module.__class__ = twins[module_type]
    elif module_type in twins.values() or isinstance(module, _NO_COMPUTATION):
        pass  # already converted, or nothing to convert
    elif (_is_torch_nn_layer(module) or _is_torchvision_ops_layer(module)) and not (
            functional and _runs_by_hand_under_enable(module_type, twins)):
        unsupported.append((path, module_type.__name__))
    else:
        for name, child in module.named_children():
            _convert_in_place(child, f"{path}.{name}" if path else name, twins, unsupported, functional)


def _runs_by_hand_under_enable(module_type, twins):
    """Whether a layer convert leaves computes by hand under enable(): a subclass of a supported layer whose own
    classes' code (see convert) names no function that enable() leaves to torch."""
    supported = next((cls for cls in module_type.__mro__ if cls in twins), None)
    if supported is None:
        return False
    own_classes = module_type.__mro__[:module_type.__mro__.index(supported)]
    functions = [value for cls in own_classes for value in vars(cls).values() if inspect.isfunction(value)]
    return not _names_used(functions) & native_function_names()


def _names_used(functions):
    """Every global and attribute name the code of ``functions`` uses (nested functions and comprehensions
    included), and that of the module-level Python functions outside torch they name, recursively."""
    names, seen = set(), set()
    codes = [(function.__code__, function.__globals__) for function in functions]
    while codes:
        code, scope = codes.pop()
        if code in seen:
            continue
        seen.add(code)
        names.update(code.co_names)
        codes.extend((constant, scope) for constant in code.co_consts if isinstance(constant, types.CodeType))
        for name in code.co_names:
            value = scope.get(name)
            if inspect.isfunction(value) and (value.__module__ or "").partition(".")[0] != "torch":
                codes.append((value.__code__, value.__globals__))
    return names
