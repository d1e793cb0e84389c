// Tests of the LibTorch encoder against the tiny CLIP that
// tools/export_clip/make_tiny_clip.py builds (ctest fixture "tiny_clip"):
// LibTorch's embeddings must match the eager PyTorch model's.
#include "libs/encoder/encoder.h"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"
#include "nlohmann/json.hpp"

namespace imagesearch::encoder {
namespace {

namespace fs = std::filesystem;

std::string TinyClipDir() {
  const char* env = std::getenv("IMAGESEARCH_TINY_CLIP_DIR");
  return env != nullptr ? env : IMAGESEARCH_TINY_CLIP_DIR;
}

std::string TinyPath(const std::string& name) { return TinyClipDir() + "/" + name; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  INFO("reading " << path
                  << " (made by the ctest fixture tiny_clip, or run "
                     "tools/export_clip/make_tiny_clip.py --out <dir> and set "
                     "IMAGESEARCH_TINY_CLIP_DIR)");
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

template <typename T>
std::vector<T> ReadArray(const std::string& path, size_t count) {
  const std::string bytes = ReadFile(path);
  REQUIRE(bytes.size() == count * sizeof(T));
  std::vector<T> out(count);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

// The inputs and Python-side outputs written by make_tiny_clip.py.
struct References {
  int num_images = 0, image_size = 0, num_texts = 0, context_length = 0, embed_dim = 0;
  std::vector<uint8_t> images;      // num_images x image_size^2 x 3
  std::vector<int64_t> tokens;      // num_texts x context_length
  std::vector<float> image_embeds;  // num_images x embed_dim
  std::vector<float> text_embeds;   // num_texts x embed_dim

  const uint8_t* image(int i) const {
    return images.data() + static_cast<size_t>(i) * image_size * image_size * 3;
  }
};

const References& Refs() {
  static const References* refs = [] {
    auto* r = new References;
    const auto json = nlohmann::json::parse(ReadFile(TinyPath("refs.json")));
    r->num_images = json.at("num_images");
    r->image_size = json.at("image_size");
    r->num_texts = json.at("num_texts");
    r->context_length = json.at("context_length");
    r->embed_dim = json.at("embed_dim");
    r->images =
        ReadArray<uint8_t>(TinyPath(json.at("images")),
                           static_cast<size_t>(r->num_images) * r->image_size * r->image_size * 3);
    r->tokens = ReadArray<int64_t>(TinyPath(json.at("tokens")),
                                   static_cast<size_t>(r->num_texts) * r->context_length);
    r->image_embeds = ReadArray<float>(TinyPath(json.at("image_embeds")),
                                       static_cast<size_t>(r->num_images) * r->embed_dim);
    r->text_embeds = ReadArray<float>(TinyPath(json.at("text_embeds")),
                                      static_cast<size_t>(r->num_texts) * r->embed_dim);
    return r;
  }();
  return *refs;
}

std::unique_ptr<Encoder> LoadOrDie(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Encoder>> encoder = Encoder::Load(path, EncoderOptions());
  INFO(encoder.status().ToString());
  REQUIRE(encoder.ok());
  return *std::move(encoder);
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

std::vector<float> Row(const std::vector<float>& m, int row, int dim) {
  return std::vector<float>(m.begin() + static_cast<ptrdiff_t>(row) * dim,
                            m.begin() + static_cast<ptrdiff_t>(row + 1) * dim);
}

std::vector<const uint8_t*> AllImages(const References& refs) {
  std::vector<const uint8_t*> ptrs;
  for (int i = 0; i < refs.num_images; ++i) ptrs.push_back(refs.image(i));
  return ptrs;
}

absl::Status LoadStatus(const std::string& path) {
  return Encoder::Load(path, EncoderOptions()).status();
}

// A fresh temporary directory, removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "encoder_test_XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string File(const std::string& name, const std::string& contents) const {
    const std::string path = path_ + "/" + name;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

constexpr char kContractExample[] = R"({
  "format": 1,
  "name": "mobilenet_v2_140_feature_vector",
  "version": "nsfwjs-4.4.0",
  "embed_dim": 1792,
  "image_size": 224,
  "resize": "shortest_edge",        // comments, as in MODEL_CONTRACT.md, are allowed
  "crop": "center",
  "interpolation": "bicubic",
  "mean": [0.5, 0.5, 0.5],
  "std": [0.5, 0.5, 0.5],
  "metric": "cosine",
  "text": {"tokenizer": "clip_bpe", "context_length": 77, "vocab_file": "bpe_vocab.txt",
           "sot_token": 49406, "eot_token": 49407, "lower_case": true},
  "some_future_field": {"ignored": true}
})";

TEST_CASE("ParseModelJson reads the contract's example") {
  absl::StatusOr<ModelInfo> info = ParseModelJson(kContractExample);
  INFO(info.status().ToString());
  REQUIRE(info.ok());
  CHECK(info->name == "mobilenet_v2_140_feature_vector");
  CHECK(info->version == "nsfwjs-4.4.0");
  CHECK(info->embed_dim == 1792);
  CHECK(info->image_size == 224);
  CHECK(info->resize == "shortest_edge");
  CHECK(info->crop == "center");
  CHECK(info->interpolation == "bicubic");
  CHECK(info->mean == std::array<float, 3>{0.5f, 0.5f, 0.5f});
  CHECK(info->std == std::array<float, 3>{0.5f, 0.5f, 0.5f});
  CHECK(info->metric == "cosine");
  REQUIRE(info->text.has_value());
  CHECK(info->text->tokenizer == "clip_bpe");
  CHECK(info->text->context_length == 77);
  CHECK(info->text->vocab_file == "bpe_vocab.txt");
  CHECK(info->text->sot_token == 49406);
  CHECK(info->text->eot_token == 49407);
  CHECK(info->text->vocab_size == 0);
  CHECK(info->text->lower_case);
  CHECK(info->model_json == kContractExample);

  absl::StatusOr<ModelInfo> image_only = ParseModelJson(R"({"format": 1, "name": "m",
      "version": "", "embed_dim": 8, "image_size": 32, "resize": "squash", "crop": "none",
      "interpolation": "nearest", "mean": [0, 0, 0], "std": [1, 1, 1], "metric": "l2",
      "text": null})");
  INFO(image_only.status().ToString());
  REQUIRE(image_only.ok());
  CHECK_FALSE(image_only->text.has_value());
  CHECK(image_only->metric == "l2");
}

TEST_CASE("ParseModelJson rejects bad fields with precise messages") {
  nlohmann::json base = nlohmann::json::parse(kContractExample, nullptr, true, true);
  struct Case {
    std::string pointer;   // JSON pointer of the field to change
    nlohmann::json value;  // null: remove the field
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"/format", 2, R"("format" 2 is not supported)"},
      {"/name", nullptr, R"(missing required field "name")"},
      {"/name", "", R"("name" must not be empty)"},
      {"/embed_dim", nullptr, R"(missing required field "embed_dim")"},
      {"/embed_dim", -3, R"("embed_dim" must be in [1, 65536], got -3)"},
      {"/embed_dim", 1.5, R"("embed_dim" must be an integer, got 1.5)"},
      {"/embed_dim", "512", R"("embed_dim" must be an integer, got "512")"},
      {"/image_size", 0, R"("image_size" must be in [1, 4096], got 0)"},
      {"/resize", "stretch", R"("resize" must be one of "shortest_edge", "squash", got "stretch")"},
      {"/crop", "none", R"("shortest_edge" needs "crop": "center")"},
      {"/interpolation", "lanczos", R"("interpolation" must be one of)"},
      {"/mean", nlohmann::json::array({0.5, 0.5}), R"("mean" must be an array of 3 numbers)"},
      {"/std", nlohmann::json::array({0.5, 0, 0.5}),
       R"("std" must hold 3 finite positive numbers)"},
      {"/metric", "hamming", R"("metric" must be one of "cosine", "ip", "l2", got "hamming")"},
      {"/text", "clip", R"("text" must be an object or null)"},
      {"/text/tokenizer", nullptr, R"(missing required field "text.tokenizer")"},
      {"/text/context_length", "77", R"("text.context_length" must be an integer)"},
      {"/text/context_length", 1, R"("text.context_length" must be at least 2)"},
      {"/text/vocab_file", nullptr, R"(missing required field "text.vocab_file")"},
      {"/text/eot_token", -1, R"("text.eot_token" must be in [0, )"},
      {"/text/vocab_size", 49407, R"(must be below text.vocab_size 49407)"},
      {"/text/lower_case", "yes", R"("text.lower_case" must be true or false)"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = base;
    if (c.value.is_null()) {
      const nlohmann::json::json_pointer ptr(c.pointer);
      j[ptr.parent_pointer()].erase(ptr.back());
    } else {
      j[nlohmann::json::json_pointer(c.pointer)] = c.value;
    }
    absl::StatusOr<ModelInfo> info = ParseModelJson(j.dump());
    INFO(c.pointer << " = " << c.value.dump() << " -> " << info.status().ToString());
    REQUIRE_FALSE(info.ok());
    CHECK(info.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(info.status().message(), c.expected));
  }

  absl::StatusOr<ModelInfo> not_json = ParseModelJson("{\"format\": 1,");
  REQUIRE_FALSE(not_json.ok());
  CHECK(absl::StrContains(not_json.status().message(), "model.json is not valid JSON"));
  absl::StatusOr<ModelInfo> array = ParseModelJson("[1, 2]");
  REQUIRE_FALSE(array.ok());
  CHECK(absl::StrContains(array.status().message(), "must hold a JSON object, got array"));
}

TEST_CASE("tiny CLIP: model.json and vocabulary come from the archive") {
  const References& refs = Refs();
  std::unique_ptr<Encoder> encoder = LoadOrDie(TinyPath("model.pt"));
  const ModelInfo& info = encoder->info();
  CHECK(info.name == "tiny_clip");
  CHECK(info.embed_dim == refs.embed_dim);
  CHECK(info.image_size == refs.image_size);
  CHECK(info.resize == "shortest_edge");
  CHECK(info.crop == "center");
  CHECK(info.interpolation == "bicubic");
  CHECK(info.mean[0] == Approx(0.48145466f));
  CHECK(info.std[2] == Approx(0.27577711f));
  CHECK(info.metric == "cosine");
  REQUIRE(info.text.has_value());
  CHECK(info.text->tokenizer == "clip_bpe");
  CHECK(info.text->context_length == refs.context_length);
  CHECK(info.text->sot_token == 49406);
  CHECK(info.text->eot_token == 49407);
  CHECK(info.text->vocab_size == 49408);
  // The gunzipped bpe_simple_vocab_16e6.txt: a header, then merges.
  CHECK(absl::StartsWith(info.text->vocab, "\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\n"));
  CHECK(std::count(info.text->vocab.begin(), info.text->vocab.end(), '\n') >= 48895);
  CHECK(absl::StrContains(info.model_json, "\"tiny_clip\""));
}

TEST_CASE("tiny CLIP: LibTorch embeddings match the Python reference") {
  const References& refs = Refs();
  std::unique_ptr<Encoder> encoder = LoadOrDie(TinyPath("model.pt"));

  absl::StatusOr<std::vector<float>> images = encoder->EncodeImages(AllImages(refs));
  INFO(images.status().ToString());
  REQUIRE(images.ok());
  const float image_diff = MaxAbsDiff(*images, refs.image_embeds);
  WARN("tiny CLIP image embeddings: max |C++ - Python| = " << image_diff);
  CHECK(image_diff < 1e-4f);

  absl::StatusOr<std::vector<float>> texts = encoder->EncodeTokens(refs.tokens, refs.num_texts);
  INFO(texts.status().ToString());
  REQUIRE(texts.ok());
  const float text_diff = MaxAbsDiff(*texts, refs.text_embeds);
  WARN("tiny CLIP text embeddings: max |C++ - Python| = " << text_diff);
  CHECK(text_diff < 1e-4f);

  // Cosine metric: unit rows. And the inputs are told apart.
  for (int i = 0; i < refs.num_images; ++i) {
    double norm = 0;
    for (float x : Row(*images, i, refs.embed_dim)) norm += double{x} * x;
    CHECK(std::sqrt(norm) == Approx(1.0).epsilon(1e-5));
  }
  CHECK(MaxAbsDiff(Row(*images, 0, refs.embed_dim), Row(*images, 1, refs.embed_dim)) > 0.1f);
  CHECK(MaxAbsDiff(Row(*texts, 0, refs.embed_dim), Row(*texts, 1, refs.embed_dim)) > 0.1f);
}

TEST_CASE("tiny CLIP: a batch encodes as its members do one by one") {
  const References& refs = Refs();
  std::unique_ptr<Encoder> encoder = LoadOrDie(TinyPath("model.pt"));
  const int d = refs.embed_dim;

  const std::vector<const uint8_t*> pair = {refs.image(0), refs.image(2)};
  absl::StatusOr<std::vector<float>> both = encoder->EncodeImages(pair);
  REQUIRE(both.ok());
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::vector<float>> one = encoder->EncodeImages({pair[i]});
    REQUIRE(one.ok());
    CHECK(MaxAbsDiff(*one, Row(*both, i, d)) < 1e-5f);
  }

  const int ctx = refs.context_length;
  absl::StatusOr<std::vector<float>> texts = encoder->EncodeTokens(refs.tokens, refs.num_texts);
  REQUIRE(texts.ok());
  for (int i = 0; i < refs.num_texts; ++i) {
    absl::StatusOr<std::vector<float>> one = encoder->EncodeTokens(
        absl::MakeConstSpan(refs.tokens).subspan(static_cast<size_t>(i) * ctx, ctx), 1);
    REQUIRE(one.ok());
    CHECK(MaxAbsDiff(*one, Row(*texts, i, d)) < 1e-5f);
  }
}

TEST_CASE("tiny CLIP: concurrent Encode calls agree with the reference") {
  const References& refs = Refs();
  std::unique_ptr<Encoder> encoder = LoadOrDie(TinyPath("model.pt"));
  constexpr int kThreads = 4;
  constexpr int kRounds = 5;
  std::vector<float> worst(kThreads, 0);
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        const int i = (t + round) % refs.num_images;
        absl::StatusOr<std::vector<float>> image = encoder->EncodeImages({refs.image(i)});
        const int j = (t + round) % refs.num_texts;
        const size_t ctx = refs.context_length;
        absl::StatusOr<std::vector<float>> text =
            encoder->EncodeTokens(absl::MakeConstSpan(refs.tokens).subspan(j * ctx, ctx), 1);
        if (!image.ok() || !text.ok()) {
          ++failures[t];
          continue;
        }
        for (int k = 0; k < refs.embed_dim; ++k) {
          worst[t] =
              std::max(worst[t], std::abs((*image)[k] - refs.image_embeds[i * refs.embed_dim + k]));
          worst[t] =
              std::max(worst[t], std::abs((*text)[k] - refs.text_embeds[j * refs.embed_dim + k]));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) {
    CHECK(failures[t] == 0);
    CHECK(worst[t] < 1e-4f);
  }
}

TEST_CASE("tiny CLIP: an image-only export encodes images and rejects tokens") {
  const References& refs = Refs();
  std::unique_ptr<Encoder> encoder = LoadOrDie(TinyPath("image_only.pt"));
  CHECK_FALSE(encoder->info().text.has_value());
  absl::StatusOr<std::vector<float>> images = encoder->EncodeImages(AllImages(refs));
  REQUIRE(images.ok());
  CHECK(MaxAbsDiff(*images, refs.image_embeds) < 1e-4f);

  absl::StatusOr<std::vector<float>> texts = encoder->EncodeTokens(refs.tokens, refs.num_texts);
  REQUIRE_FALSE(texts.ok());
  CHECK(texts.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(texts.status().message() == "model tiny_clip has no text encoder");
}

TEST_CASE("Encode validates its inputs") {
  const References& refs = Refs();
  std::unique_ptr<Encoder> encoder = LoadOrDie(TinyPath("model.pt"));
  const int ctx = refs.context_length;

  absl::StatusOr<std::vector<float>> empty = encoder->EncodeImages({});
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  absl::StatusOr<std::vector<float>> null_image = encoder->EncodeImages({refs.image(0), nullptr});
  REQUIRE_FALSE(null_image.ok());
  CHECK(null_image.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(null_image.status().message() == "image 1 is a null pointer");

  absl::StatusOr<std::vector<float>> no_texts = encoder->EncodeTokens({}, 0);
  REQUIRE(no_texts.ok());
  CHECK(no_texts->empty());
  absl::StatusOr<std::vector<float>> short_ids =
      encoder->EncodeTokens(absl::MakeConstSpan(refs.tokens).subspan(0, ctx - 1), 1);
  REQUIRE_FALSE(short_ids.ok());
  CHECK(short_ids.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(short_ids.status().message() ==
        "token_ids has 76 ids, expected batch 1 x context_length 77 = 77");
  CHECK(encoder->EncodeTokens({}, -1).status().code() == absl::StatusCode::kInvalidArgument);

  std::vector<int64_t> ids(refs.tokens.begin(), refs.tokens.begin() + ctx);
  ids[3] = 49408;
  absl::StatusOr<std::vector<float>> too_big = encoder->EncodeTokens(ids, 1);
  REQUIRE_FALSE(too_big.ok());
  CHECK(too_big.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(too_big.status().message() ==
        "token id 49408 at position 3 of sequence 0 is outside [0, 49408)");
  ids[3] = -5;
  CHECK(encoder->EncodeTokens(ids, 1).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Load reports missing, corrupt and non-conforming models precisely") {
  TempDir tmp;
  SECTION("missing file") {
    const absl::Status s = LoadStatus(tmp.path() + "/nope.pt");
    CHECK(s.code() == absl::StatusCode::kNotFound);
    CHECK(s.message() == "model file '" + tmp.path() + "/nope.pt' does not exist");
  }
  SECTION("a directory") {
    const absl::Status s = LoadStatus(tmp.path());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(s.message(), "is not a regular file"));
  }
  SECTION("not a zip archive") {
    const std::string path = tmp.File("garbage.pt", "this is not a TorchScript archive\n");
    const absl::Status s = LoadStatus(path);
    INFO(s.ToString());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StartsWith(s.message(), "cannot load '" + path + "' as a TorchScript archive: "));
  }
  SECTION("truncated archive") {
    const std::string bytes = ReadFile(TinyPath("image_only.pt"));
    const std::string path = tmp.File("truncated.pt", bytes.substr(0, bytes.size() / 2));
    const absl::Status s = LoadStatus(path);
    INFO(s.ToString());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StartsWith(s.message(), "cannot load '" + path + "' as a TorchScript archive: "));
  }
  SECTION("no model.json") {
    const absl::Status s = LoadStatus(TinyPath("no_model_json.pt"));
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(s.message(), "has no model.json extra file"));
  }
  SECTION("model.json embed_dim disagrees with the model: the warm-up check fails") {
    const absl::Status s = LoadStatus(TinyPath("bad_dim.pt"));
    INFO(s.ToString());
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(s.message(), "failed its warm-up"));
    CHECK(absl::StrContains(s.message(),
                            "encode_image returned shape [2, 32], expected [2, 33] "
                            "(model.json embed_dim 33)"));
  }
  SECTION("model.json has a text block but the archive no encode_text") {
    const absl::Status s = LoadStatus(TinyPath("no_encode_text.pt"));
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(s.message(),
                            "has no method encode_text, but model.json has a \"text\" block"));
  }
}

TEST_CASE("the default model, when built, loads with embed_dim 1792") {
  const char* env = std::getenv("IMAGESEARCH_DEFAULT_MODEL_PATH");
  const std::string path = env != nullptr ? env : IMAGESEARCH_DEFAULT_MODEL_PATH;
  if (!fs::exists(path)) {
    WARN("default model " << path << " not built; skipped");
    return;
  }
  std::unique_ptr<Encoder> encoder = LoadOrDie(path);
  const ModelInfo& info = encoder->info();
  CHECK(info.embed_dim == 1792);
  std::vector<uint8_t> grey(static_cast<size_t>(info.image_size) * info.image_size * 3, 128);
  absl::StatusOr<std::vector<float>> out = encoder->EncodeImages({grey.data()});
  INFO(out.status().ToString());
  REQUIRE(out.ok());
  CHECK(out->size() == 1792);
}

}  // namespace
}  // namespace imagesearch::encoder
