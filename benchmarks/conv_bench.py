"""Benchmark manual_conv's conv2d (compiled im2col and Winograd, and the 'python' backend) against PyTorch's native
F.conv2d on CPU.

    python benchmarks/conv_bench.py --interleave    # full run, markdown tables on stdout
    python benchmarks/conv_bench.py --quick         # smoke run: smaller batches, few repeats
    python benchmarks/conv_bench.py --json out.json # also write every measurement as JSON
    python benchmarks/conv_bench.py --thresholds    # Winograd / im2col time over channels, sizes, batches ('auto')

Layers: the two convolutions of pytorch/examples' MNIST model at batch 64, and ResNet-18's 3x3 convolutions at
batch 8. For each: forward (under no_grad) and forward+backward (gradients of input, weight and bias).

Implementations: native (F.conv2d: oneDNN on CPU); 'cpp gemm' and 'cpp winograd', the compiled backend with
manual_conv.set_conv_algorithm('gemm') or ('winograd') (Winograd on the 3x3 stride-1 layers only); 'python', the
Python reference backend under the default algorithm 'auto'.

Reported per implementation:
- median wall time over --repeats runs after warm-up; with --interleave the implementations take turns call by
  call (native, cpp gemm, cpp winograd, ..., native, ...), so that a burst of load on this shared machine hits them
  alike;
- "x native": the median over the rounds of the ratio of this implementation's time to native's in the same round;
- GFLOP/s: 2·N·C_out·H_out·W_out·(C_in/groups)·kH·kW multiply-adds for the forward, 3x that for forward+backward
  (the input and weight gradients each cost one forward), i.e. the direct convolution's work, whatever the
  algorithm does; "% mm": that rate as a percentage of torch.mm's on square float32 matrices (the GEMM ceiling);
- peak memory: the highest total of bytes allocated and not yet freed during one call, from the CPU allocator's
  events recorded by torch.profiler(profile_memory=True). The inputs (and the incoming gradient) exist
  beforehand and are not counted; outputs, gradients and every temporary (including oneDNN's weight/input
  reorders and manual_conv's buffers) are.
Then the accuracy table: for the output, the input gradient and the weight gradient, each float32 implementation's
largest |error| against a float64 computation, as a multiple of native float32's on the same call (the Winograd
accuracy rule: at most 4x), with the Python reference's F(3x3, 3x3) and F(4x4, 3x3) for comparison, and the
algorithm 'auto' runs.
All implementations run with the same torch thread count (--threads, default torch's).
"""
import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import manual_conv
import manual_conv.functional as MF
from manual_conv import algorithm
from manual_conv.ops import winograd


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

    def winograd_applies(self):
        return self.kernel == 3 and self.stride == 1

    def description(self):
        return (f"{self.batch}x{self.in_channels}x{self.size}x{self.size} -> {self.out_channels} ch, "
                f"{self.kernel}x{self.kernel} s{self.stride} p{self.padding}")


LAYERS = [
    Layer("MNIST conv1", 64, 1, 32, 28),
    Layer("MNIST conv2", 64, 32, 64, 26),
    Layer("ResNet-18 64ch 56x56", 8, 64, 64, 56, padding=1),
    Layer("ResNet-18 128ch s2 56x56", 8, 64, 128, 56, stride=2, padding=1),
    Layer("ResNet-18 128ch 28x28", 8, 128, 128, 28, padding=1),
    Layer("ResNet-18 256ch 14x14", 8, 256, 256, 14, padding=1),
    Layer("ResNet-18 512ch 7x7", 8, 512, 512, 7, padding=1),
]


def native_conv(input, weight, bias, layer):
    return F.conv2d(input, weight, bias, layer.stride, layer.padding)


def manual_conv_2d(input, weight, bias, layer):
    return MF.conv2d(input, weight, bias, layer.stride, layer.padding)


@contextlib.contextmanager
def manual_conv_settings(backend, conv_algorithm):
    """Backend and algorithm for a whole step: the backward chooses its kernels when it runs, not at the forward."""
    with manual_conv.use_backend(backend), manual_conv.use_conv_algorithm(conv_algorithm):
        yield


def implementations(layer, skip_python):
    """{name: (conv, settings)}: the implementations timed on ``layer``, native first; each step runs inside
    settings()."""
    chosen = {"native": (native_conv, contextlib.nullcontext),
              "cpp gemm": (manual_conv_2d, lambda: manual_conv_settings("cpp", "gemm"))}
    if layer.winograd_applies():
        chosen["cpp winograd"] = (manual_conv_2d, lambda: manual_conv_settings("cpp", "winograd"))
    if not skip_python:
        chosen["python"] = (manual_conv_2d, lambda: manual_conv_settings("python", "auto"))
    return chosen


def layer_tensors(layer, requires_grad, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    input = torch.randn(layer.batch, layer.in_channels, layer.size, layer.size, generator=generator)
    weight = torch.randn(layer.out_channels, layer.in_channels, layer.kernel, layer.kernel, generator=generator)
    bias = torch.randn(layer.out_channels, generator=generator)
    grad_output = torch.randn(layer.batch, layer.out_channels, layer.output_size(), layer.output_size(),
                              generator=generator)
    tensors = [tensor.to(dtype) for tensor in (input, weight, bias, grad_output)]
    for tensor in tensors[:3]:
        tensor.requires_grad_(requires_grad)
    return tensors


def step_function(conv, settings, layer, mode):
    """(step, reset): step runs one forward (mode 'fwd') or forward+backward ('fwd+bwd') inside settings(); reset,
    run untimed before each step, frees the gradients of the previous one so that no step frees memory it did not
    allocate."""
    input, weight, bias, grad_output = layer_tensors(layer, requires_grad=mode == "fwd+bwd")
    leaves = (input, weight, bias)

    def reset():
        for tensor in leaves:
            tensor.grad = None

    if mode == "fwd":
        def step():
            with settings(), torch.no_grad():
                conv(input, weight, bias, layer)
    else:
        def step():
            with settings():
                conv(input, weight, bias, layer).backward(grad_output)
    return step, reset


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed_rounds(steps, repeats, warmup, interleave, clock="wall"):
    """{name: [seconds per round]} for steps = {name: (step, reset)}. Interleaved, each round runs every step once
    in turn; otherwise each step runs all its rounds before the next step starts. clock 'cpu' counts the process's
    CPU time instead of wall time: on an overloaded machine a step waits for a core in 4 ms time slices, which
    wall time counts and CPU time does not (with one thread; more threads add their spin-waits)."""
    now = CLOCKS[clock]

    def timed(step, reset):
        reset()
        start = now()
        step()
        return now() - start

    times = {name: [] for name in steps}
    if interleave:
        for _ in range(warmup):
            for step, reset in steps.values():
                timed(step, reset)
        for _ in range(repeats):
            for name, (step, reset) in steps.items():
                times[name].append(timed(step, reset))
    else:
        for name, (step, reset) in steps.items():
            for _ in range(warmup):
                timed(step, reset)
            times[name] = [timed(step, reset) for _ in range(repeats)]
    return times


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


def mm_gflops(size, repeats, clock):
    a, b = torch.randn(size, size), torch.randn(size, size)
    steps = {"mm": (lambda: torch.mm(a, b), lambda: None)}
    seconds = statistics.median(timed_rounds(steps, repeats, 2, False, clock)["mm"])
    return 2 * size**3 / seconds / 1e9


def results_and_gradients(conv, settings, layer, dtype):
    """conv's output and the gradients of input and weight for the layer's grad_output, as float64."""
    input, weight, bias, grad_output = layer_tensors(layer, requires_grad=True, dtype=dtype)
    with settings():
        output = conv(input, weight, bias, layer)
        gradients = torch.autograd.grad(output, (input, weight), grad_output)
    return [tensor.double() for tensor in (output, *gradients)]


def winograd_reference(tile):
    """The Python reference's F(tile x tile, 3x3) as a differentiable conv(input, weight, bias, layer) (output and
    both gradients)."""
    def conv(input, weight, bias, layer):
        conv_args = ((1, 1), (layer.padding,) * 2, (1, 1), 1)

        class WinogradReference(torch.autograd.Function):
            @staticmethod
            def forward(ctx, input, weight):
                ctx.save_for_backward(input, weight)
                return winograd.conv2d(input, weight, bias.detach(), *conv_args, tile=tile)

            @staticmethod
            def backward(ctx, grad_output):
                input, weight = ctx.saved_tensors
                return (winograd.conv2d_input_grad(grad_output, weight, input.shape, *conv_args, tile=tile),
                        winograd.conv2d_weight_grad(input, grad_output, weight.shape, *conv_args, tile=tile))

        return WinogradReference.apply(input, weight)

    return conv


# The reference's tiles larger than the compiled kernels' F(2x2, 3x3), whose accuracy the report shows too.
LARGER_TILES = [tile for tile in winograd.TILES if tile > 2]


def accuracy(layer):
    """{implementation: [error x native for output, input gradient, weight gradient]} in float32."""
    exact = results_and_gradients(native_conv, contextlib.nullcontext, layer, torch.float64)

    def largest_errors(conv, settings):
        return [(result - reference).abs().max().item() for result, reference
                in zip(results_and_gradients(conv, settings, layer, torch.float32), exact, strict=True)]

    chosen = implementations(layer, skip_python=True)
    native = largest_errors(*chosen.pop("native"))
    if layer.winograd_applies():
        for tile in LARGER_TILES:
            chosen[f"python winograd F({tile}x{tile})"] = (winograd_reference(tile), contextlib.nullcontext)
    return {name: [error / native_error for error, native_error in zip(largest_errors(*conv), native, strict=True)]
            for name, conv in chosen.items()}


def auto_algorithm(layer):
    """What manual_conv.set_conv_algorithm('auto') runs on this layer (on the 'cpp' backend, CPU, float32)."""
    input = torch.empty(0)
    chosen = algorithm.uses_winograd((layer.batch, layer.in_channels, layer.size, layer.size),
                                     (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel),
                                     (layer.stride,) * 2, (layer.padding,) * 2, (1, 1), 1, input, "cpp")
    return "winograd" if chosen else "gemm"


def run(args):
    torch.set_num_threads(args.threads)
    ceiling = mm_gflops(512 if args.quick else 2048, args.repeats, args.clock)
    results, errors = [], []
    for layer in LAYERS:
        if args.quick:
            layer = dataclasses.replace(layer, batch=max(1, layer.batch // 8))
        for mode in ("fwd", "fwd+bwd"):
            flops = layer.forward_flops() * (1 if mode == "fwd" else 3)
            steps = {name: step_function(conv, settings, layer, mode)
                     for name, (conv, settings) in implementations(layer, args.skip_python).items()}
            times = timed_rounds(steps, args.repeats, args.warmup, args.interleave, args.clock)
            for name, (step, reset) in steps.items():
                seconds = statistics.median(times[name])
                peak_mb = peak_bytes(step, reset) / 2**20
                results.append({"layer": layer.name, "shape": layer.description(), "mode": mode,
                                "implementation": name, "median_ms": seconds * 1e3,
                                "time_vs_native": statistics.median(
                                    mine / native for mine, native in zip(times[name], times["native"])),
                                "gflops": flops / seconds / 1e9, "percent_of_mm": 100 * flops / seconds / 1e9 / ceiling,
                                "peak_mb": peak_mb})
            native_peak = results[-len(steps)]["peak_mb"]
            for row in results[-len(steps):]:
                row["memory_vs_native"] = row["peak_mb"] / native_peak if native_peak else float("nan")
        for name, ratios in accuracy(layer).items():
            errors.append({"layer": layer.name, "implementation": name, "auto": auto_algorithm(layer),
                           "output_error_vs_native": ratios[0], "input_grad_error_vs_native": ratios[1],
                           "weight_grad_error_vs_native": ratios[2]})
    return ceiling, results, errors


# The grids --thresholds sweeps for algorithm.py's 'auto' rule. Channels: (input, output) channels by output size,
# batch 8. Pixels per call: from 64 channels, (batch, output size) calls around its least output pixels per call
# and least output size.
THRESHOLD_CHANNELS = [(1, 32), (8, 8), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (128, 128), (256, 256),
                      (512, 512)]
THRESHOLD_SIZES = [4, 7, 8, 12, 14, 28]
THRESHOLD_WIDE_CHANNELS = [(64, 64), (128, 128), (256, 256), (512, 512)]
THRESHOLD_CALLS = [(1, 8), (1, 12), (1, 14), (1, 16), (2, 7), (2, 14), (4, 7), (8, 4), (8, 6), (8, 7), (32, 3),
                   (32, 4), (64, 1), (64, 2)]


def winograd_over_gemm(args, channels, batch, size):
    """The median over the rounds of cpp winograd / cpp gemm time, forward+backward, interleaved, padding 1, for
    (input, output) channels and an output of size x size (batch 1 with --quick)."""
    layer = Layer(f"{channels[0]}->{channels[1]} ch {batch}x{size}x{size}", 1 if args.quick else batch, *channels,
                  size, padding=1)
    chosen = implementations(layer, skip_python=True)
    steps = {name: step_function(*chosen[name], layer, "fwd+bwd") for name in ("cpp gemm", "cpp winograd")}
    times = timed_rounds(steps, args.repeats, args.warmup, interleave=True, clock=args.clock)
    return statistics.median(winograd / gemm for winograd, gemm in zip(times["cpp winograd"], times["cpp gemm"]))


def threshold_sweep(args):
    """The two grids' ratios: {(channels, size): ratio} at batch 8, and {(channels, (batch, size)): ratio}."""
    torch.set_num_threads(args.threads)
    by_channels = {(channels, size): winograd_over_gemm(args, channels, 8, size)
                   for channels in THRESHOLD_CHANNELS for size in THRESHOLD_SIZES}
    by_calls = {(channels, call): winograd_over_gemm(args, channels, *call)
                for channels in THRESHOLD_WIDE_CHANNELS for call in THRESHOLD_CALLS}
    return by_channels, by_calls


def ratio_table(corner, rows, columns, column_name, ratios):
    lines = [f"| {corner} | " + " | ".join(column_name(column) for column in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in rows:
        lines.append(f"| {row[0]} -> {row[1]} | " + " | ".join(f"{ratios[row, column]:.2f}" for column in columns)
                     + " |")
    return "\n".join(lines)


def threshold_markdown(by_channels, by_calls):
    return "\n\n".join([
        ratio_table("channels in -> out", THRESHOLD_CHANNELS, THRESHOLD_SIZES, lambda size: f"{size}x{size}",
                    by_channels),
        ratio_table("channels in -> out, batch x output", THRESHOLD_WIDE_CHANNELS, THRESHOLD_CALLS,
                    lambda call: f"{call[0]}x{call[1]}x{call[1]}", by_calls)])


def cpu_name():
    """The CPU's model name (/proc/cpuinfo, as lscpu shows it) and torch's vector capability."""
    model = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    return f"{model}, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def markdown(report):
    lines = [
        f"{report['cpu']}; torch {report['torch']}, {report['threads']} threads, {report['clock']} time, "
        f"{'interleaved' if report['interleave'] else 'one implementation after another'}; load average "
        f"{report['load'][0]:.1f} before, {report['load'][1]:.1f} after; torch.mm float32 ceiling: "
        f"{report['mm_gflops']:.1f} GFLOP/s",
        "",
        "| layer | pass | impl | median ms | x native time | GFLOP/s | % of mm | peak MB | x native memory |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['layer']} | {row['mode']} | {row['implementation']} | {row['median_ms']:.2f} | "
            f"{row['time_vs_native']:.2f} | {row['gflops']:.1f} | {row['percent_of_mm']:.0f}% | "
            f"{row['peak_mb']:.1f} | {row['memory_vs_native']:.2f} |"
        )
    lines += [
        "",
        "| layer | 'auto' runs | impl | output error x native | input grad error x native "
        "| weight grad error x native |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in report["accuracy"]:
        lines.append(
            f"| {row['layer']} | {row['auto']} | {row['implementation']} | {row['output_error_vs_native']:.2f} | "
            f"{row['input_grad_error_vs_native']:.2f} | {row['weight_grad_error_vs_native']:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: batch/8, 2 repeats")
    parser.add_argument("--json", metavar="PATH", help="write the measurements as JSON")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 15)")
    parser.add_argument("--interleave", action="store_true", help="alternate the implementations call by call")
    parser.add_argument("--skip-python", action="store_true", help="leave out the (slow) 'python' backend")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="what a step's time is: wall time, or the process's CPU time (see timed_rounds)")
    parser.add_argument("--thresholds", action="store_true",
                        help="instead: Winograd's time over im2col's on grids of channels, sizes and batches "
                             "('auto''s rule)")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 15
    args.warmup = 1 if args.quick else 3
    if not manual_conv.extension_available():
        parser.error("the compiled extension manual_conv._C is not built: pip install --no-build-isolation -e .")
    load_before = os.getloadavg()[0]
    if args.thresholds:
        table = threshold_markdown(*threshold_sweep(args))
        print(f"{cpu_name()}; {args.threads} threads; cpp winograd / cpp gemm {args.clock} time, forward+backward, "
              f"padding 1, interleaved; {'batch 1 (--quick)' if args.quick else 'batch 8 in the first table'}; "
              f"load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after\n")
        print(table)
        return
    ceiling, results, errors = run(args)
    report = {"cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads, "interleave": args.interleave,
              "clock": args.clock,
              "load": [load_before, os.getloadavg()[0]], "mm_gflops": ceiling, "results": results,
              "accuracy": errors}
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
