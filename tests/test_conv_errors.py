"""Bad calls: every call that makes torch raise makes manual_conv raise the same exception class, with torch's
message where we give the same one and otherwise a message that names the problem. Each row of the tables
below runs against torch.nn.functional / torch.nn and manual_conv.functional / manual_conv.nn."""
import re

import pytest
import torch
import torch.nn.functional as F

import manual_conv.functional as mF
import manual_conv.nn as mnn

SAME = "torch's message, word for word"

# Errors do not depend on values: ones keep the global random stream untouched.
INPUT = torch.ones(2, 4, 6, 6)
WEIGHT = torch.ones(6, 2, 3, 3)  # conv2d weight for groups=2
WEIGHT_T = torch.ones(4, 3, 3, 3)  # conv_transpose2d weight: 4 input channels, 3 output channels
GROUPS_2 = {"groups": 2}


def case(id, name, args, kwargs, message):
    return pytest.param(name, args, kwargs, message, id=f"{name}-{id}")


FUNCTIONAL_CASES = [
    # conv2d: tensor shapes
    case("input-2d", "conv2d", (torch.ones(4, 6), WEIGHT), GROUPS_2, SAME),
    case("input-5d", "conv2d", (torch.ones(1, 2, 4, 6, 6), WEIGHT), GROUPS_2, SAME),
    case("weight-3d", "conv2d", (INPUT, torch.ones(6, 2, 3)), GROUPS_2, r"expected a 4-D weight.*\[6, 2, 3\]"),
    case("weight-5d", "conv2d", (INPUT, torch.ones(6, 2, 3, 3, 3)), GROUPS_2, r"expected a 4-D weight"),
    case("channel-mismatch", "conv2d", (INPUT, torch.ones(6, 2, 3, 3)), {}, SAME),
    case("channel-mismatch-unbatched", "conv2d", (torch.ones(3, 6, 6), WEIGHT), GROUPS_2, SAME),
    case("bias-wrong-size", "conv2d", (INPUT, WEIGHT, torch.ones(5)), GROUPS_2, SAME),
    case("bias-2d", "conv2d", (INPUT, WEIGHT, torch.ones(6, 1)), GROUPS_2, SAME),
    case("kernel-larger-than-padded-input", "conv2d", (torch.ones(1, 4, 2, 2), WEIGHT), GROUPS_2, SAME),
    case("dilated-kernel-larger-than-input", "conv2d", (INPUT, WEIGHT), {"groups": 2, "dilation": 3}, SAME),
    case("empty-input-same-padding", "conv2d", (torch.ones(1, 4, 0, 5), torch.ones(6, 2, 2, 2)),
         {"groups": 2, "padding": "same"}, SAME),
    # conv2d: dtypes and argument types
    case("weight-dtype", "conv2d", (INPUT, WEIGHT.double()), GROUPS_2,
         r"Input type \(float\) and weight type \(double\) should be the same"),
    case("input-dtype", "conv2d", (INPUT.double(), WEIGHT), GROUPS_2, r"should be the same"),
    case("bias-dtype", "conv2d", (INPUT, WEIGHT, torch.ones(6).double()), GROUPS_2, SAME),
    case("input-not-tensor", "conv2d", ([1.0], WEIGHT), GROUPS_2, r"'input' must be Tensor, not list"),
    case("weight-not-tensor", "conv2d", (INPUT, [1.0]), GROUPS_2, r"'weight' must be Tensor, not list"),
    case("bias-not-tensor", "conv2d", (INPUT, WEIGHT, 1.0), GROUPS_2, r"'bias' must be Tensor, not float"),
    case("bias-integer", "conv2d", (INPUT, WEIGHT, torch.ones(6, dtype=torch.long)), GROUPS_2,
         r"Input type \(float\) and bias type \(int64\) should be the same"),
    case("stride-none", "conv2d", (INPUT, WEIGHT), {"stride": None, "groups": 2}, r"'stride'.*NoneType"),
    case("stride-float", "conv2d", (INPUT, WEIGHT), {"stride": 1.5, "groups": 2}, r"'stride'.*float"),
    case("stride-float-in-tuple", "conv2d", (INPUT, WEIGHT), {"stride": (1, 1.0), "groups": 2}, r"'stride'"),
    case("stride-str", "conv2d", (INPUT, WEIGHT), {"stride": "1", "groups": 2}, r"'stride'.*str"),
    case("padding-float", "conv2d", (INPUT, WEIGHT), {"padding": 1.0, "groups": 2}, r"'padding'.*float"),
    case("groups-float", "conv2d", (INPUT, WEIGHT), {"groups": 2.0}, r"'groups' must be int, not float"),
    case("groups-bool", "conv2d", (torch.ones(2, 2, 6, 6), WEIGHT), {"groups": True}, r"'groups' must be int"),
    # conv2d: argument values
    case("stride-0", "conv2d", (INPUT, WEIGHT), {"stride": 0, "groups": 2}, SAME),
    case("stride-negative", "conv2d", (INPUT, WEIGHT), {"stride": (1, -1), "groups": 2}, SAME),
    case("stride-3-values", "conv2d", (INPUT, WEIGHT), {"stride": (1, 1, 1), "groups": 2}, SAME),
    case("stride-no-values", "conv2d", (INPUT, WEIGHT), {"stride": (), "groups": 2}, SAME),
    case("padding-negative", "conv2d", (INPUT, WEIGHT), {"padding": -1, "groups": 2}, SAME),
    case("padding-3-values", "conv2d", (INPUT, WEIGHT), {"padding": [1, 1, 1], "groups": 2}, SAME),
    case("dilation-0", "conv2d", (INPUT, WEIGHT), {"dilation": 0, "groups": 2}, r"dilation"),
    case("dilation-negative", "conv2d", (INPUT, WEIGHT), {"dilation": -1, "groups": 2},
         r"^dilation should be greater than zero"),
    case("groups-0", "conv2d", (INPUT, WEIGHT), {"groups": 0}, SAME),
    case("groups-negative", "conv2d", (INPUT, WEIGHT), {"groups": -2}, SAME),
    case("groups-not-dividing-weight", "conv2d", (torch.ones(2, 8, 6, 6), WEIGHT), {"groups": 4}, SAME),
    case("weight-smaller-than-groups", "conv2d", (INPUT, torch.ones(0, 2, 3, 3)), GROUPS_2, SAME),
    case("bad-padding-string", "conv2d", (INPUT, WEIGHT), {"padding": "full", "groups": 2}, SAME),
    case("same-padding-stride-2", "conv2d", (INPUT, WEIGHT), {"padding": "same", "stride": 2, "groups": 2}, SAME),
    case("same-padding-stride-1-2", "conv2d", (INPUT, WEIGHT),
         {"padding": "same", "stride": (1, 2), "groups": 2}, SAME),
    # conv_transpose2d
    case("input-2d", "conv_transpose2d", (torch.ones(4, 5), WEIGHT_T), {}, SAME),
    case("weight-3d", "conv_transpose2d", (INPUT, torch.ones(4, 3, 3)), {}, r"expected a 4-D weight"),
    case("channel-mismatch", "conv_transpose2d", (torch.ones(2, 3, 5, 5), WEIGHT_T), {}, SAME),
    case("bias-wrong-size", "conv_transpose2d", (INPUT, WEIGHT_T, torch.ones(4)), {}, SAME),
    case("weight-dtype", "conv_transpose2d", (INPUT, WEIGHT_T.double()), {},
         r"Input type \(float\) and weight type \(double\) should be the same"),
    case("bias-dtype", "conv_transpose2d", (INPUT, WEIGHT_T, torch.ones(3).double()), {},
         r"Input type \(float\) and bias type \(double\) should be the same"),
    case("output-padding-too-large", "conv_transpose2d", (INPUT, WEIGHT_T), {"stride": 2, "output_padding": 2}, SAME),
    case("output-padding-equal-to-stride", "conv_transpose2d", (INPUT, WEIGHT_T),
         {"stride": 2, "output_padding": (0, 2)}, SAME),
    case("output-padding-at-dilation", "conv_transpose2d", (INPUT, WEIGHT_T),
         {"dilation": 2, "output_padding": 2}, SAME),
    case("output-padding-negative", "conv_transpose2d", (INPUT, WEIGHT_T), {"output_padding": -1}, SAME),
    case("output-padding-3-values", "conv_transpose2d", (INPUT, WEIGHT_T), {"output_padding": (0, 0, 0)}, SAME),
    case("output-too-small", "conv_transpose2d", (torch.ones(1, 4, 1, 1), WEIGHT_T), {"padding": 2}, SAME),
    case("padding-same", "conv_transpose2d", (INPUT, WEIGHT_T), {"padding": "same"}, SAME),
    case("padding-valid", "conv_transpose2d", (INPUT, WEIGHT_T), {"padding": "valid"}, SAME),
    case("padding-negative", "conv_transpose2d", (INPUT, WEIGHT_T), {"padding": -1}, SAME),
    case("stride-0", "conv_transpose2d", (INPUT, WEIGHT_T), {"stride": 0}, SAME),
    case("stride-float", "conv_transpose2d", (INPUT, WEIGHT_T), {"stride": 2.0}, r"'stride'.*float"),
    case("dilation-0", "conv_transpose2d", (INPUT, WEIGHT_T), {"dilation": 0}, r"dilation"),
    case("groups-0", "conv_transpose2d", (INPUT, WEIGHT_T), {"groups": 0}, SAME),
    case("groups-float", "conv_transpose2d", (INPUT, WEIGHT_T), {"groups": 1.0}, SAME),
    case("groups-not-dividing-weight", "conv_transpose2d", (INPUT, WEIGHT_T), {"groups": 3}, SAME),
]


def assert_same_error(torch_call, our_call, message):
    with pytest.raises(Exception) as torch_error:
        torch_call()
    with pytest.raises(Exception) as our_error:
        our_call()
    assert type(our_error.value) is torch_error.type, f"torch: {torch_error.value!r}, manual_conv: {our_error.value!r}"
    if message is SAME:
        assert str(our_error.value) == str(torch_error.value)
    else:
        assert re.search(message, str(our_error.value)), f"unclear message: {our_error.value}"


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("name, args, kwargs, message", FUNCTIONAL_CASES)
def test_functional_raises_as_torch(backend, name, args, kwargs, message):
    assert_same_error(lambda: getattr(F, name)(*args, **kwargs), lambda: getattr(mF, name)(*args, **kwargs), message)


# Module cases: a function of the namespace (torch.nn or manual_conv.nn) that builds a module and calls it.
MODULE_CASES = {
    "Conv2d-padding-mode-unknown": lambda nn: nn.Conv2d(4, 6, 3, padding_mode="foo"),
    "Conv2d-padding-string-unknown": lambda nn: nn.Conv2d(4, 6, 3, padding="foo"),
    "Conv2d-same-padding-stride-2": lambda nn: nn.Conv2d(4, 6, 3, padding="same", stride=2),
    "Conv2d-in-channels-not-divisible": lambda nn: nn.Conv2d(4, 6, 3, groups=3),
    "Conv2d-out-channels-not-divisible": lambda nn: nn.Conv2d(4, 6, 3, groups=4),
    "Conv2d-groups-0": lambda nn: nn.Conv2d(4, 6, 3, groups=0),
    "Conv2d-channel-mismatch": lambda nn: nn.Conv2d(4, 6, 3)(torch.ones(2, 3, 8, 8)),
    "Conv2d-reflect-padding-too-large":
        lambda nn: nn.Conv2d(4, 6, 3, padding=5, padding_mode="reflect")(torch.ones(2, 4, 4, 4)),
    "Conv2d-circular-2d-input": lambda nn: nn.Conv2d(4, 6, 3, padding=1, padding_mode="circular")(torch.ones(4, 8)),
    "Conv2d-replicate-dtype": lambda nn: nn.Conv2d(4, 6, 3, padding=1, padding_mode="replicate")(INPUT.double()),
    "ConvTranspose2d-padding-mode-reflect": lambda nn: nn.ConvTranspose2d(4, 6, 3, padding_mode="reflect"),
    "ConvTranspose2d-padding-same": lambda nn: nn.ConvTranspose2d(4, 6, 3, padding="same")(INPUT),
    "ConvTranspose2d-channel-mismatch": lambda nn: nn.ConvTranspose2d(4, 6, 3)(torch.ones(2, 3, 5, 5)),
    "ConvTranspose2d-output-size-out-of-range":
        lambda nn: nn.ConvTranspose2d(4, 6, 3, stride=2)(torch.ones(2, 4, 5, 5), output_size=(20, 20)),
    "ConvTranspose2d-output-size-1-value":
        lambda nn: nn.ConvTranspose2d(4, 6, 3, stride=2)(torch.ones(2, 4, 5, 5), output_size=(12,)),
    "ConvTranspose2d-output-size-4-values-unbatched":
        lambda nn: nn.ConvTranspose2d(4, 6, 3, stride=2)(torch.ones(4, 5, 5), output_size=(2, 6, 11, 12)),
}
# Where our message differs: the dtype check reports the weight, torch's the bias (both mismatch); torch.nn turns
# padding='same' into the tuple ('s', 'a', 'm', 'e'), whose elements each side rejects in its own words.
MODULE_MESSAGES = {
    "Conv2d-replicate-dtype": r"Input type \(double\) and weight type \(float\) should be the same",
    "ConvTranspose2d-padding-same": r"'padding' must be an int or a tuple of ints",
}


@pytest.mark.parametrize("case", MODULE_CASES)
def test_modules_raise_as_torch(backend, case):
    build_and_call = MODULE_CASES[case]
    assert_same_error(lambda: build_and_call(torch.nn), lambda: build_and_call(mnn), MODULE_MESSAGES.get(case, SAME))
