"""Argument normalisation shared by the op families, matching torch.nn.functional's accepted forms."""
import numbers


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
