"""manual_conv: CNN backpropagation by hand. `pip install --no-build-isolation -e .` (torch must be installed).

Builds the compiled conv core `manual_conv._C` from csrc/: the C++ (CPU) sources always, and the CUDA sources
too when a CUDA toolkit (nvcc) and a CUDA build of torch are present and either a GPU is visible or
FORCE_CUDA=1 (compile and link only, e.g. in CI). TORCH_CUDA_ARCH_LIST picks the GPU architectures
(default "8.0;9.0": A100 and H100). MAX_JOBS bounds ninja's parallel compile jobs.
"""
import glob
import importlib.util
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

DEFAULT_CUDA_ARCHS = "8.0;9.0"
CSRC = "csrc"


def build_cuda():
    """True when the CUDA kernels should be compiled into the extension."""
    toolkit = CUDA_HOME is not None and torch.version.cuda is not None
    return toolkit and (torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1")


def pip_cuda_include_dirs():
    """Header folders of the NVIDIA pip wheels (e.g. site-packages/nvidia/cu13/include).

    ATen's CUDA headers include cuBLAS/cuSPARSE headers that a CUDA build of torch gets from these wheels;
    a local toolkit may not ship them. Only the folders that hold cublas_v2.h are added.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or spec.submodule_search_locations is None:
        return []
    headers = []
    for root in spec.submodule_search_locations:
        headers += glob.glob(os.path.join(root, "*", "include", "cublas_v2.h"))
    return sorted({os.path.dirname(header) for header in headers})


def cuda_library_dirs():
    """Toolkit folders holding libcudart.so, which the CUDA extension links against.

    torch derives CUDA_HOME from the nvcc on PATH; when that is a wrapper script (e.g. /usr/local/bin/nvcc)
    CUDA_HOME/lib64 does not exist, so the conventional /usr/local/cuda/lib64 is tried too.
    """
    candidates = [os.path.join(CUDA_HOME, "lib64"), "/usr/local/cuda/lib64"]
    found = [folder for folder in candidates if os.path.exists(os.path.join(folder, "libcudart.so"))]
    return list(dict.fromkeys(os.path.realpath(folder) for folder in found))


def conv_extension():
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
    # -fopenmp: at::parallel_for is an OpenMP pragma expanded in our own translation units.
    # -fno-tree-loop-distribute-patterns: im2col's row copies are tens of pixels long; kept as loops, they
    # become a few vector moves in the vector clones, where GCC would otherwise call memcpy/memset for each.
    cxx_flags = ["-O3", "-fopenmp", "-fno-tree-loop-distribute-patterns"]
    if not build_cuda():
        return CppExtension("manual_conv._C", sources, extra_compile_args={"cxx": cxx_flags},
                            extra_link_args=["-fopenmp"])
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    return CUDAExtension(
        "manual_conv._C",
        sources + sorted(glob.glob(os.path.join(CSRC, "*.cu"))),
        include_dirs=pip_cuda_include_dirs(),
        library_dirs=cuda_library_dirs(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="manual_conv",
    version="0.1.0",
    description="CNN backpropagation written by hand: conv2d and every CNN layer as torch.autograd.Functions",
    license="MIT",
    license_files=["LICENSE"],
    packages=find_packages(include=["manual_conv", "manual_conv.*"]),
    python_requires=">=3.10",
    install_requires=["torch"],
    ext_modules=[conv_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
