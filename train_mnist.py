#!/usr/bin/env python
"""Train pytorch/examples' MNIST CNN with every gradient derived by hand (manual_conv), on CPU or GPU, in one
process or many.

    python train_mnist.py                                   # MNIST, 14 epochs, the pytorch/examples recipe
    python train_mnist.py --dataset fashion-mnist --metrics metrics.json --plot curves.png
    python train_mnist.py --impl native                     # the same network from torch.nn, for comparison
    python train_mnist.py --save-model run.pt               # checkpoint after every epoch ...
    python train_mnist.py --resume run.pt                   # ... and carry on from the last one
    python train_mnist.py --kfold 5 --epochs 3              # 5-fold cross-validation on the training set
    python train_mnist.py --amp                             # mixed precision: bfloat16 on CPU, float16 on CUDA
    torchrun --nproc_per_node 2 train_mnist.py              # data-parallel (gloo on CPU, nccl on GPU)

Recipe (pytorch/examples mnist/main.py): Adadelta(lr=1.0), StepLR(step_size=1, gamma=0.7), batch 64, 14 epochs,
cross-entropy; Conv2d(1,32,3) ReLU Conv2d(32,64,3) ReLU MaxPool2d(2) Dropout(0.25) Flatten Linear(9216,128) ReLU
Dropout(0.5) Linear(128,10); images normalised with their data set's mean and std (MNIST: 0.1307, 0.3081).
"""
import argparse
import contextlib
import gzip
import io
import json
import math
import os
import random
import stat
import struct
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm import tqdm

import manual_conv

LR_DECAY_PER_EPOCH = 0.7  # StepLR gamma of pytorch/examples

# name -> (torchvision dataset class, (mean, std) of the training images scaled to [0, 1], folders a system
# package installs the IDX files into)
DATASETS = {
    "mnist": ("MNIST", (0.1307, 0.3081), ()),
    "fashion-mnist": ("FashionMNIST", (0.2860, 0.3530), ("/usr/share/datasets/fashion-mnist",)),
}
IDX_FILES = {  # split -> (images file, labels file), as published by LeCun and by Zalando
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataUnavailable(Exception):
    """The data set is neither on disk nor downloadable; the message says where we looked and what to do."""


class UsageError(Exception):
    """A request the script cannot honour (e.g. --device cuda without a GPU); reported without a traceback."""


# ------------------------------------------------------------------------------------------------- command line

# What a checkpoint must agree on with the command line for --resume to reproduce the uninterrupted run ...
RUN_IDENTITY = ("dataset", "seed", "batch_size", "lr", "limit_train")
# ... and every setting a resumed run takes from its checkpoint when the command line does not give it.
RUN_SETTINGS = RUN_IDENTITY + ("epochs", "impl", "backend", "data_dir", "limit_test", "test_batch_size", "amp")
NOT_GIVEN = object()  # the parser's default for RUN_SETTINGS, to tell a flag left out from one given its default


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def seed_value(text):
    """torch.manual_seed takes -2**63 .. 2**64-1, and the sampler seeds each epoch with seed + epoch: 0 .. 2**63-1
    leaves room for any number of epochs."""
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63-1, got {text}")
    return value


def learning_rate(text):
    """Adadelta rejects a negative or NaN rate; an infinite one would turn every weight into NaN at the first step."""
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="train_mnist.py",
        description="Train pytorch/examples' MNIST CNN whose every layer's forward and backward is written by hand "
        "(manual_conv). Runs data-parallel when started by torchrun.",
        epilog="Learning rate decays by 0.7 after every epoch (StepLR). Only rank 0 prints and writes files. "
        "A bad value, file or request ends the script with one error line on stderr (after the usage, for a flag "
        "argparse rejects) and exit code 2.",
    )
    parser.add_argument("--epochs", type=positive_int, default=14, metavar="N",
                        help="number of epochs to train (default: 14)")
    parser.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                        help="training batch size per process (default: 64)")
    parser.add_argument("--test-batch-size", type=positive_int, default=1000, metavar="N",
                        help="evaluation batch size (default: 1000)")
    parser.add_argument("--lr", type=learning_rate, default=1.0, help="Adadelta learning rate (default: 1.0)")
    parser.add_argument("--seed", type=seed_value, default=1,
                        help="random seed: weights, dropout and the data order of every epoch (default: 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train; auto picks cuda when a GPU is available (default: auto)")
    parser.add_argument("--impl", choices=("manual", "native"), default="manual",
                        help="manual: every layer and the loss from manual_conv (gradients derived by hand); "
                        "native: the same network from torch.nn, for comparison (default: manual)")
    parser.add_argument("--backend", choices=("cpp", "python"), default=None,
                        help="manual_conv's conv kernels with --impl manual: cpp (the compiled extension) or python "
                        "(the reference); default: cpp when the extension is built, else python")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                        help="automatic mixed precision: forward and loss under torch.autocast, in bfloat16 on CPU "
                        "and in float16 on CUDA (there with a torch.amp.GradScaler); the parameters, their gradients "
                        "and the optimizer stay float32 (default: off)")
    parser.add_argument("--dataset", choices=tuple(DATASETS), default="mnist",
                        help="handwritten digits (mnist) or Zalando's clothing images (fashion-mnist) "
                        "(default: mnist, as in pytorch/examples; `make train` uses fashion-mnist, which Debian "
                        "packages for machines that cannot download)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder holding the four IDX files (gzipped or not) or torchvision's layout "
                        "(DIR/MNIST/raw/...); missing data is downloaded there when the network allows "
                        "(default: ./data, then the system's dataset package, e.g. Debian's "
                        "/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--limit-train", type=positive_int, default=None, metavar="N",
                        help="use only the first N training images (quick runs)")
    parser.add_argument("--limit-test", type=positive_int, default=None, metavar="N",
                        help="use only the first N test images (quick runs)")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, metavar="N",
                        help="DataLoader worker processes; the data sits in memory, so 0 is usually fastest "
                        "(default: 0)")
    parser.add_argument("--save-model", type=Path, default=None, metavar="PATH",
                        help="after every epoch, write a checkpoint (model, optimizer, scheduler, RNG states, epoch, "
                        "metrics so far) to PATH atomically; torch.load(PATH)['model'] is the state_dict of "
                        "pytorch/examples' Net")
    parser.add_argument("--resume", type=Path, default=None, metavar="PATH",
                        help="continue the run checkpointed in PATH at its next epoch (same seed and data order, "
                        "so the result equals an uninterrupted run); the settings the command line leaves out "
                        "(data set and data folder, seed, batch sizes, lr, epochs, impl, backend, amp, limits) come "
                        "from the checkpoint, and one that contradicts it is an error; keeps checkpointing to PATH "
                        "unless --save-model says otherwise")
    parser.add_argument("--metrics", type=Path, default=None, metavar="PATH",
                        help="write JSON metrics to PATH after every epoch: one record per epoch (train loss, "
                        "test loss, test accuracy, seconds, images/s), the final test_accuracy (0..1), device, "
                        "impl, backend, dataset and amp (the autocast dtype, or null)")
    parser.add_argument("--plot", type=Path, default=None, metavar="PATH",
                        help="write a PNG of the loss and accuracy curves to PATH")
    parser.add_argument("--kfold", type=positive_int, default=None, metavar="K",
                        help="K-fold cross-validation on the training set instead of train/test: trains K models, "
                        "reports each fold's validation accuracy and their mean ± std (K >= 2)")
    defaults = {key: parser.get_default(key) for key in RUN_SETTINGS}
    parser.set_defaults(**dict.fromkeys(RUN_SETTINGS, NOT_GIVEN))
    args = parser.parse_args(argv)
    if args.kfold is not None and args.kfold < 2:
        parser.error("--kfold needs K >= 2")
    if args.kfold is not None and (args.resume or args.save_model):
        parser.error("--kfold trains K throw-away models: it does not take --save-model or --resume")
    checkpoint = read_checkpoint(args.resume) if args.resume else None
    complete_settings(args, defaults, checkpoint["run"] if checkpoint else {})
    return args, checkpoint


def complete_settings(args, defaults, saved):
    """Fill the RUN_SETTINGS the command line left out from ``saved`` (a checkpoint's, with --resume), else from
    the parser's defaults. UsageError when a given RUN_IDENTITY setting contradicts ``saved``."""
    given = {key for key in RUN_SETTINGS if getattr(args, key) is not NOT_GIVEN}
    different = [f"--{key.replace('_', '-')} {saved[key]} (now {getattr(args, key)})" for key in RUN_IDENTITY
                 if key in given and key in saved and saved[key] != getattr(args, key)]
    if different:
        raise UsageError(f"--resume {args.resume}: the checkpoint was trained with " + ", ".join(different))
    for key in set(RUN_SETTINGS) - given:
        setattr(args, key, saved.get(key, defaults[key]))
    if args.data_dir is not None:
        args.data_dir = Path(args.data_dir)  # a checkpoint holds it as text


# ------------------------------------------------------------------------------------------------------- data


def read_idx(path):
    """Read an IDX file (gzipped when its name ends in .gz) into a uint8 tensor.

    Layout: two zero bytes, a type byte (0x08 = unsigned byte), a byte with the number of dimensions d,
    d big-endian uint32 sizes, then the values in row-major order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError, zlib.error) as error:  # unreadable, or a damaged or cut gzip stream
        raise DataUnavailable(f"{path} cannot be read: {error}") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataUnavailable(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()})")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataUnavailable(f"{path} is truncated inside its header")
    shape = struct.unpack_from(f">{ndim}I", raw, 4)
    if len(raw) - offset != math.prod(shape):
        raise DataUnavailable(f"{path} is truncated or too long: the header announces shape {shape}")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(shape)


def find_idx_file(folder, stem):
    """The IDX file ``stem`` in ``folder``, plain or gzipped, or None."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_folder(folders):
    """The first folder holding all four IDX files, or None."""
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    return next((folder for folder in folders if all(find_idx_file(folder, stem) for stem in stems)), None)


def download(dataset, root):
    """Download with torchvision into root/<Class>/raw; True on success. torchvision's own progress output is
    swallowed: offline it would print a page of mirror errors before our single message."""
    from torchvision import datasets  # only needed here; importing it costs a second

    class_name = DATASETS[dataset][0]
    new_folders = [folder for folder in (root, root / class_name, root / class_name / "raw") if not folder.exists()]
    print(f"{dataset} not found on disk; downloading it into {root}/ ...", flush=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            getattr(datasets, class_name)(str(root), train=True, download=True)
    except (OSError, RuntimeError):  # URLError is an OSError; torchvision wraps mirror failures in RuntimeError
        for folder in reversed(new_folders):  # leave no empty folders behind from the failed attempt
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        return False
    return True


def locate_data(dataset, data_dir, allow_download=True):
    """The folder with the four IDX files of ``dataset``: looked up in data_dir (plain or torchvision layout),
    then, without an explicit data_dir, in the system's dataset package; downloaded into data_dir as the last
    resort."""
    class_name, _, system_folders = DATASETS[dataset]
    root = data_dir if data_dir is not None else Path("data")
    candidates = [root, root / class_name / "raw"]
    if data_dir is None:
        candidates += [Path(folder) for folder in system_folders]
    folder = find_idx_folder(candidates)
    if folder is None and allow_download and download(dataset, root):
        folder = find_idx_folder(candidates)
    if folder is None:
        stems = ", ".join(f"{stem}[.gz]" for pair in IDX_FILES.values() for stem in pair)
        looked_in = "\n".join(f"  {candidate}" for candidate in candidates)
        hint = " (Debian/Ubuntu: apt-get install dataset-fashion-mnist)" if dataset == "fashion-mnist" else ""
        raise DataUnavailable(
            f"{dataset} data not found and could not be downloaded into {root}/ (no network?).\n"
            f"Looked for {stems} in:\n{looked_in}\n"
            f"Provide them with --data-dir DIR: a folder with those four files{hint}, or torchvision's layout "
            f"DIR/{class_name}/raw/."
            + ("\nOr train on Fashion-MNIST, which Debian packages: --dataset fashion-mnist." if dataset == "mnist"
               else "")
        )
    return folder


class InMemoryDataset(torch.utils.data.Dataset):
    """Normalised images (N, 1, 28, 28) and labels held in memory. Indexed by a whole batch of indices at once
    (the loaders use a BatchSampler), which saves 64 __getitem__ calls and a collate per batch."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, indices):
        return self.images[indices], self.labels[indices]

    def subset(self, indices):
        return InMemoryDataset(self.images[indices], self.labels[indices])


def load_split(folder, split, mean_std, limit):
    """One split as an InMemoryDataset: pixels / 255, then (x - mean) / std, as ToTensor + Normalize would."""
    images_stem, labels_stem = IDX_FILES[split]
    images, labels = read_idx(find_idx_file(folder, images_stem)), read_idx(find_idx_file(folder, labels_stem))
    if images.shape[1:] != (28, 28) or labels.dim() != 1 or len(images) != len(labels):
        raise DataUnavailable(f"{folder}: the {split} images {tuple(images.shape)} are not 28x28 images matching "
                              f"the labels {tuple(labels.shape)}")
    if len(labels) and labels.max() >= 10:
        raise DataUnavailable(f"{folder}: the {split} labels go up to {labels.max().item()}, beyond the 10 classes")
    images, labels = images[:limit], labels[:limit]
    mean, std = mean_std
    normalised = (images.unsqueeze(1).float() / 255 - mean) / std
    return InMemoryDataset(normalised, labels.long())


def load_datasets(args, rank, world_size):
    """(train, test) datasets. Rank 0 downloads if needed while the others wait, so they never race on files."""
    if rank != 0:
        dist.barrier()
    try:
        folder = locate_data(args.dataset, args.data_dir, allow_download=rank == 0)
    finally:
        if rank == 0 and world_size > 1:
            dist.barrier()
    mean_std = DATASETS[args.dataset][1]
    return (load_split(folder, "train", mean_std, args.limit_train),
            load_split(folder, "test", mean_std, args.limit_test))


def train_loader(dataset, process, args):
    """Shuffled batches of this process's share; the order is a function of (seed, epoch) only, through the
    sampler's set_epoch, so a resumed run sees the same batches as an uninterrupted one."""
    sampler = DistributedSampler(dataset, num_replicas=process.world_size, rank=process.rank, shuffle=True,
                                 seed=args.seed)
    return DataLoader(dataset, sampler=BatchSampler(sampler, args.batch_size, drop_last=False), batch_size=None,
                      num_workers=args.num_workers, pin_memory=process.device.type == "cuda")


def eval_loader(dataset, process, args):
    """This process's disjoint share of the evaluation set (every world_size-th image): no padding, so the
    all-reduced counts are exact."""
    share = range(process.rank, len(dataset), process.world_size)
    return DataLoader(dataset, sampler=BatchSampler(share, args.test_batch_size, drop_last=False), batch_size=None,
                      num_workers=args.num_workers, pin_memory=process.device.type == "cuda")


# ------------------------------------------------------------------------------------------------------ model


class Net(torch.nn.Module):
    """pytorch/examples' MNIST CNN built from ``layers`` (manual_conv.nn or torch.nn). Both builds have the
    example's state_dict keys; forward returns logits (the example returns log_softmax and uses nll_loss: the
    same loss as cross_entropy on logits)."""

    def __init__(self, layers):
        super().__init__()
        self.conv1 = layers.Conv2d(1, 32, 3, 1)
        self.conv2 = layers.Conv2d(32, 64, 3, 1)
        self.dropout1 = layers.Dropout(0.25)
        self.dropout2 = layers.Dropout(0.5)
        self.fc1 = layers.Linear(9216, 128)
        self.fc2 = layers.Linear(128, 10)
        self.relu = layers.ReLU()
        self.pool = layers.MaxPool2d(2)
        self.flatten = layers.Flatten()

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.pool(self.relu(self.conv2(x)))
        x = self.flatten(self.dropout1(x))
        x = self.dropout2(self.relu(self.fc1(x)))
        return self.fc2(x)


def layer_library(impl):
    """manual_conv.nn (every forward and backward by hand) or torch.nn."""
    return manual_conv.nn if impl == "manual" else torch.nn


# ------------------------------------------------------------------------------------------------- processes


class Process:
    """Where this process trains: its rank among world_size data-parallel processes, and its device."""

    def __init__(self, rank, world_size, device):
        self.rank, self.world_size, self.device = rank, world_size, device

    @property
    def is_main(self):
        return self.rank == 0

    def log(self, *args):
        if self.is_main:
            print(*args, flush=True)

    def all_sum(self, values):
        """The element-wise sum of ``values`` (a float64 tensor) over all processes."""
        if self.world_size > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values.cpu()


def start_process(device_choice):
    """Join the torchrun process group when there is one (gloo on CPU, nccl on GPU) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise UsageError(f"process {local_rank} of this machine has no GPU of its own: there are "
                         f"{torch.cuda.device_count()} (start as many processes, or use --device cpu)")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return Process(rank, world_size, device)


# -------------------------------------------------------------------------------------------------- training


AMP_DTYPES = {"cpu": torch.bfloat16, "cuda": torch.float16}  # --amp's autocast dtype per device type


def autocast(amp, device):
    """torch.autocast for --amp on ``device``: bfloat16 on CPU (float32's range, and CPUs compute it natively), float16
    on CUDA (its tensor cores' type); a disabled one without --amp."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[device.type], enabled=amp)


def grad_scaler(amp, device):
    """--amp's GradScaler on CUDA: float16's range ends near 6e-5 (subnormals aside), so the loss is scaled before
    backward lest small gradients flush to zero, and the gradients unscaled before the step (skipped when one is
    inf/NaN). bfloat16 has float32's range and needs none: a disabled scaler, as without --amp, passes through."""
    return torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")


def train_epoch(model, loader, optimizer, criterion, process, progress, amp, scaler):
    """One pass over this process's batches; the mean training loss over all processes' images."""
    model.train()
    totals = torch.zeros(2, dtype=torch.float64)  # loss summed over images, number of images
    for images, labels in loader:
        images = images.to(process.device, non_blocking=True)
        labels = labels.to(process.device, non_blocking=True)
        optimizer.zero_grad()
        with autocast(amp, process.device):
            loss = criterion(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        batch_loss = loss.item()
        totals += torch.tensor([batch_loss * len(labels), len(labels)], dtype=torch.float64)
        progress.set_postfix(loss=f"{batch_loss:.4f}", refresh=False)
        progress.update(len(labels) * process.world_size)
    loss_sum, count = process.all_sum(totals).tolist()
    return loss_sum / count


@torch.no_grad()
def evaluate(model, loader, criterion_sum, process, amp):
    """(mean loss, accuracy 0..1, correct, total) on the evaluation set, summed over all processes' shares."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, images
    for images, labels in loader:
        images = images.to(process.device, non_blocking=True)
        labels = labels.to(process.device, non_blocking=True)
        with autocast(amp, process.device):
            logits = model(images)
            loss_sum = criterion_sum(logits, labels)
        correct = (logits.argmax(1) == labels).sum()
        totals += torch.tensor([loss_sum.item(), correct.item(), len(labels)], dtype=torch.float64)
    loss_sum, correct, count = process.all_sum(totals).tolist()
    return loss_sum / count, correct / count, int(correct), int(count)


def rng_states(process):
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if process.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(process.device)
    return states


def restore_rng_states(states, process):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and process.device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], process.device)


def new_file_mode(path):
    """The permissions ``path`` keeps when it exists, else those open() would give a new file under the user's
    umask (mkstemp's own 0600 would make every result private)."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def save_atomically(path, write):
    """write(file) into a temporary file beside ``path``, then rename it over ``path``: an interrupted run leaves
    either the previous file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, new_file_mode(path))
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "history", "run")


def read_checkpoint(path):
    """The checkpoint that --save-model wrote to path. UsageError for a missing or unreadable file, and for one
    that is truncated or something else (torch.load raises RuntimeError, UnpicklingError, EOFError, ... there)."""
    try:
        with warnings.catch_warnings():  # e.g. about a foreign file's pickle protocol: the error below says it all
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"--resume {path}: no such file") from None
    except OSError as error:
        raise UsageError(f"--resume {path}: {error.strerror or error}") from None
    except Exception:
        checkpoint = None
    if not (isinstance(checkpoint, dict) and all(key in checkpoint for key in CHECKPOINT_KEYS)):
        raise UsageError(f"--resume {path}: not a checkpoint written by train_mnist.py --save-model "
                         "(truncated, or another kind of file)")
    return checkpoint


def run_settings(args):
    """RUN_SETTINGS as a checkpoint keeps them: paths as text (a weights_only torch.load takes no Path)."""
    return {key: str(value) if isinstance(value, Path) else value
            for key, value in ((key, getattr(args, key)) for key in RUN_SETTINGS)}


def fit(args, process, train_set, eval_set, eval_name, tag="", checkpoint=None, on_epoch_end=lambda history: None):
    """Train a fresh model (or the checkpointed one) for the remaining epochs, evaluating on eval_set after each.
    Returns the model and the per-epoch history."""
    layers = layer_library(args.impl)
    model = Net(layers).to(process.device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=LR_DECAY_PER_EPOCH)
    scaler = grad_scaler(args.amp, process.device)
    history = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler.is_enabled() and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_states(checkpoint["rng"], process)
        history = checkpoint["history"]
        process.log(f"Resuming from {args.resume} after epoch {checkpoint['epoch']}")
    trained = DistributedDataParallel(model) if process.world_size > 1 else model
    criterion, criterion_sum = layers.CrossEntropyLoss(), layers.CrossEntropyLoss(reduction="sum")
    train_batches, eval_batches = train_loader(train_set, process, args), eval_loader(eval_set, process, args)
    checkpoint_path = args.save_model or args.resume
    for epoch in range(len(history) + 1, args.epochs + 1):
        train_batches.sampler.sampler.set_epoch(epoch)  # the DistributedSampler inside the BatchSampler
        started = time.perf_counter()
        with tqdm(total=len(train_set), desc=f"Epoch {epoch}/{args.epochs}{tag}", unit="img", leave=False,
                  disable=None if process.is_main else True, dynamic_ncols=True) as progress:
            train_loss = train_epoch(trained, train_batches, optimizer, criterion, process, progress, args.amp,
                                     scaler)
        seconds = time.perf_counter() - started
        scheduler.step()
        eval_loss, accuracy, correct, count = evaluate(model, eval_batches, criterion_sum, process, args.amp)
        history.append({"epoch": epoch, "train_loss": train_loss, f"{eval_name}_loss": eval_loss,
                        f"{eval_name}_accuracy": accuracy, "seconds": seconds,
                        "images_per_second": len(train_set) / seconds})
        process.log(f"Epoch {epoch}/{args.epochs}{tag}: train loss {train_loss:.4f}, {eval_name} loss "
                    f"{eval_loss:.4f}, {eval_name} accuracy {100 * accuracy:.2f}% ({correct}/{count}), "
                    f"{seconds:.1f} s, {len(train_set) / seconds:.0f} images/s")
        if process.is_main and checkpoint_path is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "rng": rng_states(process),
                     "history": history, "run": run_settings(args)}
            save_atomically(checkpoint_path, lambda file: torch.save(state, file))
        on_epoch_end(history)
    return model, history


def parameter_spread(model, process):
    """The largest difference between any process's parameters and rank 0's: 0.0 when data-parallel training kept
    the replicas identical, as it must."""
    flat = torch.cat([parameter.detach().reshape(-1) for parameter in model.parameters()])
    replicas = [torch.empty_like(flat) for _ in range(process.world_size)]
    dist.all_gather(replicas, flat)
    return max((replica - replicas[0]).abs().max().item() for replica in replicas)


# ---------------------------------------------------------------------------------------------------- reports


def write_metrics(path, summary):
    save_atomically(path, lambda file: file.write(json.dumps(summary, indent=2).encode() + b"\n"))


def plot_curves(path, histories, eval_name, title):
    """A PNG of draw_curves' figure at path."""
    figure = draw_curves(histories, eval_name, title)
    save_atomically(path, lambda file: figure.savefig(file, format="png", dpi=110))


def draw_curves(histories, eval_name, title):
    """A figure of the loss (train and evaluation) and the evaluation accuracy per epoch, every epoch a point on an
    integer axis. Several histories (--kfold's folds): each one thin, their mean with points and a band of ± one
    standard deviation."""
    from matplotlib.figure import Figure  # outside pyplot: no GUI backend to pick, no figure to close
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in histories[0]]
    figure = Figure(figsize=(11, 4.4), layout="tight")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    curves = ((loss_axes, "train_loss", 1, "C0", "--", "train"),
              (loss_axes, f"{eval_name}_loss", 1, "C1", "-", eval_name),
              (accuracy_axes, f"{eval_name}_accuracy", 100, "C1", "-", eval_name))
    for axes, key, scale, colour, style, label in curves:
        values = torch.tensor([[scale * record[key] for record in history] for history in histories],
                              dtype=torch.float64)
        mean = values.mean(0)
        if len(histories) > 1:
            for fold, row in enumerate(values):
                axes.plot(epochs, row, color=colour, linestyle=style, linewidth=0.8, alpha=0.35,
                          label=f"{label}, each fold" if fold == 0 else None)
            std = values.std(0)
            axes.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.15)
            label = f"{label}, mean ± std of {len(histories)} folds"
        axes.plot(epochs, mean, color=colour, linestyle=style, marker="o", markersize=4, label=label)
    loss_axes.set(ylabel="cross-entropy", title="Loss")
    accuracy_axes.set(ylabel="accuracy (%)", title=f"{eval_name.capitalize()} accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.set(xlabel="epoch", xlim=(epochs[0] - 0.5, epochs[-1] + 0.5))
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle(title)
    return figure


def setup_text(args, process):
    """E.g. 'impl manual, backend cpp, cpu x 1 process' (', amp bfloat16' after it with --amp): also the plots'
    title, after the data set."""
    backend = f", backend {manual_conv.get_backend()}" if args.impl == "manual" else ""
    processes = f"{process.world_size} process" + ("es" if process.world_size > 1 else "")
    amp = f", amp {amp_dtype_name(args, process)}" if args.amp else ""
    return f"impl {args.impl}{backend}, {process.device} x {processes}{amp}"


def amp_dtype_name(args, process):
    """'bfloat16' or 'float16' with --amp, else None."""
    return str(AMP_DTYPES[process.device.type]).removeprefix("torch.") if args.amp else None


def describe(args, process):
    backend = manual_conv.get_backend() if args.impl == "manual" else None
    return {"dataset": args.dataset, "impl": args.impl, "backend": backend, "device": str(process.device),
            "world_size": process.world_size, "epochs_planned": args.epochs, "batch_size": args.batch_size,
            "lr": args.lr, "seed": args.seed, "amp": amp_dtype_name(args, process)}


def run_train_test(args, process, train_set, test_set, checkpoint):
    process.log(f"{args.dataset}: {len(train_set)} training / {len(test_set)} test images; "
                f"{setup_text(args, process)}")
    summary = describe(args, process)

    def report(history):
        if process.is_main and args.metrics:
            write_metrics(args.metrics, {**summary, "test_accuracy": history[-1]["test_accuracy"],
                                         "epochs": history})

    model, history = fit(args, process, train_set, test_set, "test", checkpoint=checkpoint, on_epoch_end=report)
    if process.world_size > 1:
        summary["max_parameter_difference_between_ranks"] = parameter_spread(model, process)
    report(history)  # also when a resumed run had no epoch left to train
    if process.is_main and args.plot:
        plot_curves(args.plot, [history], "test", f"{args.dataset}: {setup_text(args, process)}")
    epochs = f"{len(history)} epoch" + ("s" if len(history) > 1 else "")
    process.log(f"Test accuracy: {100 * history[-1]['test_accuracy']:.2f}% after {epochs} "
                f"({args.dataset}; {setup_text(args, process)})")


def run_kfold(args, process, train_set):
    """K-fold cross-validation: shuffle the training set once (seeded), cut it into K folds; fold k trains on the
    other K-1 and validates on fold k. The test set is not used."""
    if args.kfold > len(train_set):
        raise UsageError(f"--kfold {args.kfold}: more folds than the {len(train_set)} training images")
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))
    folds = order.tensor_split(args.kfold)
    sizes = sorted({len(fold) for fold in folds})
    held_out = "-".join(str(size) for size in sizes)
    process.log(f"{args.dataset}: {args.kfold}-fold cross-validation on {len(train_set)} training images, each fold "
                f"validating on {held_out} held-out ones and training on the rest (the test images are not used); "
                f"{setup_text(args, process)}")
    summary = {**describe(args, process), "kfold": args.kfold, "folds": []}
    histories = []
    for index, validation in enumerate(folds):
        training = torch.cat([fold for other, fold in enumerate(folds) if other != index])
        _, history = fit(args, process, train_set.subset(training), train_set.subset(validation), "validation",
                         tag=f" (fold {index + 1}/{args.kfold})")
        histories.append(history)
        summary["folds"].append({"fold": index + 1, "validation_accuracy": history[-1]["validation_accuracy"],
                                 "epochs": history})
        accuracies = torch.tensor([fold["validation_accuracy"] for fold in summary["folds"]], dtype=torch.float64)
        summary["validation_accuracy_mean"] = accuracies.mean().item()
        summary["validation_accuracy_std"] = accuracies.std().item() if len(accuracies) > 1 else 0.0
        if process.is_main and args.metrics:
            write_metrics(args.metrics, summary)
    if process.is_main and args.plot:
        plot_curves(args.plot, histories, "validation",
                    f"{args.dataset}, {args.kfold}-fold cross-validation: {setup_text(args, process)}")
    per_fold = ", ".join(f"{100 * fold['validation_accuracy']:.2f}%" for fold in summary["folds"])
    process.log(f"{args.kfold}-fold validation accuracy: {100 * summary['validation_accuracy_mean']:.2f}% ± "
                f"{100 * summary['validation_accuracy_std']:.2f}% (folds: {per_fold})")


def check_writable(flag, path):
    """UsageError now, rather than after an epoch of training, when path cannot be written."""
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag} {path}: cannot create its folder ({error.strerror or error})") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"{flag} {path}: its folder is not writable")


def run(args, checkpoint):
    outputs = {"--metrics": args.metrics, "--plot": args.plot, "--save-model": args.save_model or args.resume}
    for flag, path in outputs.items():
        if path is not None:
            check_writable(flag, path)
    process = start_process(args.device)
    try:
        if args.impl == "manual" and args.backend is not None:
            if args.backend == "cpp" and not manual_conv.extension_available():
                raise UsageError("--backend cpp needs the compiled extension manual_conv._C: build it with "
                                 "`pip install --no-build-isolation -e .`, or pass --backend python")
            manual_conv.set_backend(args.backend)
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        train_set, test_set = load_datasets(args, process.rank, process.world_size)
        if args.kfold:
            run_kfold(args, process, train_set)
        else:
            run_train_test(args, process, train_set, test_set, checkpoint)
    finally:
        if process.world_size > 1:
            dist.destroy_process_group()


def main(argv=None):
    args = None
    try:
        args, checkpoint = parse_args(argv)
        run(args, checkpoint)
    except (DataUnavailable, UsageError) as error:
        print(f"train_mnist.py: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        checkpoint_path = args and (args.save_model or args.resume)
        hint = f"; resume with --resume {checkpoint_path}" if checkpoint_path else ""
        print(f"\nInterrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
