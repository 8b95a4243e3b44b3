"""torch.nn's and torch.nn.functional's names that manual_conv has no hand-written twin for.

``manual_conv.nn`` and ``manual_conv.functional`` resolve every public name of torch.nn and torch.nn.functional:
to the hand-written twin where one exists, otherwise (through a module ``__getattr__``) to torch's own object, so
that model code written against torch.nn runs unchanged after ``import manual_conv.nn as nn``. A name that
computes nothing (containers, Parameter, the Module base class, namespaces such as ``init`` and ``utils``, types)
comes back silently; a computing layer or function comes back with one UserWarning per name, saying that it runs
natively, in the words ``convert()`` uses for the layers it leaves. ``from manual_conv.nn import *`` gives the
names ``from torch.nn import *`` gives (likewise for functional, with ``stochastic_depth``), with one warning
naming those that run natively.
"""
import os
import sys
import types
import warnings

# torch.nn classes that hold or pass on other modules or tensors and compute nothing themselves.
NN_WITHOUT_COMPUTATION = frozenset({
    "Module", "Container", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict", "Identity",
    "Unflatten", "DataParallel",
})
# torch.nn.functional's helpers for writing functions, which compute nothing on tensors.
FUNCTIONAL_WITHOUT_COMPUTATION = frozenset({
    "assert_int_or_pair", "boolean_dispatch", "handle_torch_function", "has_torch_function",
    "has_torch_function_unary", "has_torch_function_variadic",
})


def runs_natively(kind, names):
    """The sentence of every warning about computation that stays with torch: kind 'torch.nn layers' or
    'torch.nn.functional functions'; names a string."""
    return f"these {kind} have no manual_conv twin and run natively: {names}"


def _stacklevel_of_caller():
    """warnings.warn's stacklevel for the first frame outside manual_conv (for a warn called by this function's
    caller): the line of user code that asked for the name, whichever of our module ``__getattr__`` passed it on
    (Python 3.12's ``skip_file_prefixes``)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def resolver(module, torch_module, computes, kind, own_names=()):
    """A module ``__getattr__`` (PEP 562) for ``module``, a twin of ``torch_module``: a name ``module`` does not
    define is ``torch_module``'s object, cached in ``module`` (so each name warns once); ``computes(name, obj)``
    says whether to warn that it runs natively. ``__all__`` is torch_module's public names and ``own_names`` (public
    names of ``module`` that torch_module lacks)."""

    def star_names():
        """``__all__``, which ``from module import *`` (and pydoc) reads: the names torch_module's own star import
        gives (it has no ``__all__``: its public names, as they are now), and ``own_names``. Those of torch's not yet
        resolved are resolved at once, after one warning for all that run natively (so that under ``-W error``
        nothing changes)."""
        names = [name for name in dir(torch_module) if not name.startswith("_")]
        unresolved = {name: getattr(torch_module, name) for name in names if name not in vars(module)}
        natively = [f"{torch_module.__name__}.{name}" for name, value in unresolved.items() if computes(name, value)]
        if natively:
            warnings.warn(runs_natively(kind, ", ".join(natively)), UserWarning, stacklevel=_stacklevel_of_caller())
        for name, value in unresolved.items():
            setattr(module, name, value)
        return names + [name for name in own_names if name not in names]

    def __getattr__(name):
        if name == "__all__":
            return star_names()
        if name.startswith("__"):
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        try:
            value = getattr(torch_module, name)
        except AttributeError:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}") from None
        if not name.startswith("_") and computes(name, value):
            warnings.warn(runs_natively(kind, f"{torch_module.__name__}.{name}"), UserWarning,
                          stacklevel=_stacklevel_of_caller())
        setattr(module, name, value)
        return value

    return __getattr__


def nn_layer_computes(name, value):
    """A torch.nn.Module subclass that is not a container or a pass-through."""
    from torch import nn

    return isinstance(value, type) and issubclass(value, nn.Module) and name not in NN_WITHOUT_COMPUTATION


def functional_computes(name, value):
    """A function of tensors: callable, not a class, a module, a type annotation (``typing.Optional``) or a helper
    for writing functions."""
    return (callable(value) and not isinstance(value, (type, types.ModuleType))
            and getattr(value, "__module__", None) != "typing" and name not in FUNCTIONAL_WITHOUT_COMPUTATION)


def directory(module, torch_module):
    """``dir()`` of ``module``: its own names and every public name of ``torch_module``."""
    return sorted(set(vars(module)) | {name for name in dir(torch_module) if not name.startswith("_")})
