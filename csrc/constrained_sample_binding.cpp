// torch binding of the CUDA sampler in constrained_sample.cu (JIT-built by
// seedfast.ops._cuda_ext.load_extension). Checks the tensors, allocates the outputs and launches
// on the current stream without synchronising, so the call can be captured in a CUDA graph.

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#include <string>
#include <vector>

extern "C" cudaError_t seedfast_constrained_sample(
    const void* logits, int logits_dtype, int64_t batch, int64_t vocab_size, int64_t stride_row,
    const void* image_pos, int pos_is_int64, const float* temperature, int64_t s_temp, const int64_t* top_k,
    int64_t s_topk, const float* top_p, int64_t s_topp, const int64_t* seed, int64_t s_seed,
    const int64_t* offset, int64_t s_off, const int64_t* rng_stream, int64_t s_stream, int64_t text_vocab,
    int64_t first_code, int64_t num_codes, int64_t boi_id, int64_t eoi_id, int64_t eos_id, int64_t codes_per_image,
    int64_t* tokens, int32_t* next_pos, int32_t* flags, int method, void* workspace, int64_t workspace_bytes,
    cudaStream_t stream);

extern "C" int64_t seedfast_constrained_sample_workspace(int64_t batch, int64_t vocab_size, int64_t text_vocab,
                                                         int64_t num_codes, int logits_dtype, const void* logits,
                                                         int64_t* zero_bytes);

namespace {

constexpr const char* kOp = "constrained_sample (cuda)";

void check_per_row(const torch::Tensor& t, const char* name, int64_t batch, torch::ScalarType dtype,
                   const torch::Device& device) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == batch, kOp, ": ", name, " must have shape [", batch, "], got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, kOp, ": ", name, " must have dtype ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, kOp, ": ", name, " must be on ", device, ", got ", t.device());
}

int dtype_code(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return 0;
    case torch::kFloat16:
      return 1;
    case torch::kBFloat16:
      return 2;
    default:
      TORCH_CHECK(false, kOp, ": logits must be float32, float16 or bfloat16, got ", dtype);
  }
}

std::vector<torch::Tensor> constrained_sample(const torch::Tensor& logits, const torch::Tensor& image_pos,
                                              const torch::Tensor& temperature, const torch::Tensor& top_k,
                                              const torch::Tensor& top_p, const torch::Tensor& seed,
                                              const torch::Tensor& offset, const torch::Tensor& stream,
                                              const std::vector<int64_t>& layout, const std::string& method) {
  TORCH_CHECK(logits.is_cuda(), kOp, ": logits must be a CUDA tensor, got ", logits.device());
  TORCH_CHECK(logits.dim() == 2, kOp, ": logits must be [B, V], got ", logits.sizes());
  TORCH_CHECK(logits.stride(1) == 1 || logits.size(1) <= 1, kOp, ": logits need unit stride in V");
  TORCH_CHECK(layout.size() == 7, kOp, ": layout must hold 7 ids, got ", layout.size());
  TORCH_CHECK(method == "split" || method == "rows", kOp, ": method must be 'split' or 'rows', got '", method, "'");
  const int code = dtype_code(logits.scalar_type());
  const int64_t batch = logits.size(0);
  const torch::Device device = logits.device();
  TORCH_CHECK(image_pos.scalar_type() == torch::kInt32 || image_pos.scalar_type() == torch::kInt64, kOp,
              ": image_pos must be int32 or int64, got ", image_pos.scalar_type());
  check_per_row(image_pos, "image_pos", batch, image_pos.scalar_type(), device);
  check_per_row(temperature, "temperature", batch, torch::kFloat32, device);
  check_per_row(top_k, "top_k", batch, torch::kInt64, device);
  check_per_row(top_p, "top_p", batch, torch::kFloat32, device);
  check_per_row(seed, "seed", batch, torch::kInt64, device);
  check_per_row(offset, "offset", batch, torch::kInt64, device);
  check_per_row(stream, "stream", batch, torch::kInt64, device);

  const c10::cuda::CUDAGuard guard(device);
  // The kernel reads image_pos with unit stride; the other per-row tensors with their stride.
  const torch::Tensor pos = image_pos.contiguous();
  const auto options = logits.options();
  torch::Tensor tokens = torch::empty({batch}, options.dtype(torch::kInt64));
  torch::Tensor next_pos = torch::empty({batch}, options.dtype(torch::kInt32));
  torch::Tensor flags = torch::empty({batch}, options.dtype(torch::kInt32));
  // The split sampler's scratch (per-tile stats, histograms, per-row state, candidates) in one
  // buffer whose layout the launcher defines; its leading histograms are zeroed here, on the
  // current stream (no host synchronisation, so the call stays capturable).
  const int split = method == "split" ? 1 : 0;
  torch::Tensor workspace;
  int64_t workspace_bytes = 0;
  if (split && batch > 0) {
    int64_t zero_bytes = 0;
    workspace_bytes = seedfast_constrained_sample_workspace(batch, logits.size(1), layout[0], layout[2], code,
                                                            logits.data_ptr(), &zero_bytes);
    TORCH_CHECK(workspace_bytes >= 0, kOp, ": invalid sizes for the split sampler (B=", batch, ", V=",
                logits.size(1), ")");
    workspace = torch::empty({workspace_bytes}, options.dtype(torch::kUInt8));
    if (zero_bytes > 0) workspace.narrow(0, 0, zero_bytes).zero_();
  }
  const cudaError_t err = seedfast_constrained_sample(
      logits.data_ptr(), code, batch, logits.size(1), logits.stride(0), pos.data_ptr(),
      pos.scalar_type() == torch::kInt64 ? 1 : 0, temperature.data_ptr<float>(), temperature.stride(0),
      top_k.data_ptr<int64_t>(), top_k.stride(0), top_p.data_ptr<float>(), top_p.stride(0),
      seed.data_ptr<int64_t>(), seed.stride(0), offset.data_ptr<int64_t>(), offset.stride(0),
      stream.data_ptr<int64_t>(), stream.stride(0), layout[0], layout[1],
      layout[2], layout[3], layout[4], layout[5], layout[6], tokens.data_ptr<int64_t>(),
      next_pos.data_ptr<int32_t>(), flags.data_ptr<int32_t>(), split ? 0 : 1,
      workspace.defined() ? workspace.data_ptr() : nullptr, workspace_bytes, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kOp, ": launch failed: ", cudaGetErrorString(err));
  return {tokens, next_pos, flags};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("constrained_sample", &constrained_sample,
        "Grammar-constrained temperature/top-k/top-p sampling: (tokens int64, next_image_pos int32, flags int32). "
        "method: 'split' (the two-pass histogram sampler, several blocks per row; default) or 'rows' (the "
        "one-block-per-row pivot sampler, also the split sampler's exact fallback).",
        pybind11::arg("logits"), pybind11::arg("image_pos"), pybind11::arg("temperature"), pybind11::arg("top_k"),
        pybind11::arg("top_p"), pybind11::arg("seed"), pybind11::arg("offset"), pybind11::arg("stream"),
        pybind11::arg("layout"), pybind11::arg("method") = "split");
}
