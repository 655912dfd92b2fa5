// pybind11 module progrpo_fast._C. Each op checks only what would crash it (the public API in
// progrpo_fast.ops validates everything) and runs where its tensors live: the CPU code in
// csrc/cpu, or the CUDA kernels when the module was built with them.
#include <torch/csrc/utils/pybind.h>  // pybind11 + the at::Tensor type casters (lighter than torch/extension.h)

#include <ATen/core/grad_mode.h>

#include "progrpo_fast.h"

namespace progrpo_fast {
namespace {

#ifdef PROGRPO_FAST_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#define PROGRPO_FAST_ON_DEVICE(tensor, op, ...) ((tensor).is_cuda() ? cuda::op(__VA_ARGS__) : cpu::op(__VA_ARGS__))
#else
constexpr bool kBuiltWithCuda = false;
#define PROGRPO_FAST_ON_DEVICE(tensor, op, ...) cpu::op(__VA_ARGS__)
#endif

void check_device(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), op, ": no implementation for ", t.device().type(), " tensors");
  TORCH_CHECK(t.is_cpu() || kBuiltWithCuda, op,
              ": got a CUDA tensor but progrpo_fast._C was built without CUDA (rebuild with "
              "PROGRPO_FAST_CUDA=1, which needs nvcc and a CUDA build of torch)");
}

void check_input(const char* op, const at::Tensor& t, bool dims_ok) {
  check_device(op, t);
  TORCH_CHECK(dims_ok, op, ": unexpected shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous() && t.numel() > 0, op, ": expected a non-empty contiguous tensor");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": expected a floating tensor, got ", t.scalar_type());
}

void check_k(const char* op, int64_t k, int64_t n) {
  TORCH_CHECK(1 <= k && k <= n, op, ": k must be in [1, ", n, "], got ", k);
}

at::Tensor pool_latents(const at::Tensor& x, int64_t grid) {
  check_input("pool_latents", x, x.dim() == 4 || x.dim() == 5);
  TORCH_CHECK(1 <= grid && grid <= std::min(x.size(-2), x.size(-1)), "pool_latents: grid out of range: ", grid);
  return PROGRPO_FAST_ON_DEVICE(x, pool_latents, x, grid);
}

at::Tensor group_variance(const at::Tensor& x, int64_t group_size) {
  check_input("group_variance", x, x.dim() >= 1);
  TORCH_CHECK(group_size >= 1 && x.size(0) % group_size == 0, "group_variance: batch ", x.size(0),
              " is not a multiple of group_size ", group_size);
  return PROGRPO_FAST_ON_DEVICE(x, group_variance, x, group_size);
}

at::Tensor ovf_select(const at::Tensor& scores, int64_t k) {
  check_input("ovf_select", scores, scores.dim() == 2);
  check_k("ovf_select", k, scores.size(1));
  return PROGRPO_FAST_ON_DEVICE(scores, ovf_select, scores, k);
}

at::Tensor variance_select(const at::Tensor& features, int64_t k) {
  check_input("variance_select", features, features.dim() == 3);
  check_k("variance_select", k, features.size(1));
  return PROGRPO_FAST_ON_DEVICE(features, variance_select, features, k);
}

PruneResult prune_select(const at::Tensor& x, int64_t group_size, int64_t k, int64_t grid) {
  check_input("prune_select", x, x.dim() == 1 || x.dim() == 2 || x.dim() == 4 || x.dim() == 5);
  TORCH_CHECK(group_size >= 1 && x.size(0) % group_size == 0, "prune_select: batch ", x.size(0),
              " is not a multiple of group_size ", group_size);
  check_k("prune_select", k, group_size);
  TORCH_CHECK(x.dim() < 4 || (1 <= grid && grid <= std::min(x.size(-2), x.size(-1))),
              "prune_select: grid out of range: ", grid);
  return PROGRPO_FAST_ON_DEVICE(x, prune_select, x, group_size, k, grid);
}

void compact_(const at::Tensor& index_any_layout, const std::vector<at::Tensor>& tensors) {
  const at::Tensor index = index_any_layout.contiguous();
  check_device("compact_", index);
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, "compact_: index must be a 1-D int64 tensor");
  for (const at::Tensor& t : tensors) {
    TORCH_CHECK(t.device() == index.device(), "compact_: tensors must be on the index's device ", index.device());
    TORCH_CHECK(t.dim() >= 1 && t.size(0) >= index.numel(), "compact_: every tensor needs at least ",
                index.numel(), " rows");
    TORCH_CHECK(!(t.requires_grad() && at::GradMode::is_enabled()),
                "compact_: a tensor requires grad; autograd cannot track this in-place copy (use torch.no_grad())");
  }
  PROGRPO_FAST_ON_DEVICE(index, compact_, index, tensors);
}

}  // namespace
}  // namespace progrpo_fast

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  using namespace progrpo_fast;
  py::module_::import("torch");  // the tensor type casters need torch's Python bindings loaded
  m.doc() = "progrpo-fast compiled ops: multithreaded C++ on CPU tensors, CUDA kernels on CUDA tensors.";
  // c10 errors (TORCH_CHECK) become Python exceptions with the message only, no C++ backtrace.
  py::register_local_exception_translator([](std::exception_ptr error) {
    try {
      if (error) {
        std::rethrow_exception(error);
      }
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  m.def("built_with_cuda", [] { return kBuiltWithCuda; }, "Whether the CUDA kernels were compiled in.");
  m.def("pool_latents", &pool_latents, py::arg("x"), py::arg("grid"), no_gil,
        "x (B, C, H, W) or (B, C, F, H, W) -> (B, C*grid*grid) fp32 adaptive mean pool (torch's bin edges; "
        "a video's frames in one temporal bin).");
  m.def("group_variance", &group_variance, py::arg("x"), py::arg("group_size"), no_gil,
        "x (B, ...) -> (B/group_size,) fp32 total variance of each group, accumulated in double.");
  m.def("ovf_select", &ovf_select, py::arg("scores"), py::arg("k"), no_gil,
        "scores (P, N) -> int64 (P, k): exact max-variance k-subset of each row, ascending.");
  m.def("variance_select", &variance_select, py::arg("features"), py::arg("k"), no_gil,
        "features (P, N, D) -> int64 (P, k): exact OVF for D == 1, greedy max-dispersion otherwise.");
  m.def("prune_select", &prune_select, py::arg("x"), py::arg("group_size"), py::arg("k"), py::arg("grid"), no_gil,
        "Latents (B, C, H, W) or (B, C, F, H, W), features (B, D) or scores (B,) -> (flat survivor rows (P*k,) ascending, "
        "var_all (P,), var_kept (P,)).");
  m.def("compact_", &compact_, py::arg("index"), py::arg("tensors"), no_gil,
        "Moves rows index (strictly ascending) to the front of every tensor, in place.");
}
