"""Benchmark manual_conv's conv2d ('cpp' and 'python' backends) against PyTorch's native F.conv2d on CPU.

    python benchmarks/conv_bench.py                 # full run, markdown table on stdout
    python benchmarks/conv_bench.py --quick         # smoke run: smaller batches, few repeats
    python benchmarks/conv_bench.py --json out.json # also write every measurement as JSON

Layers: the two convolutions of pytorch/examples' MNIST model at batch 64, and ResNet-18's 3x3 convolutions at
batch 8. For each: forward (under no_grad) and forward+backward (gradients of input, weight and bias).

Reported per implementation:
- median wall time over --repeats runs after warm-up;
- GFLOP/s: 2·N·C_out·H_out·W_out·(C_in/groups)·kH·kW multiply-adds for the forward, 3x that for
  forward+backward (the input and weight gradients each cost one forward);
- "% mm": that rate as a percentage of torch.mm's on square float32 matrices (this machine's GEMM ceiling);
- "x native": time relative to F.conv2d (native CPU conv uses oneDNN);
- peak memory: the highest total of bytes allocated and not yet freed during one call, from the CPU allocator's
  events recorded by torch.profiler(profile_memory=True). The inputs (and the incoming gradient) exist
  beforehand and are not counted; outputs, gradients and every temporary (including oneDNN's weight/input
  reorders and manual_conv's column buffers) are.
All implementations run with the same torch thread count (--threads, default torch's).
"""
import argparse
import dataclasses
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import manual_conv
import manual_conv.functional as MF


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: int
    stride: int = 1
    padding: int = 0
    kernel: int = 3

    def output_size(self):
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def forward_flops(self):
        return 2 * self.batch * self.out_channels * self.output_size() ** 2 * self.in_channels * self.kernel**2

    def description(self):
        return (f"{self.batch}x{self.in_channels}x{self.size}x{self.size} -> {self.out_channels} ch, "
                f"{self.kernel}x{self.kernel} s{self.stride} p{self.padding}")


LAYERS = [
    Layer("MNIST conv1", 64, 1, 32, 28),
    Layer("MNIST conv2", 64, 32, 64, 26),
    Layer("ResNet-18 64ch 56x56", 8, 64, 64, 56, padding=1),
    Layer("ResNet-18 128ch s2 56x56", 8, 64, 128, 56, stride=2, padding=1),
    Layer("ResNet-18 256ch 14x14", 8, 256, 256, 14, padding=1),
    Layer("ResNet-18 512ch 7x7", 8, 512, 512, 7, padding=1),
]


def native_conv(input, weight, bias, layer):
    return F.conv2d(input, weight, bias, layer.stride, layer.padding)


def manual_conv_on(backend):
    def conv(input, weight, bias, layer):
        with manual_conv.use_backend(backend):
            return MF.conv2d(input, weight, bias, layer.stride, layer.padding)

    return conv


def layer_tensors(layer, requires_grad):
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(layer.batch, layer.in_channels, layer.size, layer.size, generator=generator)
    weight = torch.randn(layer.out_channels, layer.in_channels, layer.kernel, layer.kernel, generator=generator)
    bias = torch.randn(layer.out_channels, generator=generator)
    grad_output = torch.randn(layer.batch, layer.out_channels, layer.output_size(), layer.output_size(),
                              generator=generator)
    for tensor in (input, weight, bias):
        tensor.requires_grad_(requires_grad)
    return input, weight, bias, grad_output


def step_function(conv, layer, mode):
    """(step, reset): step runs one forward (mode 'fwd') or forward+backward ('fwd+bwd'); reset, run untimed
    before each step, frees the gradients of the previous one so that no step frees memory it did not allocate."""
    input, weight, bias, grad_output = layer_tensors(layer, requires_grad=mode == "fwd+bwd")
    leaves = (input, weight, bias)

    def reset():
        for tensor in leaves:
            tensor.grad = None

    if mode == "fwd":
        def step():
            with torch.no_grad():
                conv(input, weight, bias, layer)
    else:
        def step():
            conv(input, weight, bias, layer).backward(grad_output)
    return step, reset


def median_seconds(step, reset, repeats, warmup):
    for _ in range(warmup):
        reset()
        step()
    times = []
    for _ in range(repeats):
        reset()
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(step, reset):
    """Peak of (bytes allocated - bytes freed) during one call of step, from the profiler's memory events."""
    reset()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recording:
        step()
    events = sorted((event.start_ns(), event.nbytes()) for event in recording.profiler.kineto_results.events()
                    if event.name() == "[memory]")
    live = peak = 0
    for _, change in events:
        live += change
        peak = max(peak, live)
    return peak


def mm_gflops(size, repeats):
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = median_seconds(lambda: torch.mm(a, b), lambda: None, repeats, warmup=2)
    return 2 * size**3 / seconds / 1e9


def run(args):
    torch.set_num_threads(args.threads)
    implementations = {"native": native_conv, "cpp": manual_conv_on("cpp")}
    if not args.skip_python:
        implementations["python"] = manual_conv_on("python")
    ceiling = mm_gflops(512 if args.quick else 2048, args.repeats)
    results = []
    for layer in LAYERS:
        if args.quick:
            layer = dataclasses.replace(layer, batch=max(1, layer.batch // 8))
        for mode in ("fwd", "fwd+bwd"):
            flops = layer.forward_flops() * (1 if mode == "fwd" else 3)
            rows = []
            for implementation, conv in implementations.items():
                step, reset = step_function(conv, layer, mode)
                seconds = median_seconds(step, reset, args.repeats, warmup=args.warmup)
                rows.append({"layer": layer.name, "shape": layer.description(), "mode": mode,
                             "implementation": implementation, "median_ms": seconds * 1e3,
                             "gflops": flops / seconds / 1e9, "peak_mb": peak_bytes(step, reset) / 2**20})
            native = rows[0]
            for row in rows:
                row["percent_of_mm"] = 100 * row["gflops"] / ceiling
                row["time_vs_native"] = row["median_ms"] / native["median_ms"]
                row["memory_vs_native"] = row["peak_mb"] / native["peak_mb"] if native["peak_mb"] else float("nan")
            results.extend(rows)
    return ceiling, results


def markdown(ceiling, results, threads):
    lines = [
        f"torch {torch.__version__}, {threads} threads; torch.mm float32 ceiling: {ceiling:.1f} GFLOP/s",
        "",
        "| layer | pass | impl | median ms | GFLOP/s | % of mm | x native time | peak MB | x native memory |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        lines.append(
            f"| {row['layer']} | {row['mode']} | {row['implementation']} | {row['median_ms']:.2f} | "
            f"{row['gflops']:.1f} | {row['percent_of_mm']:.0f}% | {row['time_vs_native']:.2f} | "
            f"{row['peak_mb']:.1f} | {row['memory_vs_native']:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch/8, 2 repeats")
    parser.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 15)")
    parser.add_argument("--skip-python", action="store_true", help="leave out the (slow) 'python' backend")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 15
    args.warmup = 1 if args.quick else 3
    if not manual_conv.extension_available():
        parser.error("the compiled extension manual_conv._C is not built: pip install --no-build-isolation -e .")
    ceiling, results = run(args)
    print(markdown(ceiling, results, args.threads))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"torch": torch.__version__, "threads": args.threads, "mm_gflops": ceiling,
                       "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
