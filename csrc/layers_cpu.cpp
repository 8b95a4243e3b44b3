// CPU kernels of the compiled layers: at::parallel_for over the planes (max pooling; over the rows of images in
// channels_last) or over the elements (ReLU's backward), each element computed by the functions of
// layer_index.h that the CUDA kernels call too (max pooling's windows inside the input, and every window in
// channels_last, by loops of their own that apply the same rule, max_pool_takes); and max pooling's backward,
// compiled for the CPU only.
#include <algorithm>
#include <limits>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE, ATen's work per parallel task
#include <ATen/ops/empty.h>
#include <c10/util/accumulate.h>

#include "layers_core.h"
#include "vector_clones.h"

namespace manual_conv {
namespace {

// Max pooling of the output columns [begin, end) of one output row whose windows lie wholly inside the input:
// max_pool_window's scan and rule for each, with the window's taps in the inner loops and the columns in the
// outer one, which the compiler vectorises: a vector of windows scans its taps in registers, without a
// data-dependent branch. (One window at a time, a branch on which tap wins is mispredicted about half the
// time: the MNIST net's 2x2 pooling took 18 ms, against 3.4 ms so, on one thread.) The kernel size is a
// template argument for the common 2x2 and 3x3 pools, so that their tap loops unroll and vectorise, and 0 for
// "read it from shape" (not vectorised: other sizes run at about the speed of one window at a time).
template <int64_t kernel_height_arg, int64_t kernel_width_arg, typename scalar_t,
          typename compute_t = at::opmath_type<scalar_t>>
[[gnu::always_inline]] inline void max_pool_inside_columns(const scalar_t* __restrict plane, const PoolShape& shape,
                                                           int64_t out_y, int64_t begin, int64_t end,
                                                           scalar_t* __restrict out_row,
                                                           int64_t* __restrict index_row) {
  const int64_t kernel_height = kernel_height_arg ? kernel_height_arg : shape.kernel_height;
  const int64_t kernel_width = kernel_width_arg ? kernel_width_arg : shape.kernel_width;
  const int64_t width = shape.in_width;
  const int64_t first_y = input_coordinate(out_y, 0, shape.stride_height, shape.padding_height, 1);
  for (int64_t x = begin; x < end; ++x) {
    // Taps are addressed, and the winner remembered, by their offset from the window's first tap: an int32
    // (the caller checks that a plane's positions fit) as wide as a float, so that the vector loop blends
    // offsets as cheaply as values; the int64 position is formed once per window.
    const int64_t first = first_y * width + input_coordinate(x, 0, shape.stride_width, shape.padding_width, 1);
    const scalar_t* window = plane + first;
    compute_t best = max_pool_start<compute_t>();
    int32_t best_offset = 0;
    for (int64_t tap_y = 0; tap_y < kernel_height; ++tap_y) {
      for (int64_t tap_x = 0; tap_x < kernel_width; ++tap_x) {
        const int32_t offset =
            static_cast<int32_t>(tap_y * shape.dilation_height * width + tap_x * shape.dilation_width);
        const compute_t value = static_cast<compute_t>(window[offset]);
        const bool take = max_pool_takes(value, best);
        best = take ? value : best;
        best_offset = take ? offset : best_offset;
      }
    }
    out_row[x] = static_cast<scalar_t>(best);
    index_row[x] = first + best_offset;
  }
}

template <typename scalar_t>
[[gnu::always_inline]] inline void max_pool_inside_row_of_any_kernel(const scalar_t* plane, const PoolShape& shape,
                                                                     int64_t out_y, int64_t begin, int64_t end,
                                                                     scalar_t* out_row, int64_t* index_row) {
  if (shape.kernel_height == 2 && shape.kernel_width == 2) {
    max_pool_inside_columns<2, 2>(plane, shape, out_y, begin, end, out_row, index_row);
  } else if (shape.kernel_height == 3 && shape.kernel_width == 3) {
    max_pool_inside_columns<3, 3>(plane, shape, out_y, begin, end, out_row, index_row);
  } else {
    max_pool_inside_columns<0, 0>(plane, shape, out_y, begin, end, out_row, index_row);
  }
}

// The clones: float and double get the widest vectors the CPU has, float16/bfloat16 the plain loops.
template <typename scalar_t>
void max_pool_inside_row(const scalar_t* plane, const PoolShape& shape, int64_t out_y, int64_t begin, int64_t end,
                         scalar_t* out_row, int64_t* index_row) {
  max_pool_inside_row_of_any_kernel(plane, shape, out_y, begin, end, out_row, index_row);
}

MANUAL_CONV_VECTOR_CLONES void max_pool_inside_row(const float* plane, const PoolShape& shape, int64_t out_y,
                                                   int64_t begin, int64_t end, float* out_row, int64_t* index_row) {
  max_pool_inside_row_of_any_kernel(plane, shape, out_y, begin, end, out_row, index_row);
}

MANUAL_CONV_VECTOR_CLONES void max_pool_inside_row(const double* plane, const PoolShape& shape, int64_t out_y,
                                                   int64_t begin, int64_t end, double* out_row,
                                                   int64_t* index_row) {
  max_pool_inside_row_of_any_kernel(plane, shape, out_y, begin, end, out_row, index_row);
}

// Half-open range [*begin, *end) of output positions along one axis whose whole window reads inside the input:
// those whose first and last taps do.
void inside_windows(int64_t in_size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation,
                    int64_t out_size, int64_t* begin, int64_t* end) {
  int64_t last_tap_begin, last_tap_end;
  inside_output_range(in_size, 0, stride, padding, dilation, out_size, begin, end);
  inside_output_range(in_size, kernel - 1, stride, padding, dilation, out_size, &last_tap_begin, &last_tap_end);
  *begin = std::max(*begin, last_tap_begin);
  *end = std::max(*begin, std::min(*end, last_tap_end));
}

template <typename scalar_t>
void max_pool2d_kernel(const scalar_t* input, const PoolShape& shape, scalar_t* output, int64_t* indices) {
  const int64_t in_plane_size = shape.in_height * shape.in_width;
  const int64_t out_plane_size = shape.out_height * shape.out_width;
  int64_t inside_rows_begin, inside_rows_end, inside_columns_begin, inside_columns_end;
  inside_windows(shape.in_height, shape.kernel_height, shape.stride_height, shape.padding_height,
                 shape.dilation_height, shape.out_height, &inside_rows_begin, &inside_rows_end);
  inside_windows(shape.in_width, shape.kernel_width, shape.stride_width, shape.padding_width, shape.dilation_width,
                 shape.out_width, &inside_columns_begin, &inside_columns_end);
  if (in_plane_size > std::numeric_limits<int32_t>::max()) {  // max_pool_inside_columns' int32 tap offsets
    inside_rows_end = inside_rows_begin;
  }
  // Whole planes per task, enough of them that a task has about as many taps to scan as ATen's grain.
  const int64_t taps_per_plane = out_plane_size * shape.kernel_height * shape.kernel_width;
  const int64_t planes_per_task = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, taps_per_plane));
  at::parallel_for(0, shape.planes, planes_per_task, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* in_plane = input + plane * in_plane_size;
      for (int64_t out_y = 0; out_y < shape.out_height; ++out_y) {
        scalar_t* out_row = output + plane * out_plane_size + out_y * shape.out_width;
        int64_t* index_row = indices + plane * out_plane_size + out_y * shape.out_width;
        // The windows wholly inside the input go through max_pool_inside_row together, the others (at the
        // padded edges) through max_pool_window one by one.
        const bool row_inside = out_y >= inside_rows_begin && out_y < inside_rows_end;
        const int64_t inside_begin = row_inside ? inside_columns_begin : shape.out_width;
        const int64_t inside_end = row_inside ? inside_columns_end : shape.out_width;
        const auto pool_window = [&](int64_t out_x) {
          max_pool_window<at::opmath_type<scalar_t>>(in_plane, 1, shape, out_y, out_x, &out_row[out_x],
                                                     &index_row[out_x]);
        };
        for (int64_t out_x = 0; out_x < inside_begin; ++out_x) {
          pool_window(out_x);
        }
        max_pool_inside_row(in_plane, shape, out_y, inside_begin, inside_end, out_row, index_row);
        for (int64_t out_x = inside_end; out_x < shape.out_width; ++out_x) {
          pool_window(out_x);
        }
      }
    }
  });
}

// Max pooling of output pixel (out_y, out_x) of one channels_last image, every channel at once: max_pool_window's
// scan and rule for each channel (the same taps in the same order), with the channels in the inner loop, which
// the compiler vectorises. The best values so far are kept in the output pixel itself (as scalar_t: each is the
// start value or an input value, so the conversion loses nothing).
template <typename scalar_t, typename compute_t = at::opmath_type<scalar_t>>
[[gnu::always_inline]] inline void max_pool_channels_last_pixel(const scalar_t* __restrict image,
                                                                const PoolShape& shape, int64_t out_y,
                                                                int64_t out_x, scalar_t* __restrict out_pixel,
                                                                int64_t* __restrict index_pixel) {
  const PoolWindow window = pool_window_inside(shape, out_y, out_x);
  const int64_t channels = shape.channels;
  const int64_t first_index = window.first_y * shape.in_width + window.first_x;
  for (int64_t c = 0; c < channels; ++c) {
    out_pixel[c] = static_cast<scalar_t>(max_pool_start<compute_t>());
    index_pixel[c] = first_index;
  }
  for (int64_t in_y = window.first_y; in_y < window.end_y; in_y += shape.dilation_height) {
    for (int64_t in_x = window.first_x; in_x < window.end_x; in_x += shape.dilation_width) {
      const int64_t index = in_y * shape.in_width + in_x;
      const scalar_t* pixel = image + index * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const compute_t value = static_cast<compute_t>(pixel[c]);
        const bool take = max_pool_takes(value, static_cast<compute_t>(out_pixel[c]));
        out_pixel[c] = take ? static_cast<scalar_t>(value) : out_pixel[c];
        index_pixel[c] = take ? index : index_pixel[c];
      }
    }
  }
}

// One output row of one channels_last image; float and double get the widest vectors the CPU has.
template <typename scalar_t>
void max_pool_channels_last_row(const scalar_t* image, const PoolShape& shape, int64_t out_y, scalar_t* out_row,
                                int64_t* index_row) {
  for (int64_t out_x = 0; out_x < shape.out_width; ++out_x) {
    max_pool_channels_last_pixel(image, shape, out_y, out_x, out_row + out_x * shape.channels,
                                 index_row + out_x * shape.channels);
  }
}

MANUAL_CONV_VECTOR_CLONES void max_pool_channels_last_row(const float* image, const PoolShape& shape, int64_t out_y,
                                                          float* out_row, int64_t* index_row) {
  for (int64_t out_x = 0; out_x < shape.out_width; ++out_x) {
    max_pool_channels_last_pixel(image, shape, out_y, out_x, out_row + out_x * shape.channels,
                                 index_row + out_x * shape.channels);
  }
}

MANUAL_CONV_VECTOR_CLONES void max_pool_channels_last_row(const double* image, const PoolShape& shape, int64_t out_y,
                                                          double* out_row, int64_t* index_row) {
  for (int64_t out_x = 0; out_x < shape.out_width; ++out_x) {
    max_pool_channels_last_pixel(image, shape, out_y, out_x, out_row + out_x * shape.channels,
                                 index_row + out_x * shape.channels);
  }
}

// channels_last (N, H, W, C in memory): the output rows of every image, each task a run of whole rows with about
// as many taps to scan as ATen's grain.
template <typename scalar_t>
void max_pool2d_channels_last_kernel(const scalar_t* input, const PoolShape& shape, scalar_t* output,
                                     int64_t* indices) {
  const int64_t images = shape.planes / shape.channels;
  const int64_t in_image_size = shape.in_height * shape.in_width * shape.channels;
  const int64_t out_row_size = shape.out_width * shape.channels;
  const int64_t taps_per_row = out_row_size * shape.kernel_height * shape.kernel_width;
  const int64_t rows_per_task = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, taps_per_row));
  at::parallel_for(0, images * shape.out_height, rows_per_task, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t image = row / shape.out_height;
      max_pool_channels_last_row(input + image * in_image_size, shape, row % shape.out_height,
                                 output + row * out_row_size, indices + row * out_row_size);
    }
  });
}

void max_pool2d_cpu(const at::Tensor& input, const PoolShape& shape, bool channels_last, at::Tensor& output,
                    at::Tensor& indices) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "manual_conv_max_pool2d_cpu", [&] {
    const auto kernel = channels_last ? &max_pool2d_channels_last_kernel<scalar_t> : &max_pool2d_kernel<scalar_t>;
    kernel(input.const_data_ptr<scalar_t>(), shape, output.data_ptr<scalar_t>(), indices.data_ptr<int64_t>());
  });
}

// An arg-max must lie in its plane: anything else (a corrupt indices tensor) would write outside grad_input.
[[gnu::always_inline]] inline void check_max_pool_position(int64_t position, int64_t in_plane_size) {
  TORCH_CHECK(position >= 0 && position < in_plane_size, "manual_conv::max_pool2d_backward: index ", position,
              " is out of bounds for an input plane of ", in_plane_size, " positions");
}

// Max pooling's backward, a CPU-only op: grad_input[n, c, p] = Σ_{windows w: indices[n, c, w] = p} δ[n, c, w].
// Each plane is zeroed and its windows' gradients added at their arg-maxes in window order, while the plane is
// in cache. (The Python path's zeros + scatter_add_ passes over all of grad_input twice: 3.6 ms for the MNIST
// net's pooling on one thread, native 3.3 ms.) The sums run in window order and in scalar_t, as torch's own
// max-pool backward runs them, so they round alike where windows overlap (for float16/bfloat16 after every
// add; the Python path's scatter_add_ sums those in float32 and rounds once).
template <typename scalar_t>
void max_pool2d_backward_kernel(const scalar_t* grad_output, const int64_t* indices, int64_t planes,
                                int64_t out_plane_size, int64_t in_plane_size, scalar_t* grad_input) {
  const int64_t planes_per_task =
      std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, in_plane_size + out_plane_size));
  at::parallel_for(0, planes, planes_per_task, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      scalar_t* grad_plane = grad_input + plane * in_plane_size;
      std::fill(grad_plane, grad_plane + in_plane_size, scalar_t(0));
      for (int64_t window = plane * out_plane_size; window < (plane + 1) * out_plane_size; ++window) {
        const int64_t position = indices[window];
        check_max_pool_position(position, in_plane_size);
        grad_plane[position] += grad_output[window];
      }
    }
  });
}

// The same sums in channels_last memory, image by image: each image's gradient zeroed, then every window's δ of
// every channel added at its arg-max, windows in order (as torch's channels_last kernel adds them).
template <typename scalar_t>
void max_pool2d_backward_channels_last_kernel(const scalar_t* grad_output, const int64_t* indices, int64_t images,
                                              int64_t channels, int64_t out_plane_size, int64_t in_plane_size,
                                              scalar_t* grad_input) {
  const int64_t images_per_task = std::max<int64_t>(
      1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, (in_plane_size + out_plane_size) * channels));
  at::parallel_for(0, images, images_per_task, [&](int64_t begin, int64_t end) {
    for (int64_t image = begin; image < end; ++image) {
      scalar_t* grad_image = grad_input + image * in_plane_size * channels;
      std::fill(grad_image, grad_image + in_plane_size * channels, scalar_t(0));
      for (int64_t window = image * out_plane_size; window < (image + 1) * out_plane_size; ++window) {
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t position = indices[window * channels + c];
          check_max_pool_position(position, in_plane_size);
          grad_image[position * channels + c] += grad_output[window * channels + c];
        }
      }
    }
  });
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output_arg, const at::Tensor& indices_arg,
                                   at::IntArrayRef input_size, bool channels_last) {
  const char* op = "manual_conv::max_pool2d_backward";
  TORCH_CHECK(input_size.size() == 3 || input_size.size() == 4, op,
              ": expected input_size to be a list of 3 or 4 ints, but got ", input_size);
  TORCH_CHECK(!channels_last || input_size.size() == 4, op, ": channels_last needs a 4-D input_size, but got ",
              input_size);
  const int64_t dims = static_cast<int64_t>(input_size.size());
  TORCH_CHECK(grad_output_arg.dim() == dims && grad_output_arg.sizes().slice(0, dims - 2) ==
                                                   input_size.slice(0, dims - 2),
              op, ": expected a ", dims, "-D grad_output with the leading sizes of input_size ", input_size,
              ", but got ", grad_output_arg.sizes());
  TORCH_CHECK(indices_arg.scalar_type() == at::kLong && indices_arg.sizes() == grad_output_arg.sizes(), op,
              ": expected int64 indices of grad_output's size ", grad_output_arg.sizes(), ", but got ",
              indices_arg.scalar_type(), " indices of size ", indices_arg.sizes());
  TORCH_CHECK(indices_arg.device() == grad_output_arg.device(), op,
              ": expected grad_output and indices on the same device, but got ", grad_output_arg.device(), " and ",
              indices_arg.device());
  const at::MemoryFormat memory_format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor grad_output = grad_output_arg.contiguous(memory_format);
  const at::Tensor indices = indices_arg.contiguous(memory_format);
  at::Tensor grad_input = at::empty(input_size, grad_output.options().memory_format(memory_format));
  const int64_t planes = c10::multiply_integers(input_size.slice(0, dims - 2));
  const int64_t out_plane_size = grad_output.size(-2) * grad_output.size(-1);
  const int64_t in_plane_size = input_size[dims - 2] * input_size[dims - 1];
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "manual_conv_max_pool2d_backward_cpu", [&] {
    if (channels_last) {
      max_pool2d_backward_channels_last_kernel(grad_output.const_data_ptr<scalar_t>(),
                                               indices.const_data_ptr<int64_t>(), input_size[0], input_size[1],
                                               out_plane_size, in_plane_size, grad_input.data_ptr<scalar_t>());
    } else {
      max_pool2d_backward_kernel(grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(), planes,
                                 out_plane_size, in_plane_size, grad_input.data_ptr<scalar_t>());
    }
  });
  return grad_input;
}

// grad_input[k] = relu_input_grad(grad_output[k], output[k]) for k < count. float16/bfloat16 compare in float.
template <typename scalar_t>
void relu_backward_range(const scalar_t* grad_output, const scalar_t* output, scalar_t* grad_input, int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    grad_input[k] = relu_input_grad<at::opmath_type<scalar_t>>(grad_output[k], output[k]);
  }
}

// float and double: the same loop, vectorised (a compare and a blend per vector) with the widest instructions
// the CPU has.
MANUAL_CONV_VECTOR_CLONES void relu_backward_range(const float* __restrict grad_output,
                                                   const float* __restrict output, float* __restrict grad_input,
                                                   int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    grad_input[k] = relu_input_grad<float>(grad_output[k], output[k]);
  }
}

MANUAL_CONV_VECTOR_CLONES void relu_backward_range(const double* __restrict grad_output,
                                                   const double* __restrict output, double* __restrict grad_input,
                                                   int64_t count) {
  for (int64_t k = 0; k < count; ++k) {
    grad_input[k] = relu_input_grad<double>(grad_output[k], output[k]);
  }
}

void relu_backward_cpu(const at::Tensor& grad_output, const at::Tensor& output, at::Tensor& grad_input) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(),
                                  "manual_conv_relu_backward_cpu", [&] {
    const scalar_t* grad = grad_output.const_data_ptr<scalar_t>();
    const scalar_t* out = output.const_data_ptr<scalar_t>();
    scalar_t* result = grad_input.data_ptr<scalar_t>();
    at::parallel_for(0, grad_input.numel(), at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      relu_backward_range(grad + begin, out + begin, result + begin, end - begin);
    });
  });
}

constexpr LayerKernels kCpuLayerKernels{&max_pool2d_cpu, &relu_backward_cpu};

}  // namespace
}  // namespace manual_conv

TORCH_LIBRARY_IMPL(manual_conv, CPU, library) {
  manual_conv::register_layer_ops<manual_conv::kCpuLayerKernels>(library);
  library.impl("max_pool2d_backward", &manual_conv::max_pool2d_backward_cpu);
}
