"""Peak memory of every manual_conv.functional op, forward+backward, against native PyTorch on the same call.

    python benchmarks/memory_bench.py                 # every op at the benchmark shapes, markdown on stdout
    python benchmarks/memory_bench.py --quick         # smaller batches (the test suite's smoke run)
    python benchmarks/memory_bench.py --json out.json

Shapes: the layers of conv_bench.py (train_mnist.py's two convolutions at batch 64, ResNet-18's 3×3 convolutions
at batch 8), ViT-B/16's patch embedding (a 768×3×16×16 conv of stride 16 on 224×224 images, batch 4), and every
other layer at the shape it has in train_mnist.py's network or in ResNet-18/ViT-B/16 (relu6, silu and hardswish at
the stems of MobileNetV2, EfficientNet-B0 and MobileNetV3; the other activations at train_mnist.py's first
activation, as sigmoid and tanh; in-place forms on an intermediate x · 1, counted for both). For each op, manual_conv
on 'cpp' and on 'python', and native, run the same forward+backward (every floating input requires grad; the
incoming gradient exists beforehand), one after the other in one process.

Peak memory: the largest total of bytes allocated and not yet freed during the call, from the CPU allocator's
events recorded by torch.profiler(profile_memory=True), as conv_bench.py measures it. Inputs and the incoming
gradient exist before the call and are not counted; outputs, gradients and every temporary are. The target
(issue 12): at most 3× native on both backends.
"""
import argparse
import contextlib
import dataclasses
import json
import os
import sys
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_bench  # noqa: E402  (its layers and its peak measurement)

import manual_conv  # noqa: E402
import manual_conv.functional as mF  # noqa: E402

TARGET_RATIO = 3.0


N = "N"  # the batch dim in a Case's shapes: the Case's batch size, divided by 8 with --quick


@dataclasses.dataclass(frozen=True)
class Case:
    """library -> call(library, *tensors) at ``shapes`` (N the batch dim; ("classes", shape) a class target)."""

    name: str
    call: Callable
    batch: int
    shapes: tuple

    def tensors(self, quick):
        generator = torch.Generator().manual_seed(0)
        batch = max(1, self.batch // 8) if quick else self.batch
        made = []
        for shape in self.shapes:
            if shape[0] == "classes":
                sizes = [batch if size == N else size for size in shape[1]]
                made.append(torch.randint(0, 10, sizes, generator=generator))
            else:
                sizes = [batch if size == N else size for size in shape]
                made.append(torch.randn(sizes, generator=generator).requires_grad_())
        return made


def _conv_case(layer):
    def call(library, input, weight, bias):
        return library.conv2d(input, weight, bias, layer.stride, layer.padding)

    shapes = ((N, layer.in_channels, layer.size, layer.size),
              (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel), (layer.out_channels,))
    return Case(f"conv2d {layer.name}", call, layer.batch, shapes)


CASES = [_conv_case(layer) for layer in conv_bench.LAYERS] + [
    Case("conv2d ViT-B/16 patch embedding", lambda lib, x, w, b: lib.conv2d(x, w, b, 16), 4,
         ((N, 3, 224, 224), (768, 3, 16, 16), (768,))),
    Case("conv_transpose2d 64→32 ch 28×28 s2", lambda lib, x, w, b: lib.conv_transpose2d(x, w, b, 2, 1, 1), 8,
         ((N, 64, 28, 28), (64, 32, 3, 3), (32,))),
    Case("max_pool2d MNIST 2×2", lambda lib, x: lib.max_pool2d(x, 2), 64, ((N, 64, 24, 24),)),
    Case("max_pool2d ResNet stem 3×3 s2", lambda lib, x: lib.max_pool2d(x, 3, 2, 1), 8, ((N, 64, 112, 112),)),
    Case("avg_pool2d 2×2", lambda lib, x: lib.avg_pool2d(x, 2), 8, ((N, 256, 28, 28),)),
    Case("adaptive_avg_pool2d ResNet head", lambda lib, x: lib.adaptive_avg_pool2d(x, 1), 8, ((N, 512, 7, 7),)),
    Case("adaptive_avg_pool2d 7×7 from 13×13", lambda lib, x: lib.adaptive_avg_pool2d(x, 7), 8,
         ((N, 256, 13, 13),)),
    Case("relu MNIST conv1", lambda lib, x: lib.relu(x), 64, ((N, 32, 26, 26),)),
    Case("sigmoid", lambda lib, x: lib.sigmoid(x), 64, ((N, 32, 26, 26),)),
    Case("tanh", lambda lib, x: lib.tanh(x), 64, ((N, 32, 26, 26),)),
    Case("gelu ViT MLP", lambda lib, x: lib.gelu(x), 4, ((N, 197, 3072),)),
    Case("relu6 MobileNetV2 stem", lambda lib, x: lib.relu6(x), 8, ((N, 32, 112, 112),)),
    Case("relu6 in place", lambda lib, x: lib.relu6(x * 1, inplace=True), 8, ((N, 32, 112, 112),)),
    Case("hardtanh", lambda lib, x: lib.hardtanh(x, -0.5, 2.0), 64, ((N, 32, 26, 26),)),
    Case("leaky_relu", lambda lib, x: lib.leaky_relu(x, 0.2), 64, ((N, 32, 26, 26),)),
    Case("leaky_relu_", lambda lib, x: lib.leaky_relu_(x * 1, 0.2), 64, ((N, 32, 26, 26),)),
    Case("elu", lambda lib, x: lib.elu(x), 64, ((N, 32, 26, 26),)),
    Case("elu_", lambda lib, x: lib.elu_(x * 1), 64, ((N, 32, 26, 26),)),
    Case("silu EfficientNet-B0 stem", lambda lib, x: lib.silu(x), 8, ((N, 32, 112, 112),)),
    Case("silu in place", lambda lib, x: lib.silu(x * 1, inplace=True), 8, ((N, 32, 112, 112),)),
    Case("mish", lambda lib, x: lib.mish(x), 64, ((N, 32, 26, 26),)),
    Case("hardswish MobileNetV3 stem", lambda lib, x: lib.hardswish(x), 8, ((N, 16, 112, 112),)),
    Case("hardswish in place", lambda lib, x: lib.hardswish(x * 1, inplace=True), 8, ((N, 16, 112, 112),)),
    Case("hardsigmoid", lambda lib, x: lib.hardsigmoid(x), 64, ((N, 32, 26, 26),)),
    Case("softplus", lambda lib, x: lib.softplus(x), 64, ((N, 32, 26, 26),)),
    Case("softmax ViT attention", lambda lib, x: lib.softmax(x, -1), 4, ((N, 12, 197, 197),)),
    Case("log_softmax ImageNet classes", lambda lib, x: lib.log_softmax(x, -1), 64, ((N, 1000),)),
    Case("linear MNIST fc1", lambda lib, x, w, b: lib.linear(x, w, b), 64, ((N, 9216), (128, 9216), (128,))),
    Case("dropout MNIST", lambda lib, x: lib.dropout(x, 0.25), 64, ((N, 64, 12, 12),)),
    Case("cross_entropy ImageNet classes", lambda lib, x, t: lib.cross_entropy(x, t), 64,
         ((N, 1000), ("classes", (N,)))),
    Case("nll_loss ImageNet classes", lambda lib, x, t: lib.nll_loss(x, t), 64, ((N, 1000), ("classes", (N,)))),
    Case("mse_loss", lambda lib, x, y: lib.mse_loss(x, y), 64, ((N, 32, 26, 26), (N, 32, 26, 26))),
    Case("layer_norm ViT", lambda lib, x, w, b: lib.layer_norm(x, (768,), w, b), 4, ((N, 197, 768), (768,), (768,))),
    Case("batch_norm ResNet 64 ch 56×56", lambda lib, x, w, b: lib.batch_norm(
        x, torch.zeros(64), torch.ones(64), w, b, training=True), 8, ((N, 64, 56, 56), (64,), (64,))),
    # Native here is torch's fused (flash) CPU kernel, which keeps only O and a log-sum-exp per row for its
    # backward; ours keeps the L×S attention matrix P, as torch's math path does (_scaled_dot_product_attention_math).
    Case("scaled_dot_product_attention ViT-B/16", lambda lib, q, k, v: lib.scaled_dot_product_attention(q, k, v), 4,
         ((N, 12, 197, 64),) * 3),
    Case("multi_head_attention_forward ViT-B/16", lambda lib, x, w, b, w_out, b_out: lib.multi_head_attention_forward(
        x, x, x, 768, 12, w, b, None, None, False, 0.0, w_out, b_out, need_weights=False)[0], 4,
         ((197, N, 768), (3 * 768, 768), (3 * 768,), (768, 768), (768,))),
    Case("group_norm 32 groups 256 ch 28×28", lambda lib, x, w, b: lib.group_norm(x, 32, w, b), 8,
         ((N, 256, 28, 28), (256,), (256,))),
    Case("instance_norm 64 ch 56×56", lambda lib, x, w, b: lib.instance_norm(x, weight=w, bias=b), 8,
         ((N, 64, 56, 56), (64,), (64,))),
    Case("normalize 2048 features", lambda lib, x: lib.normalize(x, dim=1), 64, ((N, 2048),)),
    Case("adaptive_max_pool2d 6×6 from 13×13", lambda lib, x: lib.adaptive_max_pool2d(x, 6), 8,
         ((N, 256, 13, 13),)),
    Case("stochastic_depth EfficientNet block", lambda lib, x: _stochastic_depth(lib)(x, 0.2, "row"), 8,
         ((N, 112, 14, 14),)),
]


def _stochastic_depth(library):
    """manual_conv's stochastic_depth, or for native torchvision's (torch.nn.functional has none)."""
    if library is F:
        from torchvision.ops import stochastic_depth  # only for this case: importing torchvision costs a second

        return stochastic_depth
    return library.stochastic_depth


def peak_bytes(case, library, backend, quick):
    """Peak bytes of one forward+backward, on ``backend`` for the whole of it (None: native)."""
    tensors = case.tensors(quick)
    with torch.no_grad(), backend_context(backend):
        output = case.call(library, *tensors)
    grad_output = torch.randn_like(output)
    leaves = [tensor for tensor in tensors if tensor.requires_grad]

    def step():
        with backend_context(backend):
            torch.autograd.grad(case.call(library, *tensors), leaves, grad_output)

    return conv_bench.peak_bytes(step, lambda: None)


def backend_context(backend):
    return contextlib.nullcontext() if backend is None else manual_conv.use_backend(backend)


def run(quick):
    implementations = {"native": (F, None), "python": (mF, "python")}
    if manual_conv.extension_available():
        implementations["cpp"] = (mF, "cpp")
    rows = []
    for case in CASES:
        peaks = {name: peak_bytes(case, library, backend, quick)
                 for name, (library, backend) in implementations.items()}
        for name, peak in peaks.items():
            rows.append({"case": case.name, "implementation": name, "peak_mb": peak / 2**20,
                         "vs_native": peak / peaks["native"] if peaks["native"] else float("nan")})
    return rows


def markdown(rows):
    lines = ["| op and shape | impl | peak MB | × native |", "|---|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['case']} | {row['implementation']} | {row['peak_mb']:.1f} | {row['vs_native']:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch / 8")
    parser.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.quick)
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, CPU capability {cpu}, {args.threads} threads; target ≤ {TARGET_RATIO}× native")
    print(markdown(rows))
    over = [row for row in rows if row["implementation"] != "native" and row["vs_native"] > TARGET_RATIO]
    print(f"{len(over)} of {sum(row['implementation'] != 'native' for row in rows)} over the target"
          + "".join(f"\n  {row['case']} ({row['implementation']}): {row['vs_native']:.2f}×" for row in over))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"torch": torch.__version__, "cpu_capability": cpu, "threads": args.threads,
                       "target_ratio": TARGET_RATIO, "results": rows}, file, indent=2)


if __name__ == "__main__":
    main()
