// The manual_conv operator library: schemas of the four ops of the conv kernel contract, of their Winograd
// F(2x2, 3x3) versions for 3x3 stride-1 convolutions, and of the compiled layers (max pooling's forward and
// backward, ReLU's backward, dropout's mask), and the Python module manual_conv._C whose import loads this library
// (the kernels register themselves per device in conv_cpu.cpp, conv_cuda.cu, winograd_cpu.cpp, winograd_cuda.cu,
// layers_cpu.cpp and layers_cuda.cu; max pooling's backward and dropout's mask only for the CPU, in
// layers_cpu.cpp and dropout_cpu.cpp; fake kernels and autograd are in manual_conv/ops/library.py).
#include <Python.h>

#include <torch/library.h>

extern "C" {
// `import manual_conv._C` only needs to load the shared library: the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_definition = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_definition);
}
}

TORCH_LIBRARY(manual_conv, library) {
  // The fake kernels and autograd formulas are registered from Python; torch imports this module when it
  // needs them and it has not been imported yet.
  library.set_python_module("manual_conv.ops.library");
  library.def(
      "conv2d(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] dilation, SymInt groups) -> Tensor");
  library.def(
      "conv2d_input_grad(Tensor grad_output, Tensor weight, SymInt[4] input_size, SymInt[2] stride, "
      "SymInt[2] padding, SymInt[2] dilation, SymInt groups) -> Tensor");
  library.def(
      "conv2d_weight_grad(Tensor input, Tensor grad_output, SymInt[4] weight_size, SymInt[2] stride, "
      "SymInt[2] padding, SymInt[2] dilation, SymInt groups) -> Tensor");
  library.def("conv2d_bias_grad(Tensor grad_output) -> Tensor");
  // Winograd F(2x2, 3x3) (winograd_core.h): the same three maps for 3x3 convolutions with stride 1, dilation 1
  // and groups 1, with the conv core's signatures; the bias gradient is conv2d_bias_grad.
  library.def(
      "winograd_conv2d(Tensor input, Tensor weight, Tensor? bias, SymInt[2] stride, SymInt[2] padding, "
      "SymInt[2] dilation, SymInt groups) -> Tensor");
  library.def(
      "winograd_conv2d_input_grad(Tensor grad_output, Tensor weight, SymInt[4] input_size, SymInt[2] stride, "
      "SymInt[2] padding, SymInt[2] dilation, SymInt groups) -> Tensor");
  library.def(
      "winograd_conv2d_weight_grad(Tensor input, Tensor grad_output, SymInt[4] weight_size, SymInt[2] stride, "
      "SymInt[2] padding, SymInt[2] dilation, SymInt groups) -> Tensor");
  library.def(
      "max_pool2d(Tensor input, SymInt[2] kernel_size, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, "
      "bool ceil_mode) -> (Tensor, Tensor)");
  library.def(
      "max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[] input_size, bool channels_last) -> Tensor");
  library.def("relu_backward(Tensor grad_output, Tensor output) -> Tensor");
  // Tagged as drawing from the global generator, as bernoulli_ is: torch.compile must then neither merge two
  // calls with the same arguments nor recompute one in the backward, either of which would change the masks.
  library.def("dropout_mask(Tensor input, float keep_probability) -> Tensor", {at::Tag::nondeterministic_seeded});
}
