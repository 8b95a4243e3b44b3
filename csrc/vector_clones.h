// MANUAL_CONV_VECTOR_CLONES: put before a CPU loop function over float or double arrays so that the loader
// picks the widest vector instructions the CPU has (GCC function multi-versioning). The extension is built
// for baseline x86-64 like torch itself, whose own kernels dispatch on the CPU at run time too; other
// compilers and architectures get the plain function.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define MANUAL_CONV_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MANUAL_CONV_VECTOR_CLONES
#endif
