// Winograd's minimal filtering F(2x2, 3x3): its transforms and its tiling, shared by the CPU (.cpp) and CUDA (.cu)
// kernels. docs/derivations.md, "Winograd", derives them; manual_conv/ops/winograd.py is the readable reference.
//
// From the interpolation points 0, 1, -1 and infinity (winograd.py, transform_matrices):
//   B^T = [-1  0  1  0]        G = [ -1    0    0 ]        A^T = [1  1  1  0]
//         [ 0  1  1  0]            [ 1/2  1/2  1/2]              [0  1 -1  1]
//         [ 0 -1  1  0]            [ 1/2 -1/2  1/2]
//         [ 0 -1  0  1]            [  0    0    1 ]
// An output tile y (2x2) of a 3x3 kernel g over the 4x4 input patch d it reads is y = A^T [(G g G^T) . (B^T d B)] A.
// The forward applies B^T, G and A^T; the gradients apply their transposes (the adjoints). Each 2-D transform
// X^T z X is the 1-D one below applied to z's columns, then to the rows of the result. Every entry is 0, +-1 or
// +-1/2, so the transforms are exact in binary floating point but for the rounding of the sums.
#pragma once

#include <cstdint>

#include "conv_index.h"

namespace manual_conv {

constexpr int64_t kTileSize = 2;   // m: each tile is m x m output pixels
constexpr int64_t kPatchSize = 4;  // alpha = m + 2: the input patch a tile reads is alpha x alpha, overlapping by 2
constexpr int64_t kPoints = kPatchSize * kPatchSize;  // the alpha^2 Winograd points, one GEMM each

// One column or row of a transform's input or output: N numbers.
template <typename T, int N>
struct Line {
  T x[N];
};

// v = B^T d: an input patch's column (or row) into the Winograd domain.
template <typename T>
MANUAL_CONV_HOST_DEVICE inline Line<T, 4> patch_transform(T d0, T d1, T d2, T d3) {
  return {{d2 - d0, d1 + d2, d2 - d1, d3 - d1}};
}

// d = B v: the adjoint, from the Winograd domain back onto the patch (the input gradient).
template <typename T>
MANUAL_CONV_HOST_DEVICE inline Line<T, 4> patch_transform_adjoint(T v0, T v1, T v2, T v3) {
  return {{-v0, v1 - v2 - v3, v0 + v1 + v2, v3}};
}

// y = A^T m: the Winograd domain into an output tile's column (or row).
template <typename T>
MANUAL_CONV_HOST_DEVICE inline Line<T, 2> tile_transform(T m0, T m1, T m2, T m3) {
  return {{m0 + m1 + m2, m1 - m2 + m3}};
}

// m = A y: the adjoint, a tile of the output gradient into the Winograd domain.
template <typename T>
MANUAL_CONV_HOST_DEVICE inline Line<T, 4> tile_transform_adjoint(T y0, T y1) {
  return {{y0, y0 + y1, y0 - y1, y1}};
}

// u = G g: a kernel column (or row) into the Winograd domain.
template <typename T>
MANUAL_CONV_HOST_DEVICE inline Line<T, 4> kernel_transform(T g0, T g1, T g2) {
  const T half = T(0.5);
  return {{-g0, (g0 + g1 + g2) * half, (g0 - g1 + g2) * half, g2}};
}

// g = G^T u: the adjoint, the weight gradient out of the Winograd domain.
template <typename T>
MANUAL_CONV_HOST_DEVICE inline Line<T, 3> kernel_transform_adjoint(T u0, T u1, T u2, T u3) {
  const T half = T(0.5);
  return {{(u1 + u2) * half - u0, (u1 - u2) * half, (u1 + u2) * half + u3}};
}

// The tiles of a 3x3, stride-1 convolution: tile (t, u) covers output rows 2t, 2t+1 and columns 2u, 2u+1 (those
// past the output's edge are computed and dropped) and reads the padded input's rows 2t..2t+3 and columns
// 2u..2u+3, i.e. input row 2t + i - padding_height for i < 4 (zero outside the input), and likewise for columns.
struct TileGrid {
  int64_t rows, columns;  // T = ceil(H_out / 2), U = ceil(W_out / 2)
};

MANUAL_CONV_HOST_DEVICE inline TileGrid tile_grid(const ConvShape& shape) {
  return {(shape.out_height + kTileSize - 1) / kTileSize, (shape.out_width + kTileSize - 1) / kTileSize};
}

// The tiles one GEMM column buffer holds: the tile rows [first_row, first_row + rows) of `images` consecutive
// images starting at first_image. Either whole images (first_row == 0, rows == T) or part of one (images == 1).
// Column b of the buffer is tile (image first_image + b / (rows*U), row first_row + b / U % rows, column b % U).
struct TileChunk {
  int64_t first_image, images;
  int64_t first_row, rows;
};

MANUAL_CONV_HOST_DEVICE inline int64_t chunk_tiles(const TileChunk& chunk, const TileGrid& grid) {
  return chunk.images * chunk.rows * grid.columns;
}

}  // namespace manual_conv
