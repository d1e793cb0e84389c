// ParseModelJson: validation of model.json (MODEL_CONTRACT.md). Kept apart
// from encoder.cc so that it compiles without LibTorch.
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "libs/common/status_macros.h"
#include "libs/common/string_view.h"
#include "libs/encoder/encoder.h"
#include "nlohmann/json.hpp"

namespace imagesearch::encoder {
namespace {

using Json = nlohmann::json;

constexpr int kSupportedFormat = 1;

// Debian's Abseil has its own string_view type, which StrCat requires.

// Reads the fields of one JSON object; errors name the field with its path
// ("text.context_length").
class FieldReader {
 public:
  FieldReader(const Json& object, std::string prefix)
      : object_(object), prefix_(std::move(prefix)) {}

  bool Has(std::string_view field) const {
    auto it = object_.find(field);
    return it != object_.end() && !it->is_null();
  }

  absl::Status String(std::string_view field, std::string* out) const {
    ASSIGN_OR_RETURN(const Json* value, Get(field));
    if (!value->is_string()) return Error(field, "must be a string", *value);
    *out = value->get<std::string>();
    if (out->empty()) return Error(field, "must not be empty", *value);
    return absl::OkStatus();
  }

  // A string that may be empty (e.g. a version).
  absl::Status StringMaybeEmpty(std::string_view field, std::string* out) const {
    ASSIGN_OR_RETURN(const Json* value, Get(field));
    if (!value->is_string()) return Error(field, "must be a string", *value);
    *out = value->get<std::string>();
    return absl::OkStatus();
  }

  absl::Status OneOf(std::string_view field, std::initializer_list<std::string_view> allowed,
                     std::string* out) const {
    RETURN_IF_ERROR(String(field, out));
    std::vector<absl::string_view> names;
    for (std::string_view a : allowed) {
      if (*out == a) return absl::OkStatus();
      names.push_back(ToAbsl(a));
    }
    return Error(field, absl::StrCat("must be one of \"", absl::StrJoin(names, "\", \""), "\""),
                 *Get(field).value());
  }

  template <typename Int>
  absl::Status Integer(std::string_view field, int64_t min, int64_t max, Int* out) const {
    ASSIGN_OR_RETURN(const Json* value, Get(field));
    if (!value->is_number_integer()) {
      return Error(field, "must be an integer", *value);
    }
    // Unsigned values above int64 max read as negative here and fail the
    // range check, which is what we want.
    const int64_t v = value->get<int64_t>();
    if (v < min || v > max || (value->is_number_unsigned() && v < 0)) {
      return Error(field, absl::StrCat("must be in [", min, ", ", max, "]"), *value);
    }
    *out = static_cast<Int>(v);
    return absl::OkStatus();
  }

  absl::Status Bool(std::string_view field, bool* out) const {
    ASSIGN_OR_RETURN(const Json* value, Get(field));
    if (!value->is_boolean()) return Error(field, "must be true or false", *value);
    *out = value->get<bool>();
    return absl::OkStatus();
  }

  absl::Status Float3(std::string_view field, bool positive, std::array<float, 3>* out) const {
    ASSIGN_OR_RETURN(const Json* value, Get(field));
    if (!value->is_array() || value->size() != 3) {
      return Error(field, "must be an array of 3 numbers", *value);
    }
    for (size_t i = 0; i < 3; ++i) {
      const Json& x = (*value)[i];
      if (!x.is_number()) return Error(field, "must be an array of 3 numbers", *value);
      const double d = x.get<double>();
      if (!std::isfinite(d) || std::abs(d) > 1e6 || (positive && !(d > 0))) {
        return Error(
            field, positive ? "must hold 3 finite positive numbers" : "must hold 3 finite numbers",
            *value);
      }
      (*out)[i] = static_cast<float>(d);
    }
    return absl::OkStatus();
  }

  absl::Status Error(std::string_view field, std::string_view what, const Json& got) const {
    std::string shown = got.dump();
    if (shown.size() > 60) shown = shown.substr(0, 57) + "...";
    return absl::InvalidArgumentError(absl::StrCat("model.json: \"", prefix_, ToAbsl(field), "\" ",
                                                   ToAbsl(what), ", got ", shown));
  }

 private:
  absl::StatusOr<const Json*> Get(std::string_view field) const {
    auto it = object_.find(field);
    if (it == object_.end() || it->is_null()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.json: missing required field \"", prefix_, ToAbsl(field), "\""));
    }
    return &*it;
  }

  const Json& object_;
  const std::string prefix_;
};

absl::StatusOr<TextConfig> ParseText(const Json& object) {
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.json: \"text\" must be an object or null, got ", object.dump()));
  }
  FieldReader text(object, "text.");
  TextConfig config;
  RETURN_IF_ERROR(text.String("tokenizer", &config.tokenizer));
  RETURN_IF_ERROR(text.Integer("context_length", 1, 4096, &config.context_length));
  RETURN_IF_ERROR(text.String("vocab_file", &config.vocab_file));
  constexpr int64_t kMaxId = std::numeric_limits<int32_t>::max();
  RETURN_IF_ERROR(text.Integer("sot_token", 0, kMaxId, &config.sot_token));
  RETURN_IF_ERROR(text.Integer("eot_token", 0, kMaxId, &config.eot_token));
  if (text.Has("lower_case")) {
    RETURN_IF_ERROR(text.Bool("lower_case", &config.lower_case));
  }
  if (text.Has("vocab_size")) {
    RETURN_IF_ERROR(text.Integer("vocab_size", 1, kMaxId, &config.vocab_size));
    if (config.sot_token >= config.vocab_size || config.eot_token >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.json: text.sot_token ", config.sot_token, " and eot_token ",
                       config.eot_token, " must be below text.vocab_size ", config.vocab_size));
    }
  }
  if (config.context_length < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.json: \"text.context_length\" must be at least 2 (SOT and EOT), got ",
                     config.context_length));
  }
  return config;
}

}  // namespace

absl::StatusOr<ModelInfo> ParseModelJson(std::string_view json) {
  Json root;
  try {
    root = Json::parse(json.begin(), json.end(), /*cb=*/nullptr,
                       /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const Json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("model.json is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.json must hold a JSON object, got ", root.type_name()));
  }
  FieldReader fields(root, "");
  int format = 0;
  RETURN_IF_ERROR(fields.Integer("format", 0, std::numeric_limits<int32_t>::max(), &format));
  if (format != kSupportedFormat) {
    return absl::InvalidArgumentError(absl::StrCat("model.json: \"format\" ", format,
                                                   " is not supported (this build reads format ",
                                                   kSupportedFormat, ")"));
  }
  ModelInfo info;
  RETURN_IF_ERROR(fields.String("name", &info.name));
  RETURN_IF_ERROR(fields.StringMaybeEmpty("version", &info.version));
  RETURN_IF_ERROR(fields.Integer("embed_dim", 1, 65536, &info.embed_dim));
  RETURN_IF_ERROR(fields.Integer("image_size", 1, 4096, &info.image_size));
  RETURN_IF_ERROR(fields.OneOf("resize", {"shortest_edge", "squash"}, &info.resize));
  RETURN_IF_ERROR(fields.OneOf("crop", {"center", "none"}, &info.crop));
  if (info.resize == "shortest_edge" && info.crop != "center") {
    return absl::InvalidArgumentError(
        "model.json: \"resize\": \"shortest_edge\" needs \"crop\": \"center\" (the "
        "other side would not be image_size)");
  }
  RETURN_IF_ERROR(
      fields.OneOf("interpolation", {"bicubic", "bilinear", "nearest"}, &info.interpolation));
  RETURN_IF_ERROR(fields.Float3("mean", /*positive=*/false, &info.mean));
  RETURN_IF_ERROR(fields.Float3("std", /*positive=*/true, &info.std));
  RETURN_IF_ERROR(fields.OneOf("metric", {"cosine", "ip", "l2"}, &info.metric));
  if (fields.Has("text")) {
    ASSIGN_OR_RETURN(info.text, ParseText(*root.find("text")));
  }
  info.model_json = std::string(json);
  return info;
}

}  // namespace imagesearch::encoder
