"""manual_conv.enable(): the functional calls inside model code, computed by manual_conv's twins.

    with manual_conv.enable():         # or @manual_conv.enable on a function
        loss = model(x).softmax(-1)    # F.relu, torch.tanh, x.softmax(-1), F.layer_norm ... run by hand

``convert()`` swaps layers; model code also calls torch's functions directly (torchvision's DenseNet calls
``F.relu``, Swin ``F.linear`` and ``softmax``, ConvNeXt's LayerNorm2d ``F.layer_norm``). ``enable`` is a
``torch.overrides.TorchFunctionMode``: while it is active, torch hands every call of an overridable function
(``torch.*``, ``torch.nn.functional.*``, Tensor methods) to ``enable.__torch_function__`` before running it.

Routes. A public function NAME of ``manual_conv.functional`` (a twin) takes the calls of ``torch.nn.functional.NAME``,
``torch.NAME`` and ``Tensor.NAME``, and of their in-place forms NAME_ (to the twin NAME_ if there is one, else to
NAME with ``inplace=True`` if NAME takes it). The routes are built from the names manual_conv.functional defines,
so a twin added there is routed without a change here.
  - ``torch.nn.functional.NAME`` has the twin's signature (the twin is a drop-in): its call goes to the twin as it is,
    and the twin raises what torch would for arguments it refuses.
  - ``torch.NAME``, ``Tensor.NAME`` and the in-place forms are ATen's operators, whose schemas name their arguments
    (``torch.softmax(input, dim, dtype=None)``, ``torch.dropout(input, p, train)``, ``Tensor.relu_(self)``). The
    call is bound to a schema and passed to the twin by name: ``self`` is the twin's first argument, ``train`` is
    ``training``; ``cudnn_enable(d)`` (which library computes) is dropped; an argument the call leaves out whose
    schema default differs from the twin's is passed with the schema's value. A call that binds to no schema, or
    that gives an argument the twin does not have (``out=``), passes through to torch unchanged.
Every other call (building blocks such as view, add, matmul, mean; functions without a twin) passes through to
torch unchanged and without a warning; ``convert()`` names the layers that stay native.

Our own code is never rerouted. A twin the mode calls runs with the mode popped (as ``TorchFunctionMode`` does for
any call made inside ``__torch_function__``), so our softmax may call tensor ops without recursion. Calls made by
manual_conv's code reached otherwise (a converted layer calling ``manual_conv.functional`` directly, the autograd
Functions' forward and backward, run while the mode is active) pass through too: the mode looks up the code that
made the call, the first frame outside torch, and steps aside when it is manual_conv's. Under ``torch.compile``
Dynamo traces ``__torch_function__``; it cannot trace ``sys._getframe``, so the same question is asked of the
frames Dynamo is tracing (``_traced_caller_module``), once per call site while tracing. A compiled model therefore
routes exactly the calls eager mode routes, and its graph holds no trace of the mode.

Cost in eager mode: every torch call in the enabled region goes through one Python function (a dictionary look-up;
for a call with a route, also the frame look-up and the binding), a few microseconds per call.
"""
import inspect
import sys
import types

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._contextlib import _NoParamDecoratorContextManager

from . import functional as _functional
from . import torch_names

_OWN_PACKAGE = __name__.rpartition(".")[0]  # "manual_conv"
_CONVERT_MODULE = _OWN_PACKAGE + ".convert"

# Schema argument names that mean the same as a twin's argument of another name.
_SCHEMA_RENAMES = {"train": "training"}
# Schema arguments that choose which library computes, not what: the twin computes by hand whatever they say.
_SCHEMA_BACKEND_HINTS = frozenset({"cudnn_enable", "cudnn_enabled"})


class enable(TorchFunctionMode, _NoParamDecoratorContextManager):  # noqa: N801 (a context manager, as torch.no_grad)
    """Context manager and decorator: inside it, calls of torch's functions and Tensor methods that have a twin in
    manual_conv.functional run the twin (see the module docstring for which calls and how). Re-entrant; nests with
    other torch function modes. As a decorator it behaves as torch.no_grad's (torch's own decorator classes): with
    or without parentheses, each call entering a fresh mode, and a generator function runs each of its steps under
    the mode."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = _ROUTES.get(func)
        if route is not None and not _called_by_own_code():
            call = route.bind(args, kwargs)
            if call is not None:
                return route.twin(*call[0], **call[1])
        return func(*args, **kwargs)


def _called_by_own_code():
    """Whether the torch call being handled was made by manual_conv's own code: the first frame that is neither
    this module's nor torch's (which adds frames between a caller and the mode, e.g. torch.nn.functional's Python
    functions and torch.overrides.handle_torch_function) belongs to a manual_conv module."""
    if torch.compiler.is_compiling():
        caller = _traced_caller_module()
    else:
        frame = sys._getframe(1)
        while frame is not None and _skipped(frame.f_globals.get("__name__", "")):
            frame = frame.f_back
        caller = "" if frame is None else frame.f_globals.get("__name__", "")
    return caller == _OWN_PACKAGE or caller.startswith(_OWN_PACKAGE + ".")


def _skipped(module_name):
    """Frames between the caller and the mode: this module's, torch's, and convert's (the converted forward's
    wrapper only enters the mode: a layer a torch container calls from there is model code's, not ours)."""
    return module_name in (__name__, _CONVERT_MODULE, "torch") or module_name.startswith("torch.")


def _traced_caller_module():
    """_called_by_own_code's caller, while Dynamo traces: Dynamo runs this function when it meets it (instead of
    tracing it) and puts its result into the graph as a constant. The frames being traced are Dynamo's instruction
    translators, innermost last on the output graph's stack, each linked to the one that called it (``parent``)
    and holding its frame's globals."""
    from torch._dynamo.symbolic_convert import InstructionTranslator

    translator = InstructionTranslator.current_tx().output.current_tx
    while translator is not None and _skipped(translator.f_globals.get("__name__", "")):
        translator = translator.parent
    return "" if translator is None else translator.f_globals.get("__name__", "")


# What torch._dynamo.assume_constant_result(_traced_caller_module) does (it only sets this attribute), without
# importing torch._dynamo, which takes seconds, into every program that imports manual_conv.
_traced_caller_module._dynamo_marked_constant = True


# ------------------------------------------------------------------------------------------------------------ routes


class _Route:
    """A call of torch.nn.functional.NAME, passed to its twin as it is, or with ``fixed`` arguments set
    (return_indices=True for torch.nn.functional.NAME_with_indices)."""

    def __init__(self, twin, fixed=None):
        self.twin = twin
        self.fixed = fixed
        self.signature = inspect.signature(twin)

    def bind(self, args, kwargs):
        if not self.fixed:
            return args, kwargs
        try:
            call = self.signature.bind(*args, **kwargs)
        except TypeError:
            return None  # torch raises its own error
        call.arguments.update(self.fixed)
        return call.args, call.kwargs


class _SchemaRoute(_Route):
    """A call of an ATen operator (torch.NAME, Tensor.NAME, their in-place forms), bound to one of its schemas and
    passed to the twin by name, with ``fixed`` arguments added (inplace=True for an in-place form)."""

    def __init__(self, twin, schemas, fixed):
        super().__init__(twin, fixed)
        twin_parameters = self.signature.parameters
        first = next(iter(twin_parameters))
        self.overloads = [
            overload for overload in (_Overload(schema, twin_parameters, first) for schema in schemas)
            if overload.usable
        ]

    def bind(self, args, kwargs):
        for overload in self.overloads:
            call = overload.bind(args, kwargs)
            if call is not None:
                return (), {**call, **self.fixed}
        return None


class _Overload:
    """One schema of an operator, as the twin's arguments: the schema's positional names and all its names, the
    required ones, the twin's name of each (None for a backend hint, which is dropped), and the values to pass for
    arguments a call leaves out where the schema's default differs from the twin's."""

    def __init__(self, schema, twin_parameters, first):
        self.positional = [argument.name for argument in schema.arguments if not argument.kwarg_only]
        self.names = {argument.name for argument in schema.arguments}
        self.required = {argument.name for argument in schema.arguments if not argument.has_default_value()}
        self.twin_names, self.defaults = {}, {}
        for argument in schema.arguments:
            twin_name = first if argument.name == "self" else _SCHEMA_RENAMES.get(argument.name, argument.name)
            if argument.name in _SCHEMA_BACKEND_HINTS:
                self.twin_names[argument.name] = None
            elif twin_name in twin_parameters:
                self.twin_names[argument.name] = twin_name
                twin_default = twin_parameters[twin_name].default
                if argument.has_default_value() and not _same_default(argument.default_value, twin_default):
                    self.defaults[twin_name] = argument.default_value
        # A required argument the twin does not have (the out= overloads' out) makes the schema useless here.
        self.usable = self.required <= self.twin_names.keys()

    def bind(self, args, kwargs):
        """{twin argument: value} for a call that binds to this schema and gives only arguments the twin has,
        else None. torch.* functions name their first argument ``input`` where the schema says ``self``."""
        if len(args) > len(self.positional):
            return None
        bound = dict(zip(self.positional, args))
        for name, value in kwargs.items():
            name = "self" if name == "input" and "self" in self.names else name
            if name in bound or name not in self.names:
                return None
            bound[name] = value
        if not self.required <= bound.keys() <= self.twin_names.keys():
            return None
        call = dict(self.defaults)
        call.update((self.twin_names[name], value) for name, value in bound.items() if self.twin_names[name])
        return call


def _same_default(schema_default, twin_default):
    """Whether leaving an argument out means the same to the operator and the twin: equal defaults, a list of
    equal ints against one int (padding [0, 0] and 0), or an empty list against None (max_pool2d's stride: the
    kernel size)."""
    if schema_default == twin_default:
        return True
    if isinstance(schema_default, list):
        return (not schema_default and twin_default is None) or all(v == twin_default for v in schema_default)
    return False


def _twin_functions():
    """{name: function} for every public function manual_conv.functional defines."""
    return {
        name: value for name, value in vars(_functional).items()
        if not name.startswith("_") and inspect.isfunction(value)
        and value.__module__.partition(".")[0] == _OWN_PACKAGE
    }


def _schemas(operator_name):
    return torch._C._jit_get_schemas_for_operator(f"aten::{operator_name}")


def _routes():
    """{torch callable: its route to a twin}, for every twin of manual_conv.functional."""
    twins = _twin_functions()
    routes = {}
    for name, twin in twins.items():
        parameters = inspect.signature(twin).parameters
        functional_alias = getattr(F, name, None)
        if callable(functional_alias):
            routes[functional_alias] = _Route(twin)
        if "return_indices" in parameters and hasattr(F, name + "_with_indices"):
            # torch.nn.functional.NAME(..., return_indices=True) dispatches as NAME_with_indices
            routes[getattr(F, name + "_with_indices")] = _Route(twin, {"return_indices": True})
        for alias in (getattr(torch, name, None), getattr(torch.Tensor, name, None)):
            if alias is not None and alias not in routes and _schemas(name):
                routes[alias] = _SchemaRoute(twin, _schemas(name), {})
        inplace_name = name + "_"
        if name.endswith("_") or inplace_name in twins or "inplace" not in parameters:
            continue
        for namespace in (F, torch, torch.Tensor):
            alias = getattr(namespace, inplace_name, None)
            if alias is not None and alias not in routes and _schemas(inplace_name):
                routes[alias] = _SchemaRoute(twin, _schemas(inplace_name), {"inplace": True})
    return routes


_ROUTES = _routes()


def routed_names():
    """The names under which torch's functions are routed to a twin (relu, relu_, softmax, ...)."""
    return {getattr(alias, "__name__", "") for alias in _ROUTES}


def native_function_names():
    """The names under which model code calls a torch layer function that enable() leaves to torch: each
    computing function of torch.nn.functional without a route (hardswish while it has no twin, interpolate, pad,
    ...), and the in-place forms of twins that have no route (sigmoid_, tanh_: the twins take no ``inplace``)."""
    routed = routed_names()
    functional = {name for name in dir(F) if not name.startswith("_")
                  and isinstance(getattr(F, name), (types.FunctionType, types.BuiltinFunctionType))
                  and torch_names.functional_computes(name, getattr(F, name))}
    inplace = {name + "_" for name in _twin_functions()
               if any(hasattr(namespace, name + "_") for namespace in (F, torch, torch.Tensor))}
    return (functional | inplace) - routed
