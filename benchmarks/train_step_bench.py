"""Benchmark one training step of train_mnist.py's network: every layer from manual_conv against torch.nn.

    python benchmarks/train_step_bench.py                  # 80 pairs of steps, torch's thread count
    python benchmarks/train_step_bench.py --threads 1 --pairs 40 --json out.json
    python benchmarks/train_step_bench.py --conv-algorithm gemm   # im2col for the convolutions ('auto': default)

A step is what train_mnist.py does per batch: zero_grad, forward, cross-entropy, backward, Adadelta step, on a
fixed random batch of 64 images. The two implementations start from the same weights and alternate step by step
(manual, native, manual, ...), so both see the same machine load; the report gives each one's median step time
and the median of the per-pair ratios manual / native, which a shared machine's bursts of load disturb far less
than whole epochs timed one after the other. Issue 5's target is a ratio ≤ 1.0 on CPU.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_mnist  # noqa: E402  (the network and its layers, exactly as trained)

import manual_conv  # noqa: E402

IMPLEMENTATIONS = ("manual", "native")


def make_step(impl, images, labels):
    """A closure running one training step of train_mnist.Net built from manual_conv.nn or torch.nn."""
    torch.manual_seed(1)
    layers = train_mnist.layer_library(impl)
    model = train_mnist.Net(layers)
    criterion = layers.CrossEntropyLoss()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def step():
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()

    return step


def timed(step):
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=80, help="alternating (manual, native) step pairs to time")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each implementation first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", choices=("cpp", "python"), default=None,
                        help="manual_conv's kernels (default: cpp when the extension is built)")
    parser.add_argument("--conv-algorithm", choices=manual_conv.algorithm.ALGORITHMS, default="auto",
                        help="manual_conv.set_conv_algorithm: im2col or Winograd for the 3x3 convolutions")
    parser.add_argument("--json", type=str, default=None, help="also write the measurements to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        manual_conv.set_backend(args.backend)
    manual_conv.set_conv_algorithm(args.conv_algorithm)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator)
    steps = {impl: make_step(impl, images, labels) for impl in IMPLEMENTATIONS}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    seconds = {impl: [] for impl in IMPLEMENTATIONS}
    for _ in range(args.pairs):
        for impl in IMPLEMENTATIONS:
            seconds[impl].append(timed(steps[impl]))
    report = {
        "threads": torch.get_num_threads(),
        "backend": manual_conv.get_backend(),
        "conv_algorithm": manual_conv.get_conv_algorithm(),
        "batch_size": args.batch_size,
        "pairs": args.pairs,
        "median_ms": {impl: 1e3 * statistics.median(seconds[impl]) for impl in IMPLEMENTATIONS},
        "median_pair_ratio": statistics.median(m / n for m, n in zip(seconds["manual"], seconds["native"])),
    }
    print(f"training step, batch {args.batch_size}, {report['threads']} threads, backend {report['backend']}, "
          f"conv algorithm {report['conv_algorithm']}, "
          f"{args.pairs} pairs: manual {report['median_ms']['manual']:.1f} ms, native "
          f"{report['median_ms']['native']:.1f} ms (medians); manual / native = {report['median_pair_ratio']:.3f} "
          "(median of the pair ratios)")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
