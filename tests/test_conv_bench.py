"""benchmarks/conv_bench.py (--quick, and its --thresholds sweep), benchmarks/train_step_bench.py,
benchmarks/memory_bench.py (--quick) and benchmarks/per_sample_grad_bench.py (--quick) run end to end and write
complete reports. No timing is asserted: the numbers of a shared machine say nothing about correctness. Memory is
counted, not timed: the memory benchmark's target is asserted. The per-sample-gradient benchmark asserts itself,
before timing, that its three methods agree."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

import manual_conv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not manual_conv.extension_available(), reason="the compiled extension manual_conv._C is not built")
def test_quick_benchmark_writes_every_measurement(tmp_path):
    report = tmp_path / "bench.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "conv_bench.py"), "--quick", "--repeats", "1",
               "--threads", "1", "--interleave", "--json", str(report)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "| MNIST conv1 | fwd | cpp gemm |" in completed.stdout
    results = json.loads(report.read_text())
    assert results["mm_gflops"] > 0 and results["threads"] == 1 and "capability" in results["cpu"]
    rows = {(row["layer"], row["mode"], row["implementation"]) for row in results["results"]}
    layers = {layer for layer, _, _ in rows}
    strided = {"ResNet-18 128ch s2 56x56"}  # Winograd runs 3x3 stride-1 layers only
    assert len(layers) == 7 and strided < layers
    assert rows == {(layer, mode, implementation) for layer in layers for mode in ("fwd", "fwd+bwd")
                    for implementation in ("native", "cpp gemm", "python", "cpp winograd")
                    if implementation != "cpp winograd" or layer not in strided}
    for row in results["results"]:
        assert row["median_ms"] > 0 and row["gflops"] > 0 and row["peak_mb"] >= 0 and row["time_vs_native"] > 0
    accuracy = {(row["layer"], row["implementation"]): row for row in results["accuracy"]}
    assert set(accuracy) == {(layer, implementation) for layer in layers
                             for implementation in ("cpp gemm", "cpp winograd", "python winograd F(3x3)",
                                                    "python winograd F(4x4)")
                             if implementation == "cpp gemm" or layer not in strided}
    assert {row["auto"] for row in results["accuracy"]} == {"gemm", "winograd"}
    assert all(row["output_error_vs_native"] > 0 for row in results["accuracy"])


@pytest.mark.skipif(not manual_conv.extension_available(), reason="the compiled extension manual_conv._C is not built")
def test_threshold_sweep_prints_its_grids():
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "conv_bench.py"), "--thresholds", "--quick",
               "--repeats", "1", "--threads", "1", "--clock", "cpu"]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    cells = [len(row.split("|")) - 3 for row in rows]
    assert cells == [6] * 10 + [14] * 4, completed.stdout  # channels by size; from 64 channels, by batch and size


def test_training_step_benchmark_writes_its_report(tmp_path):
    report = tmp_path / "step.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step_bench.py"), "--pairs", "2", "--warmup",
               "1", "--threads", "1", "--batch-size", "8", "--json", str(report)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "manual / native =" in completed.stdout
    results = json.loads(report.read_text())
    assert results["threads"] == 1 and results["pairs"] == 2 and results["batch_size"] == 8
    assert results["median_pair_ratio"] > 0 and all(ms > 0 for ms in results["median_ms"].values())


def test_memory_benchmark_reports_every_op_within_the_target(tmp_path):
    """benchmarks/memory_bench.py --quick: every public op, both backends and native, forward+backward peak
    memory, and every manual_conv peak within the issue's 3× native (memory is counted, not timed, so the target
    is asserted). ViT-B/16's patch embedding among them: its input gradient once asked for 39 GB per image."""
    report = tmp_path / "memory.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "memory_bench.py"), "--quick", "--threads", "1",
               "--json", str(report)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    results = json.loads(report.read_text())
    rows = results["results"]
    implementations = {"native", "python"} | ({"cpp"} if manual_conv.extension_available() else set())
    assert {row["implementation"] for row in rows} == implementations
    assert "conv2d ViT-B/16 patch embedding" in {row["case"] for row in rows}
    over = [(row["case"], row["implementation"], round(row["vs_native"], 2)) for row in rows
            if row["implementation"] != "native" and row["vs_native"] > results["target_ratio"]]
    assert not over


@pytest.mark.skipif(importlib.util.find_spec("opacus") is None, reason="Opacus is not installed (make test does)")
def test_per_sample_gradient_benchmark_agrees_with_the_loop_and_opacus(tmp_path):
    """--quick: torch.func's recipe on manual_conv's layers, the loop and Opacus give the same per-sample gradients
    (the benchmark stops otherwise) on both networks, and every row is reported."""
    report = tmp_path / "per_sample.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "per_sample_grad_bench.py"), "--quick", "--threads",
               "1", "--json", str(report)]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "| MNIST CNN | 4 | torch.func | manual_conv |" in completed.stdout
    results = json.loads(report.read_text())
    assert results["threads"] == 1 and not results["native"] and "capability" in results["cpu"]
    rows = results["results"]
    assert {(row["network"], row["method"], row["layers"]) for row in rows} == {
        (network, method, "torch.nn" if method == "Opacus" else "manual_conv")
        for network in ("MNIST CNN", "ResNet-18 block") for method in ("torch.func", "loop", "Opacus")}
    assert all(row["median_ms"] > 0 and row["vs_opacus"] > 0 and row["largest_relative_difference"] < 1e-3
               for row in rows)
