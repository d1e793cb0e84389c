#include "libs/image/image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>
#include <vips/vips8>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "libs/common/file_util.h"
#include "libs/common/status_macros.h"
#include "libs/common/string_view.h"

namespace imagesearch::image {
namespace {

using vips::VImage;

// Debian's Abseil is built with its own string_view, distinct from std's.

constexpr int kMaxImageSize = 4096;
// Messages from libvips are capped so that a hostile file cannot make us
// return (and log) an unbounded error string.
constexpr size_t kMaxVipsMessage = 400;

// How a loader can shrink while decoding.
enum class LoadShrink { kNone, kJpegShrink, kWebpScale };

struct LoaderInfo {
  const char* type_name;  // as vips_foreign_find_load_buffer() names it
  const char* format;     // for messages
  LoadShrink shrink;
};

// The formats we decode. Anything else libvips might recognise (SVG, PDF,
// FITS, ImageMagick's many formats, ...) is refused: a smaller attack surface,
// and a server has no business rasterising documents.
constexpr LoaderInfo kLoaders[] = {
    {"VipsForeignLoadJpegBuffer", "jpeg", LoadShrink::kJpegShrink},
    {"VipsForeignLoadPngBuffer", "png", LoadShrink::kNone},
    {"VipsForeignLoadWebpBuffer", "webp", LoadShrink::kWebpScale},
    {"VipsForeignLoadNsgifBuffer", "gif", LoadShrink::kNone},
    {"VipsForeignLoadTiffBuffer", "tiff", LoadShrink::kNone},
    {"VipsForeignLoadHeifBuffer", "heif", LoadShrink::kNone},
};
constexpr const char* kSupportedFormats = "jpeg, png, webp, gif, tiff, heif/avif";

const LoaderInfo* FindLoader(std::string_view type_name) {
  for (const LoaderInfo& loader : kLoaders) {
    if (type_name == loader.type_name) return &loader;
  }
  return nullptr;
}

// "VipsForeignLoadSvgBuffer" -> "svg".
std::string FormatFromLoader(std::string_view type_name) {
  constexpr std::string_view kPrefix = "VipsForeignLoad";
  constexpr std::string_view kSuffix = "Buffer";
  if (type_name.substr(0, kPrefix.size()) == kPrefix) type_name.remove_prefix(kPrefix.size());
  if (type_name.size() > kSuffix.size() &&
      type_name.substr(type_name.size() - kSuffix.size()) == kSuffix) {
    type_name.remove_suffix(kSuffix.size());
  }
  std::string format(type_name);
  for (char& c : format) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return format;
}

// Takes (and clears) libvips' process-wide error buffer. `thrown` is what a
// vips::VError captured when it was thrown; it is preferred because another
// thread may clear the shared buffer between the throw and this call. The
// buffer is shared by all threads, so under concurrent failures a message can
// occasionally carry another call's text too; clearing it on every failure
// keeps it from growing.
std::string TakeVipsError(const char* thrown) {
  char* buffered = vips_error_buffer_copy();  // copies and clears, atomically
  std::string raw = (thrown != nullptr && *thrown != '\0') ? thrown
                    : buffered != nullptr                  ? buffered
                                                           : "";
  g_free(buffered);
  std::vector<std::string> lines;
  for (absl::string_view piece : absl::StrSplit(raw, '\n', absl::SkipWhitespace())) {
    std::string line(piece);
    if (std::find(lines.begin(), lines.end(), line) == lines.end())
      lines.push_back(std::move(line));
  }
  std::string message =
      lines.empty() ? "libvips gave no further detail" : absl::StrJoin(lines, "; ");
  if (message.size() > kMaxVipsMessage) {
    // The newest messages, at the end, are the ones about this failure.
    message = "..." + message.substr(message.size() - kMaxVipsMessage);
  }
  return message;
}

// The first bytes of unrecognised input, in hex, to help whoever reads the
// error tell an HTML error page from a truncated upload.
std::string HexPrefix(std::string_view data) {
  std::string out;
  const size_t n = std::min<size_t>(data.size(), 8);
  for (size_t i = 0; i < n; ++i) {
    absl::StrAppendFormat(&out, "%s%02x", i == 0 ? "" : " ", static_cast<unsigned char>(data[i]));
  }
  return out;
}

// The largest alpha value for an interpretation, as libvips defines it.
double MaxAlpha(VipsInterpretation interpretation) {
  switch (interpretation) {
    case VIPS_INTERPRETATION_GREY16:
    case VIPS_INTERPRETATION_RGB16:
      return 65535.0;
    case VIPS_INTERPRETATION_scRGB:
      return 1.0;
    default:
      return 255.0;
  }
}

VipsKernel KernelFor(Interpolation interpolation) {
  switch (interpolation) {
    case Interpolation::kBilinear:
      return VIPS_KERNEL_LINEAR;
    case Interpolation::kNearest:
      return VIPS_KERNEL_NEAREST;
    case Interpolation::kBicubic:
      break;
  }
  return VIPS_KERNEL_CUBIC;
}

// Opens the image lazily: libvips reads only the header here; pixels are
// decoded when first needed. `shrink` > 1 asks the decoder to shrink by that
// integer factor while decoding (only for loaders that can).
VImage Load(const LoaderInfo& loader, std::string_view data, int shrink) {
  VipsBlob* blob = vips_blob_new(nullptr, data.data(), data.size());
  vips::VOption* options = VImage::option()
                               ->set("buffer", blob)
                               ->set("access", VIPS_ACCESS_SEQUENTIAL)
                               ->set("fail_on", VIPS_FAIL_ON_ERROR);
  vips_area_unref(VIPS_AREA(blob));
  if (shrink > 1) {
    if (loader.shrink == LoadShrink::kJpegShrink) {
      options->set("shrink", shrink);
    } else if (loader.shrink == LoadShrink::kWebpScale) {
      options->set("scale", 1.0 / shrink);
    }
  }
  VImage out;
  options->set("out", &out);
  VImage::call(loader.type_name, options);
  return out;
}

// The integer shrink-on-load factor for a total reduction of `reduction`
// (>= 1 means downscaling). Like vips_thumbnail, it leaves at least a 2x
// reduction for the resampling kernel, so the result stays antialiased.
int ChooseLoadShrink(double reduction) {
  if (reduction >= 16.0) return 8;
  if (reduction >= 8.0) return 4;
  if (reduction >= 4.0) return 2;
  return 1;
}

// Computes every pixel of `image` (8-bit, 3 bands) on the calling thread and
// returns them. VImage::copy_memory() would hand the work to libvips' thread
// pool tile by tile and wait for it; for the small images a query sends, those
// hand-offs cost more than the decoding (a 64-px PNG: 2.0 ms through
// copy_memory, 0.57 ms here, measured on a busy 2-core host), and on a host
// whose cores run the model they also wake a thread that competes with it.
// Throws vips::VError on any libvips failure (corrupt data shows up here).
RgbImage ComputeHere(const VImage& image) {
  RgbImage out;
  out.width = image.width();
  out.height = image.height();
  if (image.bands() != 3 || image.format() != VIPS_FORMAT_UCHAR) {
    vips_error("imagesearch", "expected 8-bit RGB, got %d bands of format %d", image.bands(),
               static_cast<int>(image.format()));
    throw vips::VError();
  }
  VipsRegion* region = vips_region_new(image.get_image());
  if (region == nullptr) throw vips::VError();
  VipsRect all = {0, 0, out.width, out.height};
  if (vips_region_prepare(region, &all) != 0) {
    g_object_unref(region);
    throw vips::VError();
  }
  const size_t row_bytes = static_cast<size_t>(out.width) * 3;
  out.pixels.resize(row_bytes * static_cast<size_t>(out.height));
  for (int y = 0; y < out.height; ++y) {
    std::memcpy(&out.pixels[row_bytes * static_cast<size_t>(y)], VIPS_REGION_ADDR(region, 0, y),
                row_bytes);
  }
  g_object_unref(region);
  return out;
}

// One output sample along one axis: four input indices (clamped to the
// edge, which replicates it) and their weights; kernels with fewer taps give
// the rest weight 0, so every loop below has a fixed shape and vectorises.
struct Taps {
  int index[4];
  float weight[4];
};

// The taps of each of `out` samples enlarged from `in` (in <= out), with the
// pixel centres aligned as libvips and PIL align them: output x samples the
// input at (x + 0.5) * in / out - 0.5.
std::vector<Taps> EnlargeTaps(int in, int out, Interpolation interpolation) {
  std::vector<Taps> taps(static_cast<size_t>(out));
  const double scale = static_cast<double>(in) / out;
  auto clamp = [in](int i) { return std::clamp(i, 0, in - 1); };
  for (int o = 0; o < out; ++o) {
    Taps& t = taps[static_cast<size_t>(o)];
    const double x = (o + 0.5) * scale - 0.5;
    const int i = static_cast<int>(std::floor(x));
    const double f = x - i;
    double w[4] = {0, 0, 0, 0};
    int first = i - 1;
    switch (interpolation) {
      case Interpolation::kNearest:
        first = static_cast<int>(std::floor((o + 0.5) * scale));
        w[0] = 1;
        break;
      case Interpolation::kBilinear:
        first = i;
        w[0] = 1 - f;
        w[1] = f;
        break;
      case Interpolation::kBicubic: {
        // Catmull-Rom (Keys, a = -0.5): libvips' and PIL's bicubic.
        constexpr double a = -0.5;
        auto near = [](double d) { return ((a + 2) * d - (a + 3)) * d * d + 1; };  // |d| <= 1
        auto far = [](double d) {
          return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a;
        };  // 1 < |d| < 2
        w[0] = far(1 + f);
        w[1] = near(f);
        w[2] = near(1 - f);
        w[3] = far(2 - f);
        break;
      }
    }
    for (int k = 0; k < 4; ++k) {
      t.index[k] = clamp(first + k);
      t.weight[k] = static_cast<float>(w[k]);
    }
  }
  return taps;
}

// Enlarges `in` (8-bit RGB, no side longer than `side`) to side x side with
// `interpolation`, separably: rows first (into floats), then columns. libvips
// enlarges through its general affine transform, which took 3-6 ms per
// 64 -> 224 px image (any kernel, even nearest) on a busy 2-core host; this
// takes a fraction of that.
RgbImage Enlarge(const RgbImage& in, int side, Interpolation interpolation) {
  const std::vector<Taps> tx = EnlargeTaps(in.width, side, interpolation);
  const std::vector<Taps> ty = EnlargeTaps(in.height, side, interpolation);
  const size_t row = static_cast<size_t>(side) * 3;
  std::vector<float> wide(row * static_cast<size_t>(in.height));  // in.height x side x 3
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* src = &in.pixels[static_cast<size_t>(y) * in.width * 3];
    float* dst = &wide[row * static_cast<size_t>(y)];
    for (int x = 0; x < side; ++x) {
      const Taps& t = tx[static_cast<size_t>(x)];
      for (int c = 0; c < 3; ++c) {
        float v = 0;
        for (int k = 0; k < 4; ++k) v += t.weight[k] * src[t.index[k] * 3 + c];
        dst[x * 3 + c] = v;
      }
    }
  }
  RgbImage out;
  out.width = side;
  out.height = side;
  out.pixels.resize(row * static_cast<size_t>(side));
  for (int y = 0; y < side; ++y) {
    const Taps& t = ty[static_cast<size_t>(y)];
    const float* __restrict r0 = &wide[row * static_cast<size_t>(t.index[0])];
    const float* __restrict r1 = &wide[row * static_cast<size_t>(t.index[1])];
    const float* __restrict r2 = &wide[row * static_cast<size_t>(t.index[2])];
    const float* __restrict r3 = &wide[row * static_cast<size_t>(t.index[3])];
    const float w0 = t.weight[0], w1 = t.weight[1], w2 = t.weight[2], w3 = t.weight[3];
    uint8_t* __restrict dst = &out.pixels[row * static_cast<size_t>(y)];
    for (size_t i = 0; i < row; ++i) {  // Rounds half up; vectorises, unlike lround.
      const float v = w0 * r0[i] + w1 * r1[i] + w2 * r2[i] + w3 * r3[i];
      dst[i] = static_cast<uint8_t>(std::clamp(v, 0.0f, 255.0f) + 0.5f);
    }
  }
  return out;
}

// Makes a just-resized `image` exactly side x side: crops the centre if a
// dimension came out long, pads by edge replication if one came out short.
VImage FitToSquare(const VImage& image, int side) {
  VImage out = image;
  const int w = out.width();
  const int h = out.height();
  if (w > side || h > side) {
    const int cw = std::min(w, side);
    const int ch = std::min(h, side);
    out = out.extract_area((w - cw) / 2, (h - ch) / 2, cw, ch);
  }
  if (out.width() < side || out.height() < side) {
    out = out.embed(0, 0, side, side, VImage::option()->set("extend", VIPS_EXTEND_COPY));
  }
  return out;
}

// The canvas size a WebP file declares, read straight from its first chunk,
// or nullopt if the header is not one we can read. libvips' WebP loader
// allocates the whole (possibly scaled) frame while reading the header, so
// the size has to be known, and checked, before libvips sees the file.
std::optional<std::pair<int64_t, int64_t>> WebpCanvasSize(std::string_view data) {
  if (data.size() < 30 || data.substr(0, 4) != "RIFF" || data.substr(8, 4) != "WEBP") {
    return std::nullopt;
  }
  auto byte = [&data](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(data[i])); };
  const std::string_view chunk = data.substr(12, 4);
  if (chunk == "VP8X") {  // extended: 24-bit (width - 1) and (height - 1)
    return std::make_pair(int64_t{1} + (byte(24) | byte(25) << 8 | byte(26) << 16),
                          int64_t{1} + (byte(27) | byte(28) << 8 | byte(29) << 16));
  }
  if (chunk == "VP8 ") {  // lossy: frame tag, start code 9d 01 2a, 14-bit sizes
    if (byte(23) != 0x9d || byte(24) != 0x01 || byte(25) != 0x2a) return std::nullopt;
    return std::make_pair(int64_t{(byte(26) | byte(27) << 8) & 0x3fff},
                          int64_t{(byte(28) | byte(29) << 8) & 0x3fff});
  }
  if (chunk == "VP8L") {  // lossless: signature 2f, then 14-bit (width - 1), (height - 1)
    if (byte(20) != 0x2f) return std::nullopt;
    const uint32_t bits = byte(21) | byte(22) << 8 | byte(23) << 16 | byte(24) << 24;
    return std::make_pair(int64_t{1} + (bits & 0x3fff), int64_t{1} + ((bits >> 14) & 0x3fff));
  }
  return std::nullopt;
}

absl::Status CheckPixelCount(const LoaderInfo& loader, int64_t width, int64_t height,
                             int64_t max_pixels) {
  if (width * height > max_pixels) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s image is %dx%d = %d pixels, over the limit of %d pixels", loader.format,
                        width, height, width * height, max_pixels));
  }
  return absl::OkStatus();
}

// Everything after the format is known. Throws vips::VError on any libvips
// failure, including corrupt pixel data found while decoding.
// Encodes `image` (8-bit sRGB, in memory) as the thumbnail `options` asks for.
std::string MakeThumbnail(VImage image, const ThumbnailOptions& options) {
  const int long_side = std::max(image.width(), image.height());
  if (long_side > options.max_side) {
    image = image.resize(static_cast<double>(options.max_side) / long_side,
                         VImage::option()->set("kernel", VIPS_KERNEL_LANCZOS3));
  }
  if (vips_image_get_orientation(image.get_image()) > 1) image = image.autorot();
  void* buffer = nullptr;
  size_t length = 0;
  if (vips_jpegsave_buffer(image.get_image(), &buffer, &length, "Q", options.quality, "strip", TRUE,
                           "optimize_coding", TRUE, nullptr) != 0) {
    throw vips::VError();
  }
  std::string out(static_cast<const char*>(buffer), length);
  g_free(buffer);
  return out;
}

absl::StatusOr<RgbImage> DecodeAndPreprocessWith(const LoaderInfo& loader, std::string_view data,
                                                 const PreprocessOptions& options,
                                                 const ThumbnailOptions* thumbnail,
                                                 std::string* thumbnail_out, const char** stage) {
  const int side = options.image_size;
  // Check the size the header declares before any pixel is decoded.
  int64_t width = 0;
  int64_t height = 0;
  std::optional<VImage> header;
  const std::optional<std::pair<int64_t, int64_t>> webp_size =
      loader.shrink == LoadShrink::kWebpScale ? WebpCanvasSize(data) : std::nullopt;
  if (webp_size.has_value()) {
    std::tie(width, height) = *webp_size;
  } else {
    *stage = "reading the header";
    header = Load(loader, data, 1);  // reads the header only
    width = header->width();
    height = header->height();
  }
  RETURN_IF_ERROR(CheckPixelCount(loader, width, height, options.max_pixels));

  // Shrink-on-load. Both resize modes must keep the shorter side >= side.
  const double reduction = static_cast<double>(std::min(width, height)) / side;
  const int shrink = loader.shrink == LoadShrink::kNone ? 1 : ChooseLoadShrink(reduction);
  *stage = "opening the image";
  VImage image = (header.has_value() && shrink == 1) ? *header : Load(loader, data, shrink);

  // Alpha goes onto white, before any resampling.
  if (image.has_alpha()) {
    const VipsInterpretation interpretation = image.interpretation();
    const double max_alpha = MaxAlpha(interpretation);
    const double white = interpretation == VIPS_INTERPRETATION_CMYK ? 0.0 : max_alpha;
    image = image.flatten(VImage::option()
                              ->set("background", std::vector<double>(image.bands() - 1, white))
                              ->set("max_alpha", max_alpha));
  }
  // Grey, 16-bit, CMYK, ... -> 8-bit sRGB.
  if (image.interpretation() != VIPS_INTERPRETATION_sRGB || image.format() != VIPS_FORMAT_UCHAR ||
      image.bands() != 3) {
    image = image.colourspace(VIPS_INTERPRETATION_sRGB);
    if (image.bands() > 3) image = image.extract_band(0, VImage::option()->set("n", 3));
    if (image.bands() == 1) image = VImage::bandjoin({image, image, image});
    if (image.format() != VIPS_FORMAT_UCHAR) image = image.cast(VIPS_FORMAT_UCHAR);
  }
  if (thumbnail != nullptr) {
    // Decode once into memory (corrupt data throws here); the thumbnail and
    // the model input are both made from these pixels.
    *stage = "decoding the pixels";
    image = image.copy_memory();
    *stage = "making the thumbnail";
    *thumbnail_out = MakeThumbnail(image, *thumbnail);
  }

  // Crop and resize in the stored orientation, then materialise the small
  // result and rotate it upright. A centred square crop commutes with the
  // rotations and flips, and so does squashing to a square. Cropping first
  // (shortest_edge + center crop == centre square, then resize) means a very
  // long, thin image never becomes a huge intermediate.
  if (options.resize == ResizeMode::kShortestEdge && image.width() != image.height()) {
    const int short_side = std::min(image.width(), image.height());
    // An odd leftover leaves its extra pixel after the crop in the upright
    // image; where the orientation runs a stored axis backwards, that pixel
    // goes before the crop in stored coordinates.
    const int orientation = vips_image_get_orientation(image.get_image());
    const bool x_reversed =
        orientation == 2 || orientation == 3 || orientation == 7 || orientation == 8;
    const bool y_reversed =
        orientation == 3 || orientation == 4 || orientation == 6 || orientation == 7;
    const int left_over = image.width() - short_side;
    const int top_over = image.height() - short_side;
    image =
        image.extract_area(x_reversed ? (left_over + 1) / 2 : left_over / 2,
                           y_reversed ? (top_over + 1) / 2 : top_over / 2, short_side, short_side);
  }
  const int orientation = vips_image_get_orientation(image.get_image());
  RgbImage out;
  if (image.width() <= side && image.height() <= side &&
      (image.width() != side || image.height() != side)) {
    // Enlarging (a small query image, a thumbnail): decode it as it is, then
    // enlarge it here (see Enlarge).
    *stage = "decoding the pixels";
    out = Enlarge(ComputeHere(image), side, options.interpolation);
  } else {
    if (image.width() != side || image.height() != side) {
      image = image.resize(static_cast<double>(side) / image.width(),
                           VImage::option()
                               ->set("vscale", static_cast<double>(side) / image.height())
                               ->set("kernel", KernelFor(options.interpolation)));
      image = FitToSquare(image, side);  // resize may round a side to side +- 1
    }
    *stage = "decoding the pixels";
    out = ComputeHere(image);  // decodes; corrupt data throws here
  }
  // Most images need no rotation; the pixels are rotated once they are small.
  if (orientation > 1) {
    *stage = "applying the EXIF orientation";
    VImage upright = VImage::new_from_memory(out.pixels.data(), out.pixels.size(), out.width,
                                             out.height, 3, VIPS_FORMAT_UCHAR);
    upright.set("orientation", orientation);
    out = ComputeHere(upright.autorot());  // Reads `out` before replacing it.
  }
  if (out.width != side || out.height != side) {
    return absl::InternalError(absl::StrFormat("preprocessing produced %dx%d, not %dx%d", out.width,
                                               out.height, side, side));
  }
  return out;
}

}  // namespace

absl::Status InitImageLibrary() {
  static const absl::Status* const status = [] {
    if (VIPS_INIT("imagesearch") != 0) {
      return new absl::Status(
          absl::InternalError(absl::StrCat("cannot start libvips: ", TakeVipsError(nullptr))));
    }
    // No operation cache: pipelines are never reused, and a cache keyed on
    // buffer addresses must not outlive the caller's buffers.
    vips_cache_set_max(0);
    vips_cache_set_max_mem(0);
    vips_cache_set_max_files(0);
    vips_block_untrusted_set(TRUE);
    // libvips logs decoder chatter about individual images ("read gave 7
    // warnings", "error in tile 0 x 96") to stderr; whatever matters comes
    // back in our Status instead. IMAGESEARCH_VIPS_WARNINGS=1 keeps the logs.
    if (std::getenv("IMAGESEARCH_VIPS_WARNINGS") == nullptr) {
      g_log_set_handler(
          "VIPS", G_LOG_LEVEL_WARNING, [](const gchar*, GLogLevelFlags, const gchar*, gpointer) {},
          nullptr);
    }
    if (std::getenv("VIPS_CONCURRENCY") == nullptr) vips_concurrency_set(1);
    return new absl::Status();
  }();
  return *status;
}

absl::Status ValidateThumbnailOptions(const ThumbnailOptions& thumbnail) {
  if (thumbnail.max_side < 8 || thumbnail.max_side > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("thumbnail size must be in [8, 1024], got ", thumbnail.max_side));
  }
  if (thumbnail.quality < 1 || thumbnail.quality > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("thumbnail quality must be in [1, 100], got ", thumbnail.quality));
  }
  return absl::OkStatus();
}

absl::Status ValidatePreprocessOptions(const PreprocessOptions& options) {
  if (options.image_size < 1 || options.image_size > kMaxImageSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("image_size must be in [1, ", kMaxImageSize, "], got ", options.image_size));
  }
  if (options.crop == CropMode::kNone && options.resize != ResizeMode::kSquash) {
    return absl::InvalidArgumentError(
        "crop \"none\" needs resize \"squash\"; \"shortest_edge\" gives a non-square image");
  }
  if (options.max_pixels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_pixels must be positive, got ", options.max_pixels));
  }
  if (options.max_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_bytes must be positive, got ", options.max_bytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<DecodedImage> DecodeWithThumbnail(std::string_view encoded,
                                                 const PreprocessOptions& options,
                                                 const ThumbnailOptions* thumbnail) {
  RETURN_IF_ERROR(InitImageLibrary());
  if (thumbnail != nullptr) RETURN_IF_ERROR(ValidateThumbnailOptions(*thumbnail));
  RETURN_IF_ERROR(ValidatePreprocessOptions(options));
  if (encoded.empty()) return absl::InvalidArgumentError("image is empty (0 bytes)");
  if (static_cast<int64_t>(encoded.size()) > options.max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image is ", encoded.size(), " bytes, over the limit of ", options.max_bytes, " bytes"));
  }
  const char* type_name = vips_foreign_find_load_buffer(encoded.data(), encoded.size());
  if (type_name == nullptr) {
    TakeVipsError(nullptr);
    return absl::InvalidArgumentError(absl::StrCat("unrecognised image format (", encoded.size(),
                                                   " bytes starting ", HexPrefix(encoded),
                                                   "); supported: ", kSupportedFormats));
  }
  const LoaderInfo* loader = FindLoader(type_name);
  if (loader == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported image format (",
                                                   FormatFromLoader(type_name),
                                                   "); supported: ", kSupportedFormats));
  }
  const char* stage = "opening the image";  // what was under way when libvips failed
  try {
    DecodedImage out;
    ASSIGN_OR_RETURN(out.model_input, DecodeAndPreprocessWith(*loader, encoded, options, thumbnail,
                                                              &out.thumbnail_jpeg, &stage));
    return out;
  } catch (const vips::VError& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode ", loader->format,
                                                   " image (corrupt or truncated) while ", stage,
                                                   ": ", TakeVipsError(e.what())));
  } catch (const std::bad_alloc&) {
    TakeVipsError(nullptr);
    return absl::ResourceExhaustedError(
        absl::StrCat("out of memory decoding ", loader->format, " image"));
  }
}

absl::StatusOr<RgbImage> DecodeAndPreprocess(std::string_view encoded,
                                             const PreprocessOptions& options) {
  ASSIGN_OR_RETURN(DecodedImage decoded, DecodeWithThumbnail(encoded, options, nullptr));
  return std::move(decoded.model_input);
}

absl::StatusOr<DecodedImage> DecodeFileWithThumbnail(const std::string& path,
                                                     const PreprocessOptions& options,
                                                     const ThumbnailOptions* thumbnail) {
  absl::StatusOr<std::string> data = ReadFileToString(path, options.max_bytes);
  if (!data.ok()) return data.status();
  absl::StatusOr<DecodedImage> image = DecodeWithThumbnail(*data, options, thumbnail);
  if (!image.ok()) {
    return absl::Status(image.status().code(), absl::StrCat(path, ": ", image.status().message()));
  }
  return image;
}

absl::StatusOr<RgbImage> DecodeAndPreprocessFile(const std::string& path,
                                                 const PreprocessOptions& options) {
  ASSIGN_OR_RETURN(DecodedImage decoded, DecodeFileWithThumbnail(path, options, nullptr));
  return std::move(decoded.model_input);
}

absl::StatusOr<ResizeMode> ParseResizeMode(std::string_view name) {
  if (name == "shortest_edge") return ResizeMode::kShortestEdge;
  if (name == "squash") return ResizeMode::kSquash;
  return absl::InvalidArgumentError(absl::StrCat("unknown resize mode \"", ToAbsl(name),
                                                 "\"; expected \"shortest_edge\" or \"squash\""));
}

absl::StatusOr<CropMode> ParseCropMode(std::string_view name) {
  if (name == "center") return CropMode::kCenter;
  if (name == "none") return CropMode::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown crop mode \"", ToAbsl(name), "\"; expected \"center\" or \"none\""));
}

absl::StatusOr<Interpolation> ParseInterpolation(std::string_view name) {
  if (name == "bicubic") return Interpolation::kBicubic;
  if (name == "bilinear") return Interpolation::kBilinear;
  if (name == "nearest") return Interpolation::kNearest;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown interpolation \"", ToAbsl(name),
                   "\"; expected \"bicubic\", \"bilinear\" or \"nearest\""));
}

std::string_view ResizeModeName(ResizeMode mode) {
  return mode == ResizeMode::kSquash ? "squash" : "shortest_edge";
}

std::string_view CropModeName(CropMode mode) { return mode == CropMode::kNone ? "none" : "center"; }

std::string_view InterpolationName(Interpolation interpolation) {
  switch (interpolation) {
    case Interpolation::kBilinear:
      return "bilinear";
    case Interpolation::kNearest:
      return "nearest";
    case Interpolation::kBicubic:
      break;
  }
  return "bicubic";
}

ImageLibraryStats GetImageLibraryStats() {
  ImageLibraryStats stats;
  stats.tracked_bytes = static_cast<int64_t>(vips_tracked_get_mem());
  stats.tracked_allocations = vips_tracked_get_allocs();
  stats.peak_tracked_bytes = static_cast<int64_t>(vips_tracked_get_mem_highwater());
  return stats;
}

}  // namespace imagesearch::image
