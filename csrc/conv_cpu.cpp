// CPU im2col / col2im: one work item per (image of the chunk, input channel), run in parallel with
// at::parallel_for. An item owns one input plane and the kH*kW column rows of its channel, so items never
// write the same memory. The loops walk whole output rows, using conv_index.h to find, for each kernel tap,
// the output positions that read real input (copied) and those that read padding (zero).
#include <algorithm>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "conv_core.h"

namespace manual_conv {
namespace {

// Calls visit(out_y, x_begin, x_end, offset) for every output row piece of one image that the chunk holds,
// where offset is the column (within the image's part of the chunk) of output pixel (out_y, x_begin).
template <typename Visit>
void for_each_output_row(const ColumnChunk& chunk, int64_t out_width, const Visit& visit) {
  const int64_t first = chunk.first_pixel;
  const int64_t end = chunk.first_pixel + chunk.pixels_per_image;
  for (int64_t out_y = first / out_width; out_y * out_width < end; ++out_y) {
    const int64_t x_begin = std::max<int64_t>(first - out_y * out_width, 0);
    const int64_t x_end = std::min(end - out_y * out_width, out_width);
    visit(out_y, x_begin, x_end, out_y * out_width + x_begin - first);
  }
}

// Calls visit(row, tap_y, tap_x) for the kH*kW column rows of `channel`.
template <typename Visit>
void for_each_tap(const ConvShape& shape, int64_t channel, const Visit& visit) {
  const int64_t taps = shape.kernel_height * shape.kernel_width;
  for (int64_t row = channel * taps; row < (channel + 1) * taps; ++row) {
    int64_t row_channel, tap_y, tap_x;
    column_row_taps(row, shape.kernel_height, shape.kernel_width, &row_channel, &tap_y, &tap_x);
    visit(row, tap_y, tap_x);
  }
}

// Runs item(image_in_chunk, channel) over every (image, channel) pair of the chunk in parallel.
template <typename Item>
void parallel_over_planes(const ColumnChunk& chunk, const ConvShape& shape, const Item& item) {
  at::parallel_for(0, chunk.images * shape.in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      item(plane / shape.in_channels, plane % shape.in_channels);
    }
  });
}

template <typename scalar_t>
void im2col_kernel(const scalar_t* input, const ConvShape& shape, const ColumnChunk& chunk, scalar_t* columns) {
  const int64_t columns_count = chunk.images * chunk.pixels_per_image;
  const int64_t plane_size = shape.in_height * shape.in_width;
  parallel_over_planes(chunk, shape, [&](int64_t image_in_chunk, int64_t channel) {
    const scalar_t* plane = input + ((chunk.first_image + image_in_chunk) * shape.in_channels + channel) * plane_size;
    for_each_tap(shape, channel, [&](int64_t row, int64_t tap_y, int64_t tap_x) {
      scalar_t* column_row = columns + row * columns_count + image_in_chunk * chunk.pixels_per_image;
      int64_t inside_begin, inside_end;  // output columns x whose tap reads inside the input row
      inside_output_range(shape.in_width, tap_x, shape.stride_width, shape.padding_width, shape.dilation_width,
                          shape.out_width, &inside_begin, &inside_end);
      for_each_output_row(chunk, shape.out_width, [&](int64_t out_y, int64_t x_begin, int64_t x_end, int64_t offset) {
        scalar_t* destination = column_row + offset - x_begin;  // destination[x] is output pixel (out_y, x)
        const int64_t in_y =
            input_coordinate(out_y, tap_y, shape.stride_height, shape.padding_height, shape.dilation_height);
        if (in_y < 0 || in_y >= shape.in_height) {
          std::fill(destination + x_begin, destination + x_end, scalar_t(0));
          return;
        }
        const int64_t copy_begin = std::clamp(inside_begin, x_begin, x_end);
        const int64_t copy_end = std::clamp(inside_end, copy_begin, x_end);
        std::fill(destination + x_begin, destination + copy_begin, scalar_t(0));
        const scalar_t* source = plane + in_y * shape.in_width +
            input_coordinate(0, tap_x, shape.stride_width, shape.padding_width, shape.dilation_width);
        if (shape.stride_width == 1) {
          std::copy(source + copy_begin, source + copy_end, destination + copy_begin);
        } else {
          for (int64_t out_x = copy_begin; out_x < copy_end; ++out_x) {
            destination[out_x] = source[out_x * shape.stride_width];
          }
        }
        std::fill(destination + copy_end, destination + x_end, scalar_t(0));
      });
    });
  });
}

template <typename scalar_t>
void col2im_kernel(const scalar_t* columns, const ConvShape& shape, const ColumnChunk& chunk, scalar_t* grad_input) {
  const int64_t columns_count = chunk.images * chunk.pixels_per_image;
  const int64_t plane_size = shape.in_height * shape.in_width;
  parallel_over_planes(chunk, shape, [&](int64_t image_in_chunk, int64_t channel) {
    scalar_t* plane = grad_input + ((chunk.first_image + image_in_chunk) * shape.in_channels + channel) * plane_size;
    if (chunk.first_pixel == 0) {  // the image's first chunk: no earlier contributions to keep
      std::fill(plane, plane + plane_size, scalar_t(0));
    }
    for_each_tap(shape, channel, [&](int64_t row, int64_t tap_y, int64_t tap_x) {
      const scalar_t* column_row = columns + row * columns_count + image_in_chunk * chunk.pixels_per_image;
      int64_t inside_begin, inside_end;
      inside_output_range(shape.in_width, tap_x, shape.stride_width, shape.padding_width, shape.dilation_width,
                          shape.out_width, &inside_begin, &inside_end);
      for_each_output_row(chunk, shape.out_width, [&](int64_t out_y, int64_t x_begin, int64_t x_end, int64_t offset) {
        const int64_t in_y =
            input_coordinate(out_y, tap_y, shape.stride_height, shape.padding_height, shape.dilation_height);
        if (in_y < 0 || in_y >= shape.in_height) {
          return;  // this tap read padding: nothing flows back
        }
        const scalar_t* source = column_row + offset - x_begin;  // source[x] is output pixel (out_y, x)
        scalar_t* destination = plane + in_y * shape.in_width +
            input_coordinate(0, tap_x, shape.stride_width, shape.padding_width, shape.dilation_width);
        const int64_t add_begin = std::clamp(inside_begin, x_begin, x_end);
        const int64_t add_end = std::clamp(inside_end, add_begin, x_end);
        for (int64_t out_x = add_begin; out_x < add_end; ++out_x) {
          destination[out_x * shape.stride_width] += source[out_x];
        }
      });
    });
  });
}

void im2col_cpu(const at::Tensor& input, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& columns) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "manual_conv_im2col_cpu", [&] {
    im2col_kernel(input.const_data_ptr<scalar_t>(), shape, chunk, columns.data_ptr<scalar_t>());
  });
}

void col2im_cpu(const at::Tensor& columns, const ConvShape& shape, const ColumnChunk& chunk, at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, columns.scalar_type(), "manual_conv_col2im_cpu", [&] {
    col2im_kernel(columns.const_data_ptr<scalar_t>(), shape, chunk, grad_input.data_ptr<scalar_t>());
  });
}

constexpr ColumnKernels kCpuKernels{&im2col_cpu, &col2im_cpu};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CPU, library) {
  manual_conv::register_device_ops<manual_conv::kCpuKernels>(library);
}
