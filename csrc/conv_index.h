// Index arithmetic of a 2-D convolution, shared by the CPU (.cpp) and CUDA (.cu) kernels.
//
// Everything here is a plain inline function of integers, callable from host and device code, so the CPU
// tests exercise exactly the arithmetic the GPU kernels run.
//
// Notation (NCHW, symmetric padding):
//   out[n, o, y, x] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j] * x_pad[n, c, y*sH + i*dH, x*sW + j*dW]
// so output position y reads input row h = y*sH - pH + i*dH (rows outside [0, H) are the zero padding).
//
// im2col lays the patches out as a matrix with one row per (channel, kernel row, kernel column) and one column
// per output pixel:  columns[(c*kH + i)*kW + j][q] = x_pad[n, c, y*sH + i*dH, x*sW + j*dW]  where q enumerates
// the output pixels (n, y, x) of a ColumnChunk. Then the convolution of a group is one GEMM:
//   out_chunk (C_out/G, Q) = w_g (C_out/G, C_in/G*kH*kW) @ columns_g (C_in/G*kH*kW, Q).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MANUAL_CONV_HOST_DEVICE __host__ __device__
#else
#define MANUAL_CONV_HOST_DEVICE
#endif

namespace manual_conv {

// Every size of one convolution, as plain integers so it can be passed by value to a CUDA kernel.
struct ConvShape {
  int64_t batch, in_channels, in_height, in_width;
  int64_t out_channels, out_height, out_width;
  int64_t kernel_height, kernel_width;
  int64_t stride_height, stride_width;
  int64_t padding_height, padding_width;
  int64_t dilation_height, dilation_width;
  int64_t groups;
};

// The output pixels a column buffer holds: `images` consecutive images starting at `first_image`, and in each
// of them the output pixels l = y*out_width + x in [first_pixel, first_pixel + pixels_per_image).
// A chunk is either whole images (first_pixel == 0, pixels_per_image == out_height*out_width) or part of a
// single image (images == 1), so the buffer never grows beyond one chunk whatever the batch size.
struct ColumnChunk {
  int64_t first_image, images;
  int64_t first_pixel, pixels_per_image;
};

// Output extent along one axis: floor((in + 2p - d*(k - 1) - 1) / s) + 1.
MANUAL_CONV_HOST_DEVICE inline int64_t conv_output_size(
    int64_t in_size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  const int64_t span = in_size + 2 * padding - dilation * (kernel - 1) - 1;
  // Floor division, as the formula means it: a span of -1 (an empty input a kernel does not fit, which only an
  // empty batch's transposed convolution asks about) gives 0 outputs, where C++'s truncation would give 1.
  return (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
}

// Input coordinate read by output position `out_pos` through kernel tap `tap`: out*s - p + tap*d.
MANUAL_CONV_HOST_DEVICE inline int64_t input_coordinate(
    int64_t out_pos, int64_t tap, int64_t stride, int64_t padding, int64_t dilation) {
  return out_pos * stride - padding + tap * dilation;
}

// Inverse of input_coordinate: the output position whose kernel tap `tap` reads input coordinate `in_pos`.
// It exists when in + p - tap*d is a non-negative multiple of s whose quotient is a valid output position.
MANUAL_CONV_HOST_DEVICE inline bool output_coordinate(
    int64_t in_pos, int64_t tap, int64_t stride, int64_t padding, int64_t dilation, int64_t out_size,
    int64_t* out_pos) {
  const int64_t offset = in_pos + padding - tap * dilation;
  if (offset < 0 || offset % stride != 0) {
    return false;
  }
  *out_pos = offset / stride;
  return *out_pos < out_size;
}

// Half-open range [*begin, *end) of output positions whose tap `tap` reads inside the input [0, in_size);
// the positions outside it read zero padding. Empty ranges come back as begin == end.
MANUAL_CONV_HOST_DEVICE inline void inside_output_range(
    int64_t in_size, int64_t tap, int64_t stride, int64_t padding, int64_t dilation, int64_t out_size,
    int64_t* begin, int64_t* end) {
  // out*s - p + tap*d >= 0        <=>  out >= ceil((p - tap*d) / s)
  // out*s - p + tap*d <= in - 1   <=>  out <= floor((in - 1 + p - tap*d) / s)
  const int64_t low = padding - tap * dilation;
  const int64_t high = in_size - 1 + padding - tap * dilation;
  int64_t first = low <= 0 ? 0 : (low + stride - 1) / stride;
  int64_t last_plus_one = high < 0 ? 0 : high / stride + 1;
  first = first < out_size ? first : out_size;
  last_plus_one = last_plus_one < out_size ? last_plus_one : out_size;
  *begin = first;
  *end = last_plus_one > first ? last_plus_one : first;
}

// Row r of a group's column matrix -> (channel within the group, kernel row, kernel column).
MANUAL_CONV_HOST_DEVICE inline void column_row_taps(
    int64_t row, int64_t kernel_height, int64_t kernel_width, int64_t* channel, int64_t* tap_y,
    int64_t* tap_x) {
  *tap_x = row % kernel_width;
  const int64_t rest = row / kernel_width;
  *tap_y = rest % kernel_height;
  *channel = rest / kernel_height;
}

// Column q of a chunk's column matrix -> (image, output row, output column).
MANUAL_CONV_HOST_DEVICE inline void column_pixel(
    const ColumnChunk& chunk, int64_t out_width, int64_t column, int64_t* image, int64_t* out_y,
    int64_t* out_x) {
  *image = chunk.first_image + column / chunk.pixels_per_image;
  const int64_t pixel = chunk.first_pixel + column % chunk.pixels_per_image;
  *out_y = pixel / out_width;
  *out_x = pixel % out_width;
}

// Inverse of column_pixel for an output pixel of an image in the chunk: its column, or -1 when the chunk
// does not hold that pixel.
MANUAL_CONV_HOST_DEVICE inline int64_t pixel_column(
    const ColumnChunk& chunk, int64_t out_width, int64_t image, int64_t out_y, int64_t out_x) {
  const int64_t pixel_in_chunk = out_y * out_width + out_x - chunk.first_pixel;
  if (pixel_in_chunk < 0 || pixel_in_chunk >= chunk.pixels_per_image) {
    return -1;
  }
  return (image - chunk.first_image) * chunk.pixels_per_image + pixel_in_chunk;
}

}  // namespace manual_conv
