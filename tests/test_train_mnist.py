"""train_mnist.py end to end: IDX loading, the offline error, a real short training on Fashion-MNIST, resume (which
takes the settings left out from the checkpoint), one line and exit code 2 for every bad flag value, file or
request, results written under the user's umask, the plots, data-parallel training with two gloo processes, and a
training graph made only of manual_conv's Functions."""
import gzip
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import manual_conv  # noqa: E402
import train_mnist  # noqa: E402

SCRIPT = str(ROOT / "train_mnist.py")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)

# Measured: --limit-train 6000 --limit-test 1000 --epochs 1 (seed 1) reaches 0.787 (impl manual); the floor
# leaves room for other BLAS builds while still failing a network that does not learn.
FASHION_6000_ONE_EPOCH_FLOOR = 0.70


def write_idx(path, array):
    """An unsigned-byte IDX file (gzipped when the name ends in .gz): magic 0x0000 0x08 ndim, sizes, values."""
    payload = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    payload += array.numpy().tobytes()
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as file:
        file.write(payload)


def synthetic_split(count, generator):
    """Images a CNN learns in one epoch: class k is a bright 5x5 square at the k-th of 10 places, over noise."""
    labels = torch.randint(0, 10, (count,), generator=generator, dtype=torch.uint8)
    images = torch.randint(0, 90, (count, 28, 28), generator=generator, dtype=torch.uint8)
    for index, label in enumerate(labels.tolist()):
        top, left = 3 + 13 * (label // 5), 1 + 5 * (label % 5)
        images[index, top:top + 5, left:left + 5] = 230
    return images, labels


def write_synthetic_dataset(folder, train_count=256, test_count=128, gzipped=False):
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    suffix = ".gz" if gzipped else ""
    for split, count in (("train", train_count), ("test", test_count)):
        images, labels = synthetic_split(count, generator)
        images_stem, labels_stem = train_mnist.IDX_FILES[split]
        write_idx(folder / (images_stem + suffix), images)
        write_idx(folder / (labels_stem + suffix), labels)
    return folder


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_metrics(path):
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_round_trips_plain_and_gzipped_files(tmp_path, gzipped):
    array = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8)
    path = tmp_path / ("images.idx.gz" if gzipped else "images.idx")
    write_idx(path, array)
    assert torch.equal(train_mnist.read_idx(path), array)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, torch.zeros(10, dtype=torch.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(train_mnist.DataUnavailable, match="truncated"):
        train_mnist.read_idx(path)


@pytest.mark.parametrize("gzipped", [False, True])
def test_plain_folder_is_found_and_normalised_like_to_tensor_then_normalize(tmp_path, gzipped):
    folder = write_synthetic_dataset(tmp_path / "idx", gzipped=gzipped)
    assert train_mnist.locate_data("mnist", folder, allow_download=False) == folder
    dataset = train_mnist.load_split(folder, "test", (0.1307, 0.3081), limit=100)
    raw_images = train_mnist.read_idx(folder / ("t10k-images-idx3-ubyte" + (".gz" if gzipped else "")))
    expected = (raw_images[:100].float().unsqueeze(1) / 255 - 0.1307) / 0.3081
    images, labels = dataset[torch.arange(100)]
    assert images.shape == (100, 1, 28, 28) and labels.dtype == torch.int64 and len(dataset) == 100
    torch.testing.assert_close(images, expected)


def test_damaged_or_foreign_data_gives_data_unavailable(tmp_path):
    damaged = tmp_path / "images.gz"
    write_idx(damaged, torch.zeros(4, 28, 28, dtype=torch.uint8))
    damaged.write_bytes(damaged.read_bytes()[:-9])  # a cut gzip stream
    with pytest.raises(train_mnist.DataUnavailable, match="cannot be read"):
        train_mnist.read_idx(damaged)
    (tmp_path / "short").write_bytes(b"\x00\x00")
    with pytest.raises(train_mnist.DataUnavailable, match="not an unsigned-byte IDX file"):
        train_mnist.read_idx(tmp_path / "short")
    small = write_synthetic_dataset(tmp_path / "small")
    write_idx(small / "t10k-images-idx3-ubyte", torch.zeros(128, 14, 14, dtype=torch.uint8))
    with pytest.raises(train_mnist.DataUnavailable, match="not 28x28 images"):
        train_mnist.load_split(small, "test", (0.5, 0.5), limit=None)
    write_idx(small / "train-labels-idx1-ubyte", torch.full((256,), 10, dtype=torch.uint8))
    with pytest.raises(train_mnist.DataUnavailable, match="labels go up to 10"):
        train_mnist.load_split(small, "train", (0.5, 0.5), limit=None)


def test_torchvision_layout_is_found(tmp_path):
    raw = write_synthetic_dataset(tmp_path / "FashionMNIST" / "raw")
    assert train_mnist.locate_data("fashion-mnist", tmp_path, allow_download=False) == raw


def test_missing_data_offline_gives_one_message_and_exit_code_2(tmp_path):
    # Any download attempt goes to a closed local port, so this holds with or without a network.
    environment = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                   "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "",
                   "NO_PROXY": ""}
    empty = tmp_path / "nothing-here"
    result = subprocess.run([sys.executable, SCRIPT, "--data-dir", str(empty), "--epochs", "1"], cwd=tmp_path,
                            env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr
    assert message.count("train_mnist.py: error:") == 1
    assert "train-images-idx3-ubyte" in message and str(empty) in message and "--data-dir" in message
    assert "--dataset fashion-mnist" in message, "MNIST's message names the data set that needs no download"
    assert not empty.exists(), "the failed download left empty folders behind"


# ------------------------------------------------------------------------------------------------------ plots


def fake_history(epochs, eval_name, shift=0.0):
    return [{"epoch": epoch, "train_loss": 1 / epoch + shift, f"{eval_name}_loss": 0.8 / epoch + shift,
             f"{eval_name}_accuracy": 0.8 + 0.01 * epoch - shift} for epoch in range(1, epochs + 1)]


def test_one_epoch_plot_shows_its_points_on_an_integer_epoch_axis():
    figure = train_mnist.draw_curves([fake_history(1, "test")], "test", "fashion-mnist: impl manual, backend cpp")
    assert figure.get_suptitle() == "fashion-mnist: impl manual, backend cpp"
    for axes in figure.axes:
        assert axes.lines and all(line.get_marker() == "o" for line in axes.lines)
        low, high = axes.get_xlim()
        assert [tick for tick in axes.get_xticks() if low <= tick <= high] == [1]


def test_kfold_plot_draws_every_fold_and_the_mean_with_a_std_band():
    histories = [fake_history(3, "validation", shift) for shift in (0.0, 0.01, 0.03)]
    figure = train_mnist.draw_curves(histories, "validation", "k-fold")
    loss_axes, accuracy_axes = figure.axes
    assert len(loss_axes.lines) == 2 * (3 + 1) and len(accuracy_axes.lines) == 3 + 1  # 3 folds + the mean, per curve
    assert len(loss_axes.collections) == 2 and len(accuracy_axes.collections) == 1  # one ±std band per curve
    mean = accuracy_axes.lines[-1]
    expected = torch.tensor([[100 * r["validation_accuracy"] for r in h] for h in histories]).mean(0)
    torch.testing.assert_close(torch.tensor(mean.get_ydata(), dtype=torch.float32), expected)
    assert "mean ± std of 3 folds" in mean.get_label()


def test_the_run_header_names_data_set_sizes_impl_backend_and_device(tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=32, test_count=16)
    assert train_mnist.main(["--data-dir", str(folder), "--epochs", "1", "--device", "cpu"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    backend = manual_conv.get_backend()
    assert header == f"mnist: 32 training / 16 test images; impl manual, backend {backend}, cpu x 1 process"


# --------------------------------------------------------------------------------------------------- training


def test_metrics_plot_and_kfold_on_a_tiny_set(tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=192, test_count=64)
    common = ["--data-dir", str(folder), "--epochs", "1", "--batch-size", "32"]
    assert train_mnist.main(common + ["--metrics", str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png")]) == 0
    metrics = read_metrics(tmp_path / "m.json")
    assert {"test_accuracy", "device", "impl", "backend", "dataset", "epochs"} <= metrics.keys()
    assert metrics["impl"] == "manual" and metrics["backend"] == manual_conv.get_backend()
    assert set(metrics["epochs"][0]) == {"epoch", "train_loss", "test_loss", "test_accuracy", "seconds",
                                         "images_per_second"}
    assert 0 <= metrics["test_accuracy"] <= 1
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Test accuracy:" in capsys.readouterr().out.splitlines()[-1]

    assert train_mnist.main(common + ["--kfold", "3", "--metrics", str(tmp_path / "k.json"),
                                      "--plot", str(tmp_path / "k.png")]) == 0
    kfold = read_metrics(tmp_path / "k.json")
    assert len(kfold["folds"]) == 3 and "validation_accuracy_std" in kfold
    accuracies = torch.tensor([fold["validation_accuracy"] for fold in kfold["folds"]], dtype=torch.float64)
    assert kfold["validation_accuracy_mean"] == pytest.approx(accuracies.mean().item())
    assert (tmp_path / "k.png").is_file()
    output = capsys.readouterr().out
    assert "3-fold cross-validation on 192 training images, each fold validating on 64 held-out ones" in output
    assert "test images are not used" in output and "64 test" not in output
    assert "3-fold validation accuracy" in output


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=320, test_count=64)
    common = ["--data-dir", str(folder), "--batch-size", "32"]
    straight, interrupted = tmp_path / "straight.pt", tmp_path / "interrupted.pt"
    assert train_mnist.main(common + ["--epochs", "2", "--save-model", str(straight)]) == 0
    assert train_mnist.main(common + ["--epochs", "1", "--save-model", str(interrupted)]) == 0
    assert train_mnist.main(common + ["--epochs", "2", "--resume", str(interrupted),
                                      "--metrics", str(tmp_path / "resumed.json")]) == 0
    expected, resumed = torch.load(straight), torch.load(interrupted)
    assert resumed["epoch"] == 2
    for name, parameter in expected["model"].items():
        assert torch.equal(resumed["model"][name], parameter), name
    timings = {"seconds", "images_per_second"}
    strip = lambda history: [{k: v for k, v in record.items() if k not in timings} for record in history]  # noqa: E731
    assert strip(resumed["history"]) == strip(expected["history"])
    assert [record["epoch"] for record in read_metrics(tmp_path / "resumed.json")["epochs"]] == [1, 2]
    # Resuming a finished run trains nothing but still reports it.
    assert train_mnist.main(common + ["--epochs", "2", "--resume", str(interrupted),
                                      "--metrics", str(tmp_path / "finished.json")]) == 0
    assert read_metrics(tmp_path / "finished.json")["test_accuracy"] == expected["history"][-1]["test_accuracy"]
    assert not list(tmp_path.glob(".*.tmp")), "a temporary checkpoint file was left behind"


def test_resume_takes_the_settings_left_out_from_the_checkpoint(tmp_path, capsys):
    # The case: a `make train` checkpoint (fashion-mnist) resumed with only --resume and --epochs.
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=96, test_count=48)
    checkpoint = tmp_path / "run.pt"
    assert train_mnist.main(["--dataset", "fashion-mnist", "--data-dir", str(folder), "--epochs", "1",
                             "--batch-size", "32", "--seed", "3", "--lr", "0.5", "--limit-test", "40",
                             "--impl", "native", "--save-model", str(checkpoint)]) == 0
    capsys.readouterr()
    assert train_mnist.main(["--resume", str(checkpoint), "--epochs", "2", "--metrics", str(tmp_path / "m.json")]) == 0
    metrics = read_metrics(tmp_path / "m.json")
    assert {key: metrics[key] for key in ("dataset", "batch_size", "seed", "lr", "impl", "epochs_planned")} == {
        "dataset": "fashion-mnist", "batch_size": 32, "seed": 3, "lr": 0.5, "impl": "native", "epochs_planned": 2}
    assert [record["epoch"] for record in metrics["epochs"]] == [1, 2]
    assert "/40), " in capsys.readouterr().out, "the resumed run evaluates on --limit-test's 40 images"
    assert torch.load(checkpoint)["epoch"] == 2
    # Without --epochs the checkpoint's plan holds too: nothing is left to train.
    assert train_mnist.main(["--resume", str(checkpoint), "--metrics", str(tmp_path / "again.json")]) == 0
    assert read_metrics(tmp_path / "again.json")["epochs_planned"] == 2


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=64, test_count=32)
    checkpoint = tmp_path / "run.pt"
    assert train_mnist.main(["--data-dir", str(folder), "--epochs", "1", "--save-model", str(checkpoint)]) == 0
    assert train_mnist.main(["--data-dir", str(folder), "--epochs", "2", "--seed", "7",
                             "--resume", str(checkpoint)]) == 2
    assert "--seed 1 (now 7)" in capsys.readouterr().err


def one_error_line(capsys):
    """The single line the script printed to stderr (its stdout may hold the run's header)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train_mnist.py: error: "), lines
    return lines[0]


def test_a_damaged_or_foreign_resume_file_gives_one_line_and_exit_2(tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=32, test_count=16)
    checkpoint = tmp_path / "run.pt"
    assert train_mnist.main(["--data-dir", str(folder), "--epochs", "1", "--save-model", str(checkpoint)]) == 0
    capsys.readouterr()
    whole = checkpoint.read_bytes()
    foreign = {"truncated.pt": whole[: len(whole) // 2], "empty.pt": b"", "text.pt": b"epoch 1, loss 0.3\n",
               "pickle.pt": b"\x80\x04K\x01."}  # a plain pickle: 'Unsupported operand' for weights_only
    for name, content in foreign.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"model": {}}, tmp_path / "state_dict.pt")  # a torch file, but not a checkpoint of ours
    (tmp_path / "folder.pt").mkdir()
    for name in [*foreign, "state_dict.pt"]:
        assert train_mnist.main(["--resume", str(tmp_path / name)]) == 2, name
        assert "not a checkpoint written by train_mnist.py --save-model" in one_error_line(capsys), name
    assert train_mnist.main(["--resume", str(tmp_path / "folder.pt")]) == 2
    assert "folder.pt: Is a directory" in one_error_line(capsys)
    # The whole of stderr, warnings included, as a user sees it.
    result = subprocess.run([sys.executable, SCRIPT, "--resume", str(tmp_path / "pickle.pt")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize("flag, value", [("--lr", "-1"), ("--lr", "nan"), ("--lr", "inf"), ("--num-workers", "-1"),
                                         ("--seed", "-1"), ("--seed", str(2**64)), ("--epochs", "0"),
                                         ("--batch-size", "-5"), ("--kfold", "1")])
def test_a_bad_flag_value_exits_2_before_anything_runs(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_mnist.main([flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.strip().splitlines()[-1].startswith("train_mnist.py: error: ")
    assert flag in error.strip().splitlines()[-1]


def test_unwritable_outputs_and_too_many_folds_exit_2_before_training(tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=16, test_count=16)
    common = ["--data-dir", str(folder), "--epochs", "1"]
    (tmp_path / "a-file").write_text("")
    assert train_mnist.main(common + ["--metrics", str(tmp_path)]) == 2
    assert "--metrics" in one_error_line(capsys)
    assert train_mnist.main(common + ["--plot", str(tmp_path / "a-file" / "curves.png")]) == 2
    assert "--plot" in one_error_line(capsys)
    assert train_mnist.main(common + ["--save-model", str(tmp_path / "idx")]) == 2
    assert "--save-model" in one_error_line(capsys)
    assert train_mnist.main(common + ["--kfold", "17"]) == 2
    assert "more folds than the 16 training images" in one_error_line(capsys)


def test_results_honour_the_umask_and_keep_an_existing_files_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        train_mnist.save_atomically(tmp_path / "new.json", lambda file: file.write(b"{}"))
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        train_mnist.save_atomically(tmp_path / "other.json", lambda file: file.write(b"{}"))
        assert (tmp_path / "other.json").stat().st_mode & 0o777 == 0o644
        (tmp_path / "new.json").chmod(0o600)
        train_mnist.save_atomically(tmp_path / "new.json", lambda file: file.write(b"[]"))
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "new.json").read_bytes() == b"[]"
    finally:
        os.umask(previous)


def test_requests_that_cannot_be_honoured_exit_2_with_a_message(tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=16, test_count=16)
    assert train_mnist.main(["--data-dir", str(folder), "--resume", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert train_mnist.main(["--data-dir", str(folder), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@needs_fashion_mnist
def test_short_real_training_on_fashion_mnist_reaches_the_measured_floor(tmp_path):
    metrics = tmp_path / "fashion.json"
    assert train_mnist.main(["--dataset", "fashion-mnist", "--limit-train", "6000", "--limit-test", "1000",
                             "--epochs", "1", "--metrics", str(metrics)]) == 0
    assert read_metrics(metrics)["test_accuracy"] >= FASHION_6000_ONE_EPOCH_FLOOR


def test_two_gloo_processes_keep_identical_replicas_and_match_one_process(tmp_path):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=1024, test_count=512)
    common = ["--data-dir", str(folder), "--epochs", "1", "--device", "cpu"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Two processes of 32 images each see, step for step, the same 64 images as one process of 64.
    distributed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), SCRIPT, *common, "--batch-size", "32",
         "--metrics", str(tmp_path / "ddp.json")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert distributed.returncode == 0, distributed.stderr[-3000:]
    assert distributed.stdout.count("Test accuracy:") == 1, "only rank 0 may print"
    assert train_mnist.main(common + ["--batch-size", "64", "--metrics", str(tmp_path / "single.json")]) == 0
    ddp, single = read_metrics(tmp_path / "ddp.json"), read_metrics(tmp_path / "single.json")
    assert ddp["world_size"] == 2 and ddp["max_parameter_difference_between_ranks"] == 0.0
    assert ddp["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=0.05)


# ------------------------------------------------------------------------------------------------------ graph

def graph_node_types(tensor):
    """The classes of every autograd node reachable from tensor.grad_fn."""
    seen, types, pending = set(), set(), [tensor.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        types.add(type(node))
        pending.extend(next_node for next_node, _ in node.next_functions)
    return types


def training_loss(layers):
    torch.manual_seed(0)
    model = train_mnist.Net(layers).train()
    images, labels = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    return layers.CrossEntropyLoss()(model(images), labels)


def test_native_build_shows_native_nodes_so_the_graph_walk_sees_them():
    names = {node_type.__name__ for node_type in graph_node_types(training_loss(torch.nn))}
    assert {"ConvolutionBackward0", "ReluBackward0", "MaxPool2DWithIndicesBackward0", "AddmmBackward0",
            "NllLossBackward0"} <= names


def test_manual_build_trains_through_manual_conv_functions_only():
    ours, others = set(), set()
    for node_type in graph_node_types(training_loss(manual_conv.nn)):
        custom = issubclass(node_type, torch.autograd.function.BackwardCFunction)  # a torch.autograd.Function's node
        (ours if custom else others).add(node_type.__name__)
    # Besides our Functions only the leaves' AccumulateGrad and Flatten's view, which computes nothing: no
    # ConvolutionBackward0, ReluBackward0, MaxPool2DWithIndicesBackward0, AddmmBackward0, NllLossBackward0 ...
    assert others <= {"AccumulateGrad", "ViewBackward0"}, others
    for layer in ("conv2d", "relu", "maxpool2d", "dropout", "linear", "crossentropy"):
        assert any(layer in name.lower() for name in ours), (layer, ours)


# ----------------------------------------------------------------------------------------- mixed precision (--amp)


def test_amp_trains_in_bfloat16_on_cpu_and_resume_keeps_it(tmp_path, capsys):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=96, test_count=32)
    common = ["--data-dir", str(folder), "--batch-size", "32", "--device", "cpu"]
    checkpoint = tmp_path / "run.pt"
    assert train_mnist.main(common + ["--epochs", "1", "--amp", "--save-model", str(checkpoint),
                                      "--metrics", str(tmp_path / "m.json")]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("cpu x 1 process, amp bfloat16"), header
    metrics = read_metrics(tmp_path / "m.json")
    assert metrics["amp"] == "bfloat16" and 0 <= metrics["test_accuracy"] <= 1
    saved = torch.load(checkpoint)
    assert saved["run"]["amp"] is True
    assert all(parameter.dtype == torch.float32 for parameter in saved["model"].values())
    assert train_mnist.main(["--resume", str(checkpoint), "--epochs", "2", "--metrics", str(tmp_path / "r.json")]) == 0
    assert read_metrics(tmp_path / "r.json")["amp"] == "bfloat16", "the checkpoint's --amp holds when left out"
    assert train_mnist.main(common + ["--epochs", "1", "--no-amp", "--metrics", str(tmp_path / "f.json")]) == 0
    assert read_metrics(tmp_path / "f.json")["amp"] is None


def test_manual_build_under_amp_trains_through_manual_conv_functions_and_casts():
    with train_mnist.autocast(True, torch.device("cpu")):
        loss = training_loss(manual_conv.nn)
    assert loss.dtype == torch.float32
    others = {node_type.__name__ for node_type in graph_node_types(loss)
              if not issubclass(node_type, torch.autograd.function.BackwardCFunction)}
    # the casts autocast's policy makes (ToCopyBackward0), as native's graph has them
    assert others <= {"AccumulateGrad", "ViewBackward0", "ToCopyBackward0"}, others
    assert not train_mnist.grad_scaler(True, torch.device("cpu")).is_enabled(), "bfloat16 needs no loss scaling"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_amp_trains_in_float16_with_a_grad_scaler_on_cuda(tmp_path):
    folder = write_synthetic_dataset(tmp_path / "idx", train_count=192, test_count=64)
    checkpoint = tmp_path / "run.pt"
    assert train_mnist.main(["--data-dir", str(folder), "--batch-size", "32", "--device", "cuda", "--epochs", "1",
                             "--amp", "--backend", "python", "--save-model", str(checkpoint),
                             "--metrics", str(tmp_path / "m.json")]) == 0
    metrics = read_metrics(tmp_path / "m.json")
    assert metrics["amp"] == "float16" and metrics["test_accuracy"] > 0.2
    assert torch.load(checkpoint)["scaler"]["scale"] > 0
    assert train_mnist.grad_scaler(True, torch.device("cuda")).is_enabled()
