// CPU kernels of the conv core. One parallel region per op: at::parallel_for hands each thread a block of
// chunks, and the thread runs im2col/col2im for them serially and calls single-threaded GEMMs (MKL run from
// inside a parallel region), so a chunk's columns are consumed from the cache of the core that wrote them
// and the threads synchronise once per op rather than once per chunk.
//
// im2col/col2im loop over (image of the chunk, input channel) planes and the kH*kW column rows of each
// channel, walking whole output rows: conv_index.h gives, for each kernel tap, the input row each output row
// reads and the output columns that read real input (copied) rather than padding (zero). That plan of row
// copies is the same for every plane, so it is computed once per chunk and the plane loops only move
// memory. 'Same' convolutions (stride 1, output as wide as the input) move each tap's row as one shifted
// plane instead.
#include <algorithm>
#include <cstring>
#include <vector>

#include <ATen/Dispatch.h>

#include "conv_core.h"
#include "cpu_blocks.h"
#include "vector_clones.h"

namespace manual_conv {
namespace {

// A kernel tap and the output columns x whose tap reads inside the input row (the others read padding).
struct Tap {
  int64_t tap_y, tap_x;
  int64_t inside_begin, inside_end;
  int64_t input_x_offset;  // input column read by output column 0 (input column of x: x*sW + offset)
};

// The kH*kW taps in column-row order, computed once per call so the inner loops do no division.
std::vector<Tap> kernel_taps(const ConvShape& shape) {
  std::vector<Tap> taps(shape.kernel_height * shape.kernel_width);
  for (int64_t row = 0; row < static_cast<int64_t>(taps.size()); ++row) {
    Tap& tap = taps[row];
    int64_t channel;
    column_row_taps(row, shape.kernel_height, shape.kernel_width, &channel, &tap.tap_y, &tap.tap_x);
    inside_output_range(shape.in_width, tap.tap_x, shape.stride_width, shape.padding_width, shape.dilation_width,
                        shape.out_width, &tap.inside_begin, &tap.inside_end);
    tap.input_x_offset = input_coordinate(0, tap.tap_x, shape.stride_width, shape.padding_width, shape.dilation_width);
  }
  return taps;
}

// One output row piece of one tap, the same in every (image, channel) plane of a chunk: columns
// [column, column + length) of the image's part of the tap's column row, of which the relative columns
// [copy_begin, copy_end) read input pixels source, source + sW, ... of the plane and the others read padding.
struct RowCopy {
  int64_t column, length;
  int64_t copy_begin, copy_end;
  int64_t source;
};

// The row copies of every tap (tap-major, one per output row piece of the chunk), computed once per chunk so
// the loops over its planes only move memory. The row pieces come from the column <-> pixel maps the CUDA
// kernels use per element.
std::vector<RowCopy> row_copies(const ConvShape& shape, const ColumnChunk& chunk, const std::vector<Tap>& taps) {
  int64_t image, first_y, first_x, last_y, last_x;
  column_pixel(chunk, shape.out_width, 0, &image, &first_y, &first_x);
  column_pixel(chunk, shape.out_width, chunk.pixels_per_image - 1, &image, &last_y, &last_x);
  std::vector<RowCopy> copies;
  copies.reserve(taps.size() * (last_y - first_y + 1));
  for (const Tap& tap : taps) {
    for (int64_t out_y = first_y; out_y <= last_y; ++out_y) {
      const int64_t x_begin = out_y == first_y ? first_x : 0;
      const int64_t x_end = out_y == last_y ? last_x + 1 : shape.out_width;
      RowCopy copy{pixel_column(chunk, shape.out_width, image, out_y, x_begin), x_end - x_begin, 0, 0, 0};
      const int64_t in_y =
          input_coordinate(out_y, tap.tap_y, shape.stride_height, shape.padding_height, shape.dilation_height);
      const int64_t inside_begin = std::clamp(tap.inside_begin, x_begin, x_end);
      const int64_t inside_end = std::clamp(tap.inside_end, inside_begin, x_end);
      if (in_y >= 0 && in_y < shape.in_height && inside_begin < inside_end) {
        copy.copy_begin = inside_begin - x_begin;
        copy.copy_end = inside_end - x_begin;
        copy.source = in_y * shape.in_width + tap.input_x_offset + inside_begin * shape.stride_width;
      }
      copies.push_back(copy);
    }
  }
  return copies;
}

// destination[k] += source[k] for k < count: the 'same' col2im's long adds, vectorised for float and double.
template <typename scalar_t>
[[gnu::always_inline]] inline void add_row(scalar_t* __restrict destination, const scalar_t* __restrict source,
                                           int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    destination[k] += source[k];
  }
}

MANUAL_CONV_VECTOR_CLONES void add_row(float* __restrict destination, const float* __restrict source, int64_t count) {
  add_row<float>(destination, source, count);
}

MANUAL_CONV_VECTOR_CLONES void add_row(double* __restrict destination, const double* __restrict source,
                                       int64_t count) {
  add_row<double>(destination, source, count);
}

// One plane's part of one tap's column row, as planned by row_copies: zeros where the columns read padding,
// the input pixels elsewhere. Rows are short (tens of pixels), so the loops below are inlined into a clone
// per vector width: a few vector moves per row rather than library calls.
template <typename scalar_t>
[[gnu::always_inline]] inline void copy_rows(const scalar_t* __restrict plane, scalar_t* __restrict image_columns,
                                            const RowCopy* copies, int64_t count, int64_t stride_width) {
  for (const RowCopy* copy = copies; copy != copies + count; ++copy) {
    scalar_t* destination = image_columns + copy->column;
    const scalar_t* source = plane + copy->source;
    for (int64_t x = 0; x < copy->copy_begin; ++x) {
      destination[x] = scalar_t(0);
    }
    for (int64_t k = 0; k < copy->copy_end - copy->copy_begin; ++k) {
      destination[copy->copy_begin + k] = source[k * stride_width];
    }
    for (int64_t x = copy->copy_end; x < copy->length; ++x) {
      destination[x] = scalar_t(0);
    }
  }
}

// col2im's adjoint of copy_rows: each column that read an input pixel adds its value back to that pixel.
template <typename scalar_t>
[[gnu::always_inline]] inline void add_rows(scalar_t* __restrict plane, const scalar_t* __restrict image_columns,
                                           const RowCopy* copies, int64_t count, int64_t stride_width) {
  for (const RowCopy* copy = copies; copy != copies + count; ++copy) {
    const scalar_t* source = image_columns + copy->column + copy->copy_begin;
    scalar_t* destination = plane + copy->source;
    for (int64_t k = 0; k < copy->copy_end - copy->copy_begin; ++k) {
      destination[k * stride_width] += source[k];
    }
  }
}

// The clones: float and double get the widest vectors the CPU has, float16/bfloat16 the plain loops.
template <typename scalar_t>
void im2col_rows(const scalar_t* plane, scalar_t* image_columns, const RowCopy* copies, int64_t count,
                 int64_t stride_width) {
  copy_rows(plane, image_columns, copies, count, stride_width);
}

MANUAL_CONV_VECTOR_CLONES void im2col_rows(const float* plane, float* image_columns, const RowCopy* copies,
                                           int64_t count, int64_t stride_width) {
  copy_rows(plane, image_columns, copies, count, stride_width);
}

MANUAL_CONV_VECTOR_CLONES void im2col_rows(const double* plane, double* image_columns, const RowCopy* copies,
                                           int64_t count, int64_t stride_width) {
  copy_rows(plane, image_columns, copies, count, stride_width);
}

template <typename scalar_t>
void col2im_rows(scalar_t* plane, const scalar_t* image_columns, const RowCopy* copies, int64_t count,
                 int64_t stride_width) {
  add_rows(plane, image_columns, copies, count, stride_width);
}

MANUAL_CONV_VECTOR_CLONES void col2im_rows(float* plane, const float* image_columns, const RowCopy* copies,
                                           int64_t count, int64_t stride_width) {
  add_rows(plane, image_columns, copies, count, stride_width);
}

MANUAL_CONV_VECTOR_CLONES void col2im_rows(double* plane, const double* image_columns, const RowCopy* copies,
                                           int64_t count, int64_t stride_width) {
  add_rows(plane, image_columns, copies, count, stride_width);
}

// Runs plane(image_in_chunk, channel) for every (image, input channel) pair of the chunk.
template <typename Plane>
void for_each_plane(const ColumnChunk& chunk, const ConvShape& shape, const Plane& plane) {
  for (int64_t image_in_chunk = 0; image_in_chunk < chunk.images; ++image_in_chunk) {
    for (int64_t channel = 0; channel < shape.in_channels; ++channel) {
      plane(image_in_chunk, channel);
    }
  }
}

// Stride 1 with out_width == in_width (a 'same' convolution, as in ResNets): output pixel l = y*W + x reads
// input pixel l + shift for a shift fixed by the tap, so a tap's column row is the input plane shifted by a
// constant: one long copy (or, in col2im, one long add) instead of one per output row. The shifted range is
// wrong only where x + shift_x leaves the row and wraps into the neighbouring one; those entries read padding.
bool shifted_planes(const ConvShape& shape) {
  return shape.stride_height == 1 && shape.stride_width == 1 && shape.out_width == shape.in_width;
}

// The pixels [first, last) of one image's part of the chunk whose tap reads inside the plane (rows of
// padding and reads before/after the plane excluded), and the shift from output pixel to input pixel.
struct ShiftedRange {
  int64_t shift, first, last;
};

ShiftedRange shifted_range(const Tap& tap, const ConvShape& shape, const ColumnChunk& chunk) {
  const int64_t width = shape.in_width;
  const int64_t begin = chunk.first_pixel;
  const int64_t end = chunk.first_pixel + chunk.pixels_per_image;
  int64_t row_begin, row_end;  // output rows whose tap row is inside the input
  inside_output_range(shape.in_height, tap.tap_y, 1, shape.padding_height, shape.dilation_height, shape.out_height,
                      &row_begin, &row_end);
  const int64_t shift =
      input_coordinate(0, tap.tap_y, 1, shape.padding_height, shape.dilation_height) * width + tap.input_x_offset;
  const int64_t rows_first = std::clamp(row_begin * width, begin, end);
  const int64_t rows_last = std::clamp(row_end * width, rows_first, end);
  // Pixels cut here read before or after the plane: their x wraps, so they are padding as well.
  const int64_t first = std::clamp(-shift, rows_first, rows_last);
  const int64_t last = std::clamp(shape.in_height * width - shift, first, rows_last);
  return {shift, first, last};
}

// Calls visit(l) for the pixels l in [first, last) whose x is outside the tap's inside range.
template <typename Visit>
void for_each_wrapped_pixel(const Tap& tap, int64_t width, int64_t first, int64_t last, const Visit& visit) {
  if (first >= last || (tap.inside_begin == 0 && tap.inside_end == width)) {
    return;
  }
  const auto visit_if_in_range = [&](int64_t pixel) {
    if (pixel >= first && pixel < last) {
      visit(pixel);
    }
  };
  for (int64_t row_start = first / width * width; row_start < last; row_start += width) {
    for (int64_t x = 0; x < tap.inside_begin; ++x) {
      visit_if_in_range(row_start + x);
    }
    for (int64_t x = tap.inside_end; x < width; ++x) {
      visit_if_in_range(row_start + x);
    }
  }
}

template <typename scalar_t>
void im2col_kernel(const scalar_t* input, const ConvShape& shape, const ColumnChunk& chunk, scalar_t* columns) {
  const int64_t columns_count = chunk.images * chunk.pixels_per_image;
  const int64_t plane_size = shape.in_height * shape.in_width;
  const int64_t stride_width = shape.stride_width;
  const bool shifted = shifted_planes(shape);
  const std::vector<Tap> taps = kernel_taps(shape);
  const std::vector<RowCopy> copies = row_copies(shape, chunk, taps);
  const int64_t copies_per_tap = static_cast<int64_t>(copies.size() / taps.size());
  for_each_plane(chunk, shape, [&](int64_t image_in_chunk, int64_t channel) {
    const scalar_t* plane = input + ((chunk.first_image + image_in_chunk) * shape.in_channels + channel) * plane_size;
    for (size_t tap_index = 0; tap_index < taps.size(); ++tap_index) {
      const int64_t column_row = channel * static_cast<int64_t>(taps.size()) + static_cast<int64_t>(tap_index);
      scalar_t* image_columns = columns + column_row * columns_count + image_in_chunk * chunk.pixels_per_image;
      if (shifted) {
        const Tap& tap = taps[tap_index];
        const ShiftedRange range = shifted_range(tap, shape, chunk);
        scalar_t* destination = image_columns - chunk.first_pixel;  // destination[l]: output pixel l
        std::fill(destination + chunk.first_pixel, destination + range.first, scalar_t(0));
        std::memcpy(destination + range.first, plane + range.first + range.shift,
                    (range.last - range.first) * sizeof(scalar_t));
        std::fill(destination + range.last, destination + chunk.first_pixel + chunk.pixels_per_image, scalar_t(0));
        for_each_wrapped_pixel(tap, shape.in_width, range.first, range.last,
                               [&](int64_t pixel) { destination[pixel] = scalar_t(0); });
        continue;
      }
      im2col_rows(plane, image_columns, copies.data() + tap_index * copies_per_tap, copies_per_tap, stride_width);
    }
  });
}

template <typename scalar_t>
void col2im_kernel(scalar_t* columns, const ConvShape& shape, const ColumnChunk& chunk, scalar_t* grad_input) {
  const int64_t columns_count = chunk.images * chunk.pixels_per_image;
  const int64_t plane_size = shape.in_height * shape.in_width;
  const int64_t stride_width = shape.stride_width;
  const bool shifted = shifted_planes(shape);
  const std::vector<Tap> taps = kernel_taps(shape);
  const std::vector<RowCopy> copies = row_copies(shape, chunk, taps);
  const int64_t copies_per_tap = static_cast<int64_t>(copies.size() / taps.size());
  for_each_plane(chunk, shape, [&](int64_t image_in_chunk, int64_t channel) {
    scalar_t* plane = grad_input + ((chunk.first_image + image_in_chunk) * shape.in_channels + channel) * plane_size;
    if (chunk.first_pixel == 0) {  // the image's first chunk: no earlier contributions to keep
      std::fill(plane, plane + plane_size, scalar_t(0));
    }
    for (size_t tap_index = 0; tap_index < taps.size(); ++tap_index) {
      const int64_t column_row = channel * static_cast<int64_t>(taps.size()) + static_cast<int64_t>(tap_index);
      scalar_t* image_columns = columns + column_row * columns_count + image_in_chunk * chunk.pixels_per_image;
      if (shifted) {
        // Zero the entries that wrapped (they read padding, nothing flows back), then add in one piece.
        const Tap& tap = taps[tap_index];
        const ShiftedRange range = shifted_range(tap, shape, chunk);
        scalar_t* source = image_columns - chunk.first_pixel;  // source[l]: output pixel l
        for_each_wrapped_pixel(tap, shape.in_width, range.first, range.last,
                               [&](int64_t pixel) { source[pixel] = scalar_t(0); });
        add_row(plane + range.first + range.shift, source + range.first, range.last - range.first);
        continue;
      }
      col2im_rows(plane, image_columns, copies.data() + tap_index * copies_per_tap, copies_per_tap, stride_width);
    }
  });
}

void im2col_cpu(const at::Tensor& input, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& columns) {
  // Every dtype torch's CPU convolution computes: floating, complex and integer (im2col and col2im only move and
  // add elements; the GEMMs are ATen's).
  AT_DISPATCH_ALL_TYPES_AND_COMPLEX_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "manual_conv_im2col_cpu", [&] {
    im2col_kernel(input.const_data_ptr<scalar_t>(), shape, chunk, columns.data_ptr<scalar_t>());
  });
}

void col2im_cpu(const at::Tensor& columns, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& grad_input) {
  AT_DISPATCH_ALL_TYPES_AND_COMPLEX_AND2(at::kHalf, at::kBFloat16, columns.scalar_type(), "manual_conv_col2im_cpu",
                                         [&] {
    col2im_kernel(columns.data_ptr<scalar_t>(), shape, chunk, grad_input.data_ptr<scalar_t>());
  });
}

// 1 MiB: what fits in a core's L2 cache, so the GEMM reads a chunk's columns while im2col's writes are still
// cached (memory bandwidth, not arithmetic, is what a CPU convolution runs out of first).
constexpr DeviceKernels kCpuKernels{&parallel_blocks, &thread_count, 1 << 20, true, &im2col_cpu, &col2im_cpu};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CPU, library) {
  manual_conv::register_device_ops<manual_conv::kCpuKernels>(library);
}
