"""Benchmark per-sample gradients (the gradient of each sample's own loss, as DP-SGD clips them): torch.func's recipe
on manual_conv's layers against a loop of single-sample backward passes and against Opacus's GradSampleModule.

    python benchmarks/per_sample_grad_bench.py                 # both networks, 15 interleaved rounds
    python benchmarks/per_sample_grad_bench.py --quick         # smoke run: tiny batches, 1 round
    python benchmarks/per_sample_grad_bench.py --native        # torch.nn layers in the recipe and the loop
    python benchmarks/per_sample_grad_bench.py --json out.json --threads 2 --backend cpp

Networks (float32, the same weights for every method):
- "MNIST CNN": train_mnist.py's network, batch 64 of 1x28x28 images, cross-entropy on 10 classes, with its two
  dropouts in eval mode (the identity): a dropout mask drawn per sample differs between the methods, and the
  gradients could not be compared. The rest is in training mode, the only one in which Opacus's hooks record.
- "ResNet-18 block": torchvision's BasicBlock(64, 64) (ResNet-18's layer1 block), batch 8 of 64x56x56 inputs, mean
  squared error against a random target, with each BatchNorm2d replaced by GroupNorm(32, 64), as Opacus's
  ModuleValidator.fix replaces it: a BatchNorm in training mode mixes the samples of a batch, so a sample's
  gradient depends on the others and "per-sample gradient" has no meaning, and Opacus refuses any layer with
  buffers, eval-mode BatchNorm too. GroupNorm normalises each sample by itself. Its ReLU and residual sum are
  computed out of place, as Opacus's backward hooks require (OutOfPlaceBasicBlock).

Methods, each giving {parameter name: tensor (batch, *parameter.shape)}:
- "torch.func": torch.func.vmap over the samples of torch.func.grad of one sample's loss, the parameters passed by
  torch.func.functional_call (the recipe of torch's per-sample-gradients tutorial), on manual_conv's layers
  (manual_conv.nn for the MNIST CNN, manual_conv.convert for the block);
- "loop": one forward and torch.autograd.grad per sample, on the same manual_conv layers;
  both with manual_conv's loss (manual_conv.functional.cross_entropy or mse_loss);
- "Opacus": opacus.GradSampleModule (hooks that compute each layer's per-sample gradient from its saved
  activations and backpropagated gradients) on the torch.nn network: one forward and backward of the batch.
With --native the first two run on the torch.nn network and loss instead (torch's own vmap rules): a reference, and the
way to try the harness where manual_conv's layers have no vmap rules.

Before timing, the three methods' per-sample gradients are checked to agree (float32 rounding apart); the run
stops if they do not. Then the methods take turns call by call for --rounds rounds (conv_bench's interleaving),
and each is reported with its median time, per sample, and "x Opacus": the median over the rounds of its time over
Opacus's in the same round. The CPU (model name and torch's vector capability), the thread count and the load
average before and after are printed with the table. The issue's target: torch.func on manual_conv faster than
Opacus (x Opacus < 1).
"""
import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import warnings
from typing import Callable

import torch
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import conv_bench  # noqa: E402  (its interleaved timing and CPU name)
import train_mnist  # noqa: E402  (the network, exactly as trained)

import manual_conv  # noqa: E402

METHODS = ("torch.func", "loop", "Opacus")
# float32 per-sample gradients of the three methods agree to rounding: sums over up to 56·56 positions in
# different orders.
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    build: Callable[[], nn.Module]  # the torch.nn network, freshly initialised
    to_manual_conv: Callable[[nn.Module], nn.Module]  # the same network (same weights) on manual_conv's layers
    loss: str  # the name of a loss (mean over the batch) in torch.nn.functional and manual_conv.functional
    batch: int
    sample_shape: tuple
    make_targets: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (inputs, generator) -> targets


def without_dropout(model):
    """``model`` in training mode but for its dropouts (the identity in eval mode)."""
    for module in model.modules():
        module.train(not isinstance(module, nn.Dropout))
    return model


def mnist_cnn():
    return without_dropout(train_mnist.Net(train_mnist.layer_library("native")))


def mnist_cnn_on_manual_conv(network):
    manual = without_dropout(train_mnist.Net(train_mnist.layer_library("manual")))
    manual.load_state_dict(network.state_dict())
    return manual


class OutOfPlaceBasicBlock(torchvision.models.resnet.BasicBlock):
    """torchvision's BasicBlock (stride 1, no downsampling) with its ReLU and its residual sum out of place: Opacus's
    backward hooks refuse an in-place change of a hooked layer's output (pytorch/pytorch#61519), and torchvision's
    forward makes two (ReLU(inplace=True) and ``out += identity``). The computation is the same."""

    def __init__(self, channels, norm_layer):
        super().__init__(channels, channels, norm_layer=norm_layer)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def resnet_block():
    """ResNet-18's layer1 block with GroupNorm for BatchNorm, as Opacus's ModuleValidator.fix makes it."""
    return OutOfPlaceBasicBlock(64, norm_layer=lambda channels: nn.GroupNorm(math.gcd(32, channels), channels))


NETWORKS = [
    Network("MNIST CNN", mnist_cnn, mnist_cnn_on_manual_conv, "cross_entropy", 64, (1, 28, 28),
            lambda inputs, generator: torch.randint(0, 10, (len(inputs),), generator=generator)),
    Network("ResNet-18 block", resnet_block, manual_conv.convert, "mse_loss", 8, (64, 56, 56),
            lambda inputs, generator: torch.randn(inputs.shape, generator=generator)),
]


def quick(network):
    """A smoke-run size: batch 4 (MNIST) or 2 (the block, on 14x14 inputs)."""
    if network.name == "MNIST CNN":
        return dataclasses.replace(network, batch=4)
    return dataclasses.replace(network, batch=2, sample_shape=(64, 14, 14))


def torch_func_gradients(model, loss):
    """compute(inputs, targets) -> per-sample gradients by vmap(grad(functional_call))."""
    parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
    buffers = {name: buffer.detach() for name, buffer in model.named_buffers()}

    def sample_loss(parameters, input, target):
        output = torch.func.functional_call(model, (parameters, buffers), (input.unsqueeze(0),))
        return loss(output, target.unsqueeze(0))

    vmapped = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    return lambda inputs, targets: vmapped(parameters, inputs, targets)


def looped_gradients(model, loss):
    """compute(inputs, targets) -> per-sample gradients by one backward pass per sample."""
    names, parameters = zip(*model.named_parameters())

    def compute(inputs, targets):
        samples = [torch.autograd.grad(loss(model(input.unsqueeze(0)), target.unsqueeze(0)), parameters)
                   for input, target in zip(inputs, targets)]
        return {name: torch.stack(gradients) for name, gradients in zip(names, zip(*samples))}

    return compute


def opacus_gradients(model, loss):
    """compute(inputs, targets) -> per-sample gradients by Opacus's GradSampleModule: one forward and backward of
    the batch, the batch-mean loss (loss_reduction="mean": Opacus scales its per-sample gradients by the batch
    size, so that they are each sample's own loss's)."""
    from opacus import GradSampleModule

    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    # Its hooks fire on the first layer's output gradient, as the inputs need none: expected, not worth a warning.
    warnings.filterwarnings("ignore", "Full backward hook is firing when gradients are computed with respect to "
                            "module outputs")
    named = list(model.named_parameters())

    def compute(inputs, targets):
        for _, parameter in named:
            parameter.grad = parameter.grad_sample = None
        loss(wrapped(inputs), targets).backward()
        return {name: parameter.grad_sample for name, parameter in named}

    return compute


def methods(network, native):
    """{method: compute(inputs, targets)} on one network; the torch.func recipe and the loop on manual_conv's
    layers and loss (torch.nn's with ``native``), Opacus on torch.nn's; every model with the same weights."""
    torch.manual_seed(0)
    model = network.build()
    native_loss = getattr(nn.functional, network.loss)
    if native:
        recipe_model, recipe_loss = model, native_loss
    else:
        recipe_model, recipe_loss = network.to_manual_conv(model), getattr(manual_conv.functional, network.loss)
    # Opacus hooks its model and stores grad_sample on its parameters: it gets a copy of its own.
    opacus_model = network.build()
    opacus_model.load_state_dict(model.state_dict())
    return {"torch.func": torch_func_gradients(recipe_model, recipe_loss),
            "loop": looped_gradients(recipe_model, recipe_loss),
            "Opacus": opacus_gradients(opacus_model, native_loss)}


def check_agreement(network, computes, inputs, targets):
    """Every method's per-sample gradients equal the loop's (same names and shapes, values to float32 rounding);
    returns the largest |difference| relative to the largest |gradient| of each parameter, over the methods."""
    reference = computes["loop"](inputs, targets)
    worst = 0.0
    for method, compute in computes.items():
        gradients = compute(inputs, targets)
        assert gradients.keys() == reference.keys(), (network.name, method, gradients.keys())
        for name, expected in reference.items():
            torch.testing.assert_close(gradients[name], expected, **TOLERANCE, msg=lambda message: (
                f"{network.name}, {method}, {name}: per-sample gradients differ from the loop's: {message}"))
            scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
            worst = max(worst, ((gradients[name] - expected).abs().max() / scale).item())
    return worst


def run(args):
    rows = []
    for network in NETWORKS:
        if args.quick:
            network = quick(network)
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(network.batch, *network.sample_shape, generator=generator)
        targets = network.make_targets(inputs, generator)
        computes = methods(network, args.native)
        worst = check_agreement(network, computes, inputs, targets)
        steps = {method: (lambda compute=compute: compute(inputs, targets), lambda: None)
                 for method, compute in computes.items()}
        times = conv_bench.timed_rounds(steps, args.rounds, args.warmup, interleave=True)
        for method in METHODS:
            median = statistics.median(times[method])
            rows.append({"network": network.name, "batch": network.batch, "method": method,
                         "layers": "torch.nn" if args.native or method == "Opacus" else "manual_conv",
                         "median_ms": 1e3 * median, "ms_per_sample": 1e3 * median / network.batch,
                         "vs_opacus": statistics.median(
                             mine / opacus for mine, opacus in zip(times[method], times["Opacus"])),
                         "largest_relative_difference": worst})
    return rows


def markdown(report):
    lines = [f"{report['cpu']}; torch {report['torch']}, opacus {report['opacus']}, {report['threads']} threads, "
             f"backend {report['backend']}, {report['rounds']} interleaved rounds; load average "
             f"{report['load'][0]:.1f} before, {report['load'][1]:.1f} after", "",
             "| network | batch | method | layers | median ms | ms per sample | x Opacus |",
             "|---|---:|---|---|---:|---:|---:|"]
    for row in report["results"]:
        lines.append(f"| {row['network']} | {row['batch']} | {row['method']} | {row['layers']} | "
                     f"{row['median_ms']:.1f} | {row['ms_per_sample']:.2f} | {row['vs_opacus']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 4 and 2 (block on 14x14), 1 round")
    parser.add_argument("--native", action="store_true",
                        help="torch.nn layers and loss in the torch.func recipe and the loop instead of manual_conv's")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds (default 15; 1 quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2; 0 quick)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--backend", choices=("cpp", "python"), default=None,
                        help="manual_conv's kernels (default: cpp when the extension is built)")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 15)
    args.warmup = (0 if args.quick else 2) if args.warmup is None else args.warmup
    try:
        import opacus
    except ImportError:
        parser.error("Opacus is not installed: pip install opacus")
    torch.set_num_threads(args.threads)
    if args.backend:
        manual_conv.set_backend(args.backend)
    load_before = os.getloadavg()[0]
    results = run(args)
    report = {"cpu": conv_bench.cpu_name(), "torch": torch.__version__, "opacus": opacus.__version__,
              "threads": args.threads, "backend": manual_conv.get_backend(), "native": args.native,
              "rounds": args.rounds, "load": [load_before, os.getloadavg()[0]], "results": results}
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
