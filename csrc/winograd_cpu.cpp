// CPU transforms of the Winograd core (winograd_core.h) and its CPU registration. As in the im2col core, one
// parallel region per pass: each thread transforms its chunk's tiles into buffers that its single-threaded GEMMs
// read while they are still in its cache.
//
// The transforms are vectorised across the tiles of a tile row. Each padded input row a plane's tiles read is
// first split into its even and odd columns, so that the four columns tile u reads, 2u .. 2u+3, are even[u],
// odd[u], even[u+1], odd[u+1]: contiguous in u. The buffers' (point, channel, tile) layout puts a tile row's tiles
// side by side too, so every transform below is a loop over u with unit strides, which the compiler vectorises
// (the 1-D transforms of winograd_tile.h inlined into it). Output rows are written as interleaved even and odd
// columns; the input gradient adds into split rows and interleaves them once at the end.
#include <algorithm>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "cpu_blocks.h"
#include "vector_clones.h"
#include "winograd_core.h"

namespace manual_conv {
namespace {

// The sizes of one (image, channel) plane and of its row of tiles.
struct PlaneShape {
  int64_t height, width;               // input
  int64_t padding_top, padding_left;   // zero rows/columns in front of the input
  int64_t out_height, out_width;       // output
  int64_t tile_columns;                // U
};

PlaneShape plane_shape(const ConvShape& shape) {
  return {shape.in_height,  shape.in_width,  shape.padding_height,       shape.padding_width,
          shape.out_height, shape.out_width, tile_grid(shape).columns};
}

// even[j] = row[2j - offset], odd[j] = row[2j + 1 - offset] for j < count, zero where the index leaves [0, width).
template <typename T>
[[gnu::always_inline]] inline void split_columns(const T* __restrict row, int64_t width, int64_t offset,
                                                 T* __restrict even, T* __restrict odd, int64_t count) {
  const auto at = [&](int64_t x) { return x >= 0 && x < width ? row[x] : T(0); };
  const int64_t inside_begin = std::min((offset + 1) / 2, count);           // first j with 2j - offset >= 0
  const int64_t inside_end = std::clamp((width + offset) / 2, inside_begin, count);  // 2j + 1 - offset < width
  for (int64_t j = 0; j < inside_begin; ++j) {
    even[j] = at(2 * j - offset);
    odd[j] = at(2 * j + 1 - offset);
  }
  for (int64_t j = inside_begin; j < inside_end; ++j) {
    even[j] = row[2 * j - offset];
    odd[j] = row[2 * j + 1 - offset];
  }
  for (int64_t j = inside_end; j < count; ++j) {
    even[j] = at(2 * j - offset);
    odd[j] = at(2 * j + 1 - offset);
  }
}

// The inverse: row[x] = (or +=) the entry of padded column x + offset, in even or odd, for x < width.
template <typename T>
[[gnu::always_inline]] inline void merge_columns(const T* __restrict even, const T* __restrict odd, int64_t offset,
                                                 int64_t width, bool accumulate, T* __restrict row) {
  // Column 2k of the row is padded column 2k + offset: even[k + offset/2] when offset is even, else odd[...].
  const T* first = (offset % 2 == 0 ? even : odd) + offset / 2;
  const T* second = (offset % 2 == 0 ? odd : even) + (offset + 1) / 2;
  const int64_t pairs = width / 2;
  if (accumulate) {
    for (int64_t k = 0; k < pairs; ++k) {
      row[2 * k] += first[k];
      row[2 * k + 1] += second[k];
    }
  } else {
    for (int64_t k = 0; k < pairs; ++k) {
      row[2 * k] = first[k];
      row[2 * k + 1] = second[k];
    }
  }
  if (width % 2 == 1) {
    row[width - 1] = accumulate ? row[width - 1] + first[pairs] : first[pairs];
  }
}

// patches[(4i + j) * point_stride + t * U + u]  <-  (B^T d B)[i][j] of tile (first_row + t, u) of one input plane.
template <typename T>
[[gnu::always_inline]] inline void input_plane(const T* __restrict plane, const PlaneShape& s, int64_t first_row,
                                               int64_t rows, T* __restrict split, T* __restrict patches,
                                               int64_t point_stride) {
  const int64_t columns = s.tile_columns;
  const int64_t half = columns + 1;  // the padded row's 2U + 2 columns, split in two
  for (int64_t r = 0; r < 2 * rows + 2; ++r) {
    T* even = split + 2 * r * half;
    const int64_t y = 2 * first_row + r - s.padding_top;
    if (y < 0 || y >= s.height) {
      std::fill(even, even + 2 * half, T(0));
    } else {
      split_columns(plane + y * s.width, s.width, s.padding_left, even, even + half, half);
    }
  }
  for (int64_t t = 0; t < rows; ++t) {
    const T* e0 = split + 2 * (2 * t) * half;
    const T* e1 = e0 + 2 * half;
    const T* e2 = e1 + 2 * half;
    const T* e3 = e2 + 2 * half;
    const T *o0 = e0 + half, *o1 = e1 + half, *o2 = e2 + half, *o3 = e3 + half;
    T* out = patches + t * columns;
  #pragma GCC ivdep
    for (int64_t u = 0; u < columns; ++u) {
      // B^T down the patch's four columns (d, as even[u], odd[u], even[u + 1], odd[u + 1]), then along each row
      const Line<T, 4> column[4] = {patch_transform(e0[u], e1[u], e2[u], e3[u]),
                                    patch_transform(o0[u], o1[u], o2[u], o3[u]),
                                    patch_transform(e0[u + 1], e1[u + 1], e2[u + 1], e3[u + 1]),
                                    patch_transform(o0[u + 1], o1[u + 1], o2[u + 1], o3[u + 1])};
      for (int i = 0; i < 4; ++i) {
        const Line<T, 4> v = patch_transform(column[0].x[i], column[1].x[i], column[2].x[i], column[3].x[i]);
        for (int j = 0; j < 4; ++j) {
          out[(4 * i + j) * point_stride + u] = v.x[j];
        }
      }
    }
  }
}

// The 2x2 output tile A^T m A (row-major) of tile u from products[(4i + j) * point_stride + u].
template <typename T>
[[gnu::always_inline]] inline Line<T, 4> output_tile(const T* __restrict products, int64_t point_stride, int64_t u) {
  Line<T, 2> row[4];  // A^T along each row of the point matrix
  for (int i = 0; i < 4; ++i) {
    row[i] = tile_transform(products[(4 * i) * point_stride + u], products[(4 * i + 1) * point_stride + u],
                            products[(4 * i + 2) * point_stride + u], products[(4 * i + 3) * point_stride + u]);
  }
  const Line<T, 2> left = tile_transform(row[0].x[0], row[1].x[0], row[2].x[0], row[3].x[0]);
  const Line<T, 2> right = tile_transform(row[0].x[1], row[1].x[1], row[2].x[1], row[3].x[1]);
  return {{left.x[0], right.x[0], left.x[1], right.x[1]}};
}

// One output plane's rows 2(first_row + t), 2(first_row + t) + 1 from the products of its tile rows, plus bias;
// the tiles' pixels past the output's last row or column are dropped.
template <typename T>
[[gnu::always_inline]] inline void output_plane(const T* __restrict products, int64_t point_stride, T bias,
                                                const PlaneShape& s, int64_t first_row, int64_t rows,
                                                T* __restrict plane) {
  const int64_t pairs = s.out_width / 2;  // tiles whose two columns are both inside the output
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t y = 2 * (first_row + t);
    T* row0 = plane + y * s.out_width;
    T* row1 = row0 + s.out_width;
    const T* tile_row = products + t * s.tile_columns;
    if (y + 1 < s.out_height) {
#pragma GCC ivdep
      for (int64_t u = 0; u < pairs; ++u) {
        const Line<T, 4> tile = output_tile(tile_row, point_stride, u);
        row0[2 * u] = tile.x[0] + bias;
        row0[2 * u + 1] = tile.x[1] + bias;
        row1[2 * u] = tile.x[2] + bias;
        row1[2 * u + 1] = tile.x[3] + bias;
      }
    } else {
#pragma GCC ivdep
      for (int64_t u = 0; u < pairs; ++u) {
        const Line<T, 4> tile = output_tile(tile_row, point_stride, u);
        row0[2 * u] = tile.x[0] + bias;
        row0[2 * u + 1] = tile.x[1] + bias;
      }
    }
    if (s.out_width % 2 == 1) {
      const Line<T, 4> tile = output_tile(tile_row, point_stride, pairs);
      row0[2 * pairs] = tile.x[0] + bias;
      if (y + 1 < s.out_height) {
        row1[2 * pairs] = tile.x[2] + bias;
      }
    }
  }
}

// deltas[(4i + j) * point_stride + t * U + u]  <-  (A delta A^T)[i][j] of tile (first_row + t, u) of one plane of
// grad_output, zero past its last row and column.
template <typename T>
[[gnu::always_inline]] inline void grad_output_plane(const T* __restrict plane, const PlaneShape& s,
                                                     int64_t first_row, int64_t rows, T* __restrict split,
                                                     T* __restrict deltas, int64_t point_stride) {
  const int64_t columns = s.tile_columns;
  T* e0 = split;
  T* o0 = e0 + columns;
  T* e1 = o0 + columns;
  T* o1 = e1 + columns;
  for (int64_t t = 0; t < rows; ++t) {
    const int64_t y = 2 * (first_row + t);
    split_columns(plane + y * s.out_width, s.out_width, 0, e0, o0, columns);
    if (y + 1 < s.out_height) {
      split_columns(plane + (y + 1) * s.out_width, s.out_width, 0, e1, o1, columns);
    } else {
      std::fill(e1, e1 + 2 * columns, T(0));
    }
    T* out = deltas + t * columns;
  #pragma GCC ivdep
    for (int64_t u = 0; u < columns; ++u) {
      // A down the tile's two columns, then A along each of the four rows
      const Line<T, 4> even_column = tile_transform_adjoint(e0[u], e1[u]);
      const Line<T, 4> odd_column = tile_transform_adjoint(o0[u], o1[u]);
      for (int i = 0; i < 4; ++i) {
        const Line<T, 4> m = tile_transform_adjoint(even_column.x[i], odd_column.x[i]);
        for (int j = 0; j < 4; ++j) {
          out[(4 * i + j) * point_stride + u] = m.x[j];
        }
      }
    }
  }
}

// The patch B v B^T of tile u, column by column: result[x].x[a] is the patch's row a, column x.
template <typename T>
[[gnu::always_inline]] inline void input_grad_patch(const T* __restrict products, int64_t point_stride, int64_t u,
                                                    Line<T, 4> (&patch)[4]) {
  Line<T, 4> row[4];  // B along each row of the point matrix
  for (int i = 0; i < 4; ++i) {
    row[i] = patch_transform_adjoint(products[(4 * i) * point_stride + u], products[(4 * i + 1) * point_stride + u],
                                     products[(4 * i + 2) * point_stride + u],
                                     products[(4 * i + 3) * point_stride + u]);
  }
  for (int x = 0; x < 4; ++x) {
    patch[x] = patch_transform_adjoint(row[0].x[x], row[1].x[x], row[2].x[x], row[3].x[x]);
  }
}

// Adds the patches of one tile row onto the four split padded rows they cover: columns 0, 1 of tile u onto
// even[u], odd[u], columns 2, 3 onto even[u + 1], odd[u + 1] (two loops, so neither has a loop-carried sum).
template <typename T>
[[gnu::always_inline]] inline void add_patches(const T* __restrict products, int64_t point_stride, int64_t columns,
                                               T* __restrict e0, T* __restrict o0, T* __restrict e1,
                                               T* __restrict o1, T* __restrict e2, T* __restrict o2,
                                               T* __restrict e3, T* __restrict o3) {
#pragma GCC ivdep
  for (int64_t u = 0; u < columns; ++u) {
    Line<T, 4> patch[4];
    input_grad_patch(products, point_stride, u, patch);
    e0[u] += patch[0].x[0], e1[u] += patch[0].x[1], e2[u] += patch[0].x[2], e3[u] += patch[0].x[3];
    o0[u] += patch[1].x[0], o1[u] += patch[1].x[1], o2[u] += patch[1].x[2], o3[u] += patch[1].x[3];
  }
#pragma GCC ivdep
  for (int64_t u = 0; u < columns; ++u) {
    Line<T, 4> patch[4];
    input_grad_patch(products, point_stride, u, patch);
    e0[u + 1] += patch[2].x[0], e1[u + 1] += patch[2].x[1], e2[u + 1] += patch[2].x[2], e3[u + 1] += patch[2].x[3];
    o0[u + 1] += patch[3].x[0], o1[u + 1] += patch[3].x[1], o2[u + 1] += patch[3].x[2], o3[u + 1] += patch[3].x[3];
  }
}

// One grad_input plane's rows covered by the tile rows [first_row, first_row + rows): the sum of B v B^T over the
// patches that read each pixel. The first two rows are added onto (add_first_rows: the piece before wrote them).
template <typename T>
[[gnu::always_inline]] inline void input_grad_plane(const T* __restrict products, int64_t point_stride,
                                                    const PlaneShape& s, int64_t first_row, int64_t rows,
                                                    bool add_first_rows, T* __restrict split, T* __restrict plane) {
  const int64_t columns = s.tile_columns;
  const int64_t half = columns + 1;
  std::fill(split, split + (2 * rows + 2) * 2 * half, T(0));
  for (int64_t t = 0; t < rows; ++t) {
    T* e0 = split + 2 * (2 * t) * half;
    T* e1 = e0 + 2 * half;
    T* e2 = e1 + 2 * half;
    T* e3 = e2 + 2 * half;
    add_patches(products + t * columns, point_stride, columns, e0, e0 + half, e1, e1 + half, e2, e2 + half, e3,
                e3 + half);
  }
  for (int64_t r = 0; r < 2 * rows + 2; ++r) {
    const int64_t y = 2 * first_row + r - s.padding_top;
    if (y >= 0 && y < s.height) {
      const T* even = split + 2 * r * half;
      merge_columns(even, even + half, s.padding_left, s.width, add_first_rows && r < 2, plane + y * s.width);
    }
  }
}

// kernels[(4i + j) * point_stride + e]  <-  (G g G^T)[i][j] for the kernels g[a][b] = taps[(3a + b) * tap_stride + e],
// e < count.
template <typename T>
[[gnu::always_inline]] inline void kernel_points(const T* __restrict taps, int64_t tap_stride, int64_t count,
                                                 T* __restrict kernels, int64_t point_stride) {
  const auto g = [&](int a, int b, int64_t e) { return taps[(3 * a + b) * tap_stride + e]; };
#pragma GCC ivdep
  for (int64_t e = 0; e < count; ++e) {
    // G down the kernel's three columns, then along each of the four rows
    const Line<T, 4> column[3] = {kernel_transform(g(0, 0, e), g(1, 0, e), g(2, 0, e)),
                                  kernel_transform(g(0, 1, e), g(1, 1, e), g(2, 1, e)),
                                  kernel_transform(g(0, 2, e), g(1, 2, e), g(2, 2, e))};
    for (int i = 0; i < 4; ++i) {
      const Line<T, 4> u = kernel_transform(column[0].x[i], column[1].x[i], column[2].x[i]);
      for (int j = 0; j < 4; ++j) {
        kernels[(4 * i + j) * point_stride + e] = u.x[j];
      }
    }
  }
}

// taps[(3a + b) * tap_stride + e]  <-  (G^T s G)[a][b] for the sums s[i][j] = sums[(4i + j) * point_stride + e],
// e < count.
template <typename T>
[[gnu::always_inline]] inline void kernel_grad_taps(const T* __restrict sums, int64_t point_stride, int64_t count,
                                                    T* __restrict taps, int64_t tap_stride) {
  const auto s = [&](int i, int j, int64_t e) { return sums[(4 * i + j) * point_stride + e]; };
#pragma GCC ivdep
  for (int64_t e = 0; e < count; ++e) {
    // G^T down each of the four columns, then along each of the three rows
    const Line<T, 3> column[4] = {kernel_transform_adjoint(s(0, 0, e), s(1, 0, e), s(2, 0, e), s(3, 0, e)),
                                  kernel_transform_adjoint(s(0, 1, e), s(1, 1, e), s(2, 1, e), s(3, 1, e)),
                                  kernel_transform_adjoint(s(0, 2, e), s(1, 2, e), s(2, 2, e), s(3, 2, e)),
                                  kernel_transform_adjoint(s(0, 3, e), s(1, 3, e), s(2, 3, e), s(3, 3, e))};
    for (int a = 0; a < 3; ++a) {
      const Line<T, 3> w = kernel_transform_adjoint(column[0].x[a], column[1].x[a], column[2].x[a], column[3].x[a]);
      for (int b = 0; b < 3; ++b) {
        taps[(3 * a + b) * tap_stride + e] = w.x[b];
      }
    }
  }
}

// The clones: float and double get the widest vectors the CPU has (the ops take no other dtype).
#define MANUAL_CONV_WINOGRAD_CLONES(T)                                                                              \
  MANUAL_CONV_VECTOR_CLONES void input_plane_clone(const T* plane, const PlaneShape& s, int64_t first_row,          \
                                                   int64_t rows, T* split, T* patches, int64_t point_stride) {      \
    input_plane(plane, s, first_row, rows, split, patches, point_stride);                                          \
  }                                                                                                                 \
  MANUAL_CONV_VECTOR_CLONES void output_plane_clone(const T* products, int64_t point_stride, T bias,                \
                                                    const PlaneShape& s, int64_t first_row, int64_t rows, T* plane) { \
    output_plane(products, point_stride, bias, s, first_row, rows, plane);                                         \
  }                                                                                                                 \
  MANUAL_CONV_VECTOR_CLONES void grad_output_plane_clone(const T* plane, const PlaneShape& s, int64_t first_row,    \
                                                         int64_t rows, T* split, T* deltas, int64_t point_stride) { \
    grad_output_plane(plane, s, first_row, rows, split, deltas, point_stride);                                     \
  }                                                                                                                 \
  MANUAL_CONV_VECTOR_CLONES void input_grad_plane_clone(const T* products, int64_t point_stride,                    \
                                                        const PlaneShape& s, int64_t first_row, int64_t rows,       \
                                                        bool add_first_rows, T* split, T* plane) {                  \
    input_grad_plane(products, point_stride, s, first_row, rows, add_first_rows, split, plane);                    \
  }                                                                                                                 \
  MANUAL_CONV_VECTOR_CLONES void kernel_points_clone(const T* taps, int64_t tap_stride, int64_t count, T* kernels,  \
                                                     int64_t point_stride) {                                        \
    kernel_points(taps, tap_stride, count, kernels, point_stride);                                                 \
  }                                                                                                                 \
  MANUAL_CONV_VECTOR_CLONES void kernel_grad_taps_clone(const T* sums, int64_t point_stride, int64_t count, T* taps, \
                                                        int64_t tap_stride) {                                       \
    kernel_grad_taps(sums, point_stride, count, taps, tap_stride);                                                 \
  }

MANUAL_CONV_WINOGRAD_CLONES(float)
MANUAL_CONV_WINOGRAD_CLONES(double)
#undef MANUAL_CONV_WINOGRAD_CLONES

// A thread's share of the kernel transforms, and the batch they are gathered in: at least this many kernels (a
// few microseconds of work; 9 taps of them, 36 or 72 KiB, stay in L1/L2).
constexpr int64_t kKernelsPerTask = 1024;

// Scratch for one plane's split padded rows: (2 * rows + 2) rows of 2 * (U + 1) numbers.
int64_t split_rows_size(const TileChunk& chunk, const PlaneShape& s) {
  return (2 * chunk.rows + 2) * 2 * (s.tile_columns + 1);
}

// The kernel transforms run along rows of taps (one row per tap, a batch of kernels long), which the loops below
// gather from the weight's (O, C, 3, 3) layout and scatter back, a batch of kKernelsPerTask kernels at a time: a
// whole tap-major copy of the block would be 9/16 of the transformed block again, per thread.
void weight_transform_cpu(const at::Tensor& weight, const ChannelBlock& outputs, const ChannelBlock& inputs,
                          at::Tensor& kernels) {
  const int64_t in_channels = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "manual_conv_winograd_weight_transform", [&] {
    const scalar_t* data = weight.const_data_ptr<scalar_t>();
    scalar_t* out = kernels.data_ptr<scalar_t>();
    at::parallel_for(0, outputs.count * inputs.count, kKernelsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> taps(9 * kKernelsPerTask);
      for (int64_t first = begin; first < end; first += kKernelsPerTask) {
        const int64_t count = std::min(kKernelsPerTask, end - first);
        for (int64_t e = 0; e < count; ++e) {
          const int64_t output = outputs.first + (first + e) / inputs.count;
          const scalar_t* g = data + (output * in_channels + inputs.first + (first + e) % inputs.count) * 9;
          for (int tap = 0; tap < 9; ++tap) {
            taps[tap * count + e] = g[tap];
          }
        }
        kernel_points_clone(taps.data(), count, count, out + first, kernels.stride(0));
      }
    });
  });
}

void weight_grad_transform_cpu(const at::Tensor& sums, const ChannelBlock& outputs, at::Tensor& grad_weight) {
  const int64_t in_channels = grad_weight.size(1);
  AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "manual_conv_winograd_weight_grad_transform", [&] {
    const scalar_t* data = sums.const_data_ptr<scalar_t>();
    scalar_t* out = grad_weight.data_ptr<scalar_t>() + outputs.first * in_channels * 9;
    at::parallel_for(0, outputs.count * in_channels, kKernelsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> taps(9 * kKernelsPerTask);
      for (int64_t first = begin; first < end; first += kKernelsPerTask) {
        const int64_t count = std::min(kKernelsPerTask, end - first);
        kernel_grad_taps_clone(data + first, sums.stride(0), count, taps.data(), count);
        for (int64_t e = 0; e < count; ++e) {
          for (int tap = 0; tap < 9; ++tap) {
            out[(first + e) * 9 + tap] = taps[tap * count + e];
          }
        }
      }
    });
  });
}

// The rows [begin, end) of a plane that a chunk's tiles read or write: of the input (and its gradient) or of the
// output (and grad_output), clipped to the plane.
struct RowRange {
  int64_t begin, end;
};

RowRange input_rows(const TileChunk& chunk, const PlaneShape& s) {
  return {std::clamp<int64_t>(2 * chunk.first_row - s.padding_top, 0, s.height),
          std::clamp<int64_t>(2 * (chunk.first_row + chunk.rows) + 2 - s.padding_top, 0, s.height)};
}

RowRange output_rows(const TileChunk& chunk, const PlaneShape& s) {
  return {2 * chunk.first_row, std::min(2 * (chunk.first_row + chunk.rows), s.out_height)};
}

// Runs visit(image_in_chunk, channel_in_block, plane) for the chunk's images and the block's channels, where
// plane points at that (image, channel) plane of `tensor` (NCHW, `channels` channels), and before each plane asks
// for the rows of the next one. A chunk's rows of one plane are a few hundred bytes to a few KiB and the next
// plane starts a whole plane further on: too short a stream for the hardware prefetcher, so each plane's first
// reads (or writes: `write`) missed the cache. Measured on ResNet-18's 64-channel layer (one thread, perf): the
// input transform went from 12.4% to 9.4% of the forward's samples, the output transform from 7.7% to 4.4%
// (MKL's GEMM: 45%).
template <bool write, typename T, typename Visit>
void for_each_plane(T* tensor, int64_t channels, int64_t height, int64_t width, const TileChunk& chunk,
                    const ChannelBlock& block, const RowRange& rows, const Visit& visit) {
  const auto plane = [&](int64_t index) {
    return tensor + ((chunk.first_image + index / block.count) * channels + block.first + index % block.count) *
                        height * width;
  };
  const int64_t planes = chunk.images * block.count;
  const int64_t bytes = (rows.end - rows.begin) * width * static_cast<int64_t>(sizeof(T));
  for (int64_t index = 0; index < planes; ++index) {
    if (index + 1 < planes) {
      const char* next = reinterpret_cast<const char*>(plane(index + 1) + rows.begin * width);
      for (int64_t offset = 0; offset < bytes; offset += 64) {
        __builtin_prefetch(next + offset, write ? 1 : 0, 3);
      }
    }
    visit(index / block.count, index % block.count, plane(index));
  }
}

void input_transform_cpu(const at::Tensor& input, const ConvShape& shape, const TileChunk& chunk,
                         at::Tensor& patches) {
  const PlaneShape s = plane_shape(shape);
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "manual_conv_winograd_input_transform", [&] {
    std::vector<scalar_t> split(split_rows_size(chunk, s));
    scalar_t* out = patches.data_ptr<scalar_t>();
    for_each_plane<false>(input.const_data_ptr<scalar_t>(), shape.in_channels, s.height, s.width, chunk,
                          {0, shape.in_channels}, input_rows(chunk, s),
                          [&](int64_t image, int64_t channel, const scalar_t* plane) {
                            input_plane_clone(plane, s, chunk.first_row, chunk.rows, split.data(),
                                              out + channel * tiles + image * chunk.rows * s.tile_columns,
                                              patches.stride(0));
                          });
  });
}

void grad_output_transform_cpu(const at::Tensor& grad_output, const ConvShape& shape, const TileChunk& chunk,
                               const ChannelBlock& channels, at::Tensor& deltas) {
  const PlaneShape s = plane_shape(shape);
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "manual_conv_winograd_grad_output_transform", [&] {
    std::vector<scalar_t> split(4 * s.tile_columns);
    scalar_t* out = deltas.data_ptr<scalar_t>();
    for_each_plane<false>(grad_output.const_data_ptr<scalar_t>(), shape.out_channels, s.out_height, s.out_width,
                          chunk, channels, output_rows(chunk, s),
                          [&](int64_t image, int64_t channel, const scalar_t* plane) {
                            grad_output_plane_clone(plane, s, chunk.first_row, chunk.rows, split.data(),
                                                    out + channel * tiles + image * chunk.rows * s.tile_columns,
                                                    deltas.stride(0));
                          });
  });
}

void output_transform_cpu(const at::Tensor& products, const std::optional<at::Tensor>& bias, const ConvShape& shape,
                          const TileChunk& chunk, const ChannelBlock& channels, at::Tensor& output) {
  const PlaneShape s = plane_shape(shape);
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(products.scalar_type(), "manual_conv_winograd_output_transform", [&] {
    const scalar_t* data = products.const_data_ptr<scalar_t>();
    const scalar_t* bias_data = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    for_each_plane<true>(output.data_ptr<scalar_t>(), shape.out_channels, s.out_height, s.out_width, chunk,
                         channels, output_rows(chunk, s), [&](int64_t image, int64_t channel, scalar_t* plane) {
                           const scalar_t channel_bias =
                               bias_data != nullptr ? bias_data[channels.first + channel] : scalar_t(0);
                           output_plane_clone(data + channel * tiles + image * chunk.rows * s.tile_columns,
                                              products.stride(0), channel_bias, s, chunk.first_row, chunk.rows,
                                              plane);
                         });
  });
}

void input_grad_transform_cpu(const at::Tensor& products, const ConvShape& shape, const TileChunk& chunk,
                              const ChannelBlock& channels, at::Tensor& grad_input) {
  const PlaneShape s = plane_shape(shape);
  const int64_t tiles = chunk_tiles(chunk, tile_grid(shape));
  AT_DISPATCH_FLOATING_TYPES(products.scalar_type(), "manual_conv_winograd_input_grad_transform", [&] {
    std::vector<scalar_t> split(split_rows_size(chunk, s));
    const scalar_t* data = products.const_data_ptr<scalar_t>();
    for_each_plane<true>(grad_input.data_ptr<scalar_t>(), shape.in_channels, s.height, s.width, chunk, channels,
                         input_rows(chunk, s), [&](int64_t image, int64_t channel, scalar_t* plane) {
                           input_grad_plane_clone(data + channel * tiles + image * chunk.rows * s.tile_columns,
                                                  products.stride(0), s, chunk.first_row, chunk.rows,
                                                  chunk.first_row > 0, split.data(), plane);
                         });
  });
}

// 1 MiB, as the im2col core: what fits in a core's L2 cache, so the GEMMs read a chunk's transformed tiles while
// the transform's writes are still cached.
constexpr WinogradKernels kCpuWinogradKernels{
    &parallel_blocks,      &thread_count,          2 << 20,
    &weight_transform_cpu, &input_transform_cpu,   &grad_output_transform_cpu,
    &output_transform_cpu, &input_grad_transform_cpu, &weight_grad_transform_cpu};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CPU, library) {
  manual_conv::register_winograd_ops<manual_conv::kCpuWinogradKernels>(library);
}
