// The LibTorch adapter: the only file that includes torch and catches its
// exceptions (c10::Error, std::exception), turning them into absl::Status.
#include "libs/encoder/encoder.h"

#include <ATen/Parallel.h>
#include <caffe2/serialize/inline_container.h>
#include <dlfcn.h>
#include <malloc.h>
#include <torch/script.h>

#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "libs/common/status_macros.h"

namespace imagesearch::encoder {
namespace {

constexpr char kModelJson[] = "model.json";
constexpr char kDefaultVocabFile[] = "bpe_vocab.txt";
constexpr size_t kMaxErrorChars = 4000;

// LibTorch messages can carry a TorchScript traceback; keep them, bounded.
std::string TorchMessage(const c10::Error& e) {
  std::string msg(absl::StripTrailingAsciiWhitespace(e.what_without_backtrace()));
  if (msg.size() > kMaxErrorChars) msg = msg.substr(0, kMaxErrorChars) + "...";
  return msg;
}

// Runs `fn` (which returns absl::Status), converting exceptions into a Status
// with `code` and `context` in front of the exception's message.
template <typename Fn>
absl::Status Guarded(absl::StatusCode code, absl::string_view context, Fn&& fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return absl::Status(code, absl::StrCat(context, ": ", TorchMessage(e)));
  } catch (const std::exception& e) {
    return absl::Status(code, absl::StrCat(context, ": ", e.what()));
  }
}

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// Reads an extra file ("extra/<name>") of a TorchScript archive.
absl::StatusOr<std::string> ReadExtraFile(const std::string& path, const std::string& name) {
  std::string contents;
  absl::Status status =
      Guarded(absl::StatusCode::kInvalidArgument,
              absl::StrCat("cannot read extra file '", name, "' of '", path, "'"), [&] {
                caffe2::serialize::PyTorchStreamReader reader(path);
                const std::string record = "extra/" + name;
                if (!reader.hasRecord(record)) {
                  return absl::InvalidArgumentError(
                      absl::StrCat("model '", path, "' has no extra file '", name,
                                   "' (model.json names it as text.vocab_file)"));
                }
                auto [data, size] = reader.getRecord(record);
                contents.assign(static_cast<const char*>(data.get()), size);
                return absl::OkStatus();
              });
  if (!status.ok()) return status;
  return contents;
}

}  // namespace

// LibTorch's intra-op thread count lives in OpenMP's per-thread state, so a
// value set on one thread does not reach a model run from another (the
// service runs it on its batcher thread). Left unset there, LibTorch sees one
// thread, and with one thread and a small batch it routes 1x1 convolutions to
// its slow im2col + BLAS path instead of oneDNN: the default model's image
// queries took 190 ms instead of 55 ms. So every thread that runs the model
// sets the count itself, once.
static void UseIntraOpThreads(int n) {
  thread_local int set_on_this_thread = 0;
  if (set_on_this_thread != n) {
    at::set_num_threads(n);
    set_on_this_thread = n;
  }
}

// LibTorch calls the system BLAS (OpenBLAS, libopenblas0-pthread) for some
// operators. OpenBLAS's pthread build runs a pool of its own, one thread per
// core, whose idle workers busy-wait; alongside LibTorch's own threads (or
// another process) they take the cores from the model. Parallelism belongs
// to LibTorch's threads and the callers' instances, so BLAS runs on the
// calling thread. A BLAS without this entry point is left as it is.
static void SingleThreadedBlas() {
  static const bool done = [] {
    using SetThreads = void (*)(int);
    if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
      set(1);
    }
    return true;
  }();
  (void)done;
}

struct Encoder::Impl {
  torch::jit::Module module;
  int intra_op_threads = 1;
  // Normalisation as x * scale - shift, [1, 3, 1, 1] each:
  // (p / 255 - mean) / std = p * (1 / (255 std)) - mean / std.
  torch::Tensor scale;
  torch::Tensor shift;

  // Runs `method` on `input` and checks and post-processes its output:
  // [batch, embed_dim] float32, finite, L2-normalised for cosine.
  absl::StatusOr<std::vector<float>> Run(const ModelInfo& info, const char* method,
                                         const torch::Tensor& input, int64_t batch) const {
    std::vector<float> result;
    absl::Status status = Guarded(
        absl::StatusCode::kInternal, absl::StrCat("model ", info.name, ": ", method, " failed"),
        [&] {
          c10::InferenceMode guard;
          torch::Tensor out = module.get_method(method)({input}).toTensor();
          if (out.dim() != 2 || out.size(0) != batch || out.size(1) != info.embed_dim) {
            return absl::InternalError(
                absl::StrCat("model ", info.name, ": ", method, " returned shape ",
                             ShapeString(out), ", expected [", batch, ", ", info.embed_dim,
                             "] (model.json embed_dim ", info.embed_dim, ")"));
          }
          out = out.to(torch::kFloat32).contiguous();
          if (!torch::isfinite(out).all().item<bool>()) {
            return absl::InternalError(absl::StrCat("model ", info.name, ": ", method,
                                                    " produced a non-finite value (NaN or inf)"));
          }
          if (info.metric == "cosine") {
            out = out / out.norm(2, /*dim=*/{1}, /*keepdim=*/true).clamp_min(1e-12);
          }
          const float* data = out.data_ptr<float>();
          result.assign(data, data + out.numel());
          return absl::OkStatus();
        });
    if (!status.ok()) return status;
    return result;
  }
};

Encoder::Encoder(ModelInfo info, std::unique_ptr<Impl> impl)
    : info_(std::move(info)), impl_(std::move(impl)) {}

Encoder::~Encoder() = default;

// A forward pass allocates activation tensors of tens of MB. glibc serves
// allocations above its mmap threshold (at most 32 MiB by default) with
// fresh mmaps and returns freed heap tops to the kernel, so every batch paid
// for page faults and zeroing again: measured on the default model at batch
// 32, more than half the encoder's CPU time went to the kernel (7 img/s vs
// 17 img/s with these settings). Keeping that memory in the process is the
// fix; it is process-wide, and bounded by the largest batch's working set.
static void KeepActivationMemory() {
  static const bool done = [] {
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    return true;
  }();
  (void)done;
}

absl::StatusOr<std::unique_ptr<Encoder>> Encoder::Load(const std::string& model_path,
                                                       const EncoderOptions& options) {
  std::error_code ec;
  const auto file_status = std::filesystem::status(model_path, ec);
  if (!std::filesystem::exists(file_status)) {
    return absl::NotFoundError(absl::StrCat("model file '", model_path, "' does not exist"));
  }
  if (!std::filesystem::is_regular_file(file_status)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model path '", model_path, "' is not a regular file"));
  }
  KeepActivationMemory();

  auto impl = std::make_unique<Impl>();
  impl->intra_op_threads = std::max(1, options.intra_op_threads);
  SingleThreadedBlas();
  std::unordered_map<std::string, std::string> extra_files = {{kModelJson, ""},
                                                              {kDefaultVocabFile, ""}};
  RETURN_IF_ERROR(Guarded(absl::StatusCode::kInvalidArgument,
                          absl::StrCat("cannot load '", model_path, "' as a TorchScript archive"),
                          [&] {
                            impl->module = torch::jit::load(model_path, torch::kCPU, extra_files);
                            impl->module.eval();
                            return absl::OkStatus();
                          }));
  const std::string& json = extra_files[kModelJson];
  if (json.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model_path,
                     "' has no model.json extra file (see libs/encoder/MODEL_CONTRACT.md)"));
  }
  absl::StatusOr<ModelInfo> parsed = ParseModelJson(json);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model_path, "': ", parsed.status().message()));
  }
  ModelInfo info = *std::move(parsed);

  auto missing_method = [&](const char* method, absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model_path, "' has no method ", method, why));
  };
  if (!impl->module.find_method("encode_image")) {
    return missing_method("encode_image", " (required by the model contract)");
  }
  if (info.text) {
    if (!impl->module.find_method("encode_text")) {
      return missing_method("encode_text", ", but model.json has a \"text\" block");
    }
    if (info.text->vocab_file == kDefaultVocabFile) {
      info.text->vocab = std::move(extra_files[kDefaultVocabFile]);
    } else {
      ASSIGN_OR_RETURN(info.text->vocab, ReadExtraFile(model_path, info.text->vocab_file));
    }
    if (info.text->vocab.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model '", model_path, "' has no (or an empty) extra file '",
                       info.text->vocab_file, "' named by text.vocab_file"));
    }
  }

  RETURN_IF_ERROR(Guarded(absl::StatusCode::kInternal, "cannot set up normalisation", [&] {
    const auto& mean = info.mean;
    const auto& std = info.std;
    const std::vector<float> scale = {1.0f / (255.0f * std[0]), 1.0f / (255.0f * std[1]),
                                      1.0f / (255.0f * std[2])};
    const std::vector<float> shift = {mean[0] / std[0], mean[1] / std[1], mean[2] / std[2]};
    impl->scale = torch::tensor(scale).reshape({1, 3, 1, 1});
    impl->shift = torch::tensor(shift).reshape({1, 3, 1, 1});
    return absl::OkStatus();
  }));

  std::unique_ptr<Encoder> encoder(new Encoder(std::move(info), std::move(impl)));
  const ModelInfo& loaded = encoder->info();

  // Warm up, and check the output shapes against model.json.
  const int batch = std::max(1, options.warmup_batch);
  const size_t image_bytes = static_cast<size_t>(loaded.image_size) * loaded.image_size * 3;
  std::vector<std::vector<uint8_t>> images(batch, std::vector<uint8_t>(image_bytes));
  std::vector<const uint8_t*> image_ptrs;
  for (int b = 0; b < batch; ++b) {
    for (size_t i = 0; i < image_bytes; ++i)
      images[b][i] = static_cast<uint8_t>((i * 7 + b * 64) & 0xff);
    image_ptrs.push_back(images[b].data());
  }
  auto warm_up_error = [&](const absl::Status& s) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", model_path, "' failed its warm-up: ", s.message()));
  };
  // Warm up on one thread. The loading thread is not the one that will run
  // the model; a 2-thread pass here would leave it an OpenMP worker pool for
  // the life of the process, and once OpenMP manages more threads than there
  // are cores it stops spinning between parallel regions, for every team:
  // the model's forward pass then ran ~25% slower (tools/bench/results/LOG.md).
  const int threads = encoder->impl_->intra_op_threads;
  encoder->impl_->intra_op_threads = 1;
  if (absl::StatusOr<std::vector<float>> out = encoder->EncodeImages(image_ptrs); !out.ok()) {
    return warm_up_error(out.status());
  }
  if (loaded.text) {
    const int length = loaded.text->context_length;
    std::vector<int64_t> tokens(static_cast<size_t>(batch) * length, 0);
    for (int b = 0; b < batch; ++b) {
      tokens[static_cast<size_t>(b) * length] = loaded.text->sot_token;
      tokens[static_cast<size_t>(b) * length + 1] = loaded.text->eot_token;
    }
    if (absl::StatusOr<std::vector<float>> out = encoder->EncodeTokens(tokens, batch); !out.ok()) {
      return warm_up_error(out.status());
    }
  }
  encoder->impl_->intra_op_threads = threads;
  return encoder;
}

absl::StatusOr<std::vector<float>> Encoder::EncodeImages(
    absl::Span<const uint8_t* const> images) const {
  if (images.empty()) return std::vector<float>();
  for (size_t i = 0; i < images.size(); ++i) {
    if (images[i] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("image ", i, " is a null pointer"));
    }
  }
  UseIntraOpThreads(impl_->intra_op_threads);
  const int64_t batch = static_cast<int64_t>(images.size());
  const int64_t size = info_.image_size;
  const size_t image_bytes = static_cast<size_t>(size * size * 3);
  torch::Tensor input;
  RETURN_IF_ERROR(Guarded(absl::StatusCode::kInternal, "cannot prepare the image batch", [&] {
    c10::InferenceMode guard;
    torch::Tensor pixels = torch::empty({batch, size, size, 3}, torch::kUInt8);
    uint8_t* dst = pixels.data_ptr<uint8_t>();
    for (const uint8_t* image : images) {
      std::memcpy(dst, image, image_bytes);
      dst += image_bytes;
    }
    // HWC uint8 -> NCHW float, normalised.
    input = (pixels.permute({0, 3, 1, 2}).to(torch::kFloat32) * impl_->scale - impl_->shift)
                .contiguous();
    return absl::OkStatus();
  }));
  return impl_->Run(info_, "encode_image", input, batch);
}

absl::StatusOr<std::vector<float>> Encoder::EncodeTokens(absl::Span<const int64_t> token_ids,
                                                         int batch) const {
  if (!info_.text) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", info_.name, " has no text encoder"));
  }
  const TextConfig& text = *info_.text;
  if (batch < 0) {
    return absl::InvalidArgumentError(absl::StrCat("batch must be >= 0, got ", batch));
  }
  const size_t expected = static_cast<size_t>(batch) * text.context_length;
  if (token_ids.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_ids has ", token_ids.size(), " ids, expected batch ", batch,
                     " x context_length ", text.context_length, " = ", expected));
  }
  if (batch == 0) return std::vector<float>();
  for (size_t i = 0; i < token_ids.size(); ++i) {
    const int64_t id = token_ids[i];
    if (id < 0 || (text.vocab_size > 0 && id >= text.vocab_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " at position ", i % text.context_length, " of sequence ",
                       i / text.context_length, " is outside [0, ",
                       text.vocab_size > 0 ? absl::StrCat(text.vocab_size) : "inf", ")"));
    }
  }
  UseIntraOpThreads(impl_->intra_op_threads);
  torch::Tensor input;
  RETURN_IF_ERROR(Guarded(absl::StatusCode::kInternal, "cannot prepare the token batch", [&] {
    c10::InferenceMode guard;
    input = torch::from_blob(const_cast<int64_t*>(token_ids.data()),
                             {batch, static_cast<int64_t>(text.context_length)}, torch::kInt64)
                .clone();
    return absl::OkStatus();
  }));
  return impl_->Run(info_, "encode_text", input, batch);
}

void Encoder::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) const {
  if (n <= 0) return;
  UseIntraOpThreads(impl_->intra_op_threads);
  std::vector<char> done(static_cast<size_t>(n), 0);
  try {
    at::parallel_for(0, n, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        fn(i);
        done[static_cast<size_t>(i)] = 1;
      }
    });
  } catch (const std::exception&) {
    // LibTorch could not schedule the work (fn itself does not throw):
    // finish what is left on this thread.
    for (int64_t i = 0; i < n; ++i) {
      if (!done[static_cast<size_t>(i)]) fn(i);
    }
  }
}

}  // namespace imagesearch::encoder
