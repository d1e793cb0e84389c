// Image decoding and model preprocessing: encoded bytes (JPEG, PNG, WebP, GIF,
// TIFF, HEIF/AVIF) -> an image_size x image_size, 8-bit, interleaved RGB
// image, resized and cropped as a model's model.json asks. Normalisation
// (mean/std) is the encoder's job, not this unit's.
//
// This is the only unit that includes libvips. What it guarantees:
//  - The header is read first and an image whose width*height exceeds
//    PreprocessOptions::max_pixels is refused before any pixel is decoded
//    (decompression bombs). Input over max_bytes is refused unread.
//  - Large JPEG and WebP images are shrunk while decoding (shrink-on-load),
//    always leaving at least a 2x reduction for the resampling kernel.
//  - Grey and palette images become RGB, 16-bit becomes 8-bit, alpha is
//    composited onto white, the EXIF orientation is applied, and only the
//    first frame/page of an animated or multi-page file is used. Embedded ICC
//    profiles are ignored (as PIL/torchvision pipelines do), except that CMYK
//    is converted to sRGB.
//  - Corrupt, truncated, empty and unknown input gives INVALID_ARGUMENT with
//    a message that says what was wrong. Decoder errors, including truncated
//    data, fail the call (libvips fail_on=error); nothing is half-decoded.
//  - The libvips operation cache is off, so memory stays bounded by the
//    images in flight.
//
// Memory: JPEG, PNG and TIFF are decoded as a stream, a few rows at a time;
// GIF, WebP (after shrink-on-load) and HEIF hold one whole frame, up to
// 4 * max_pixels bytes. libvips' own per-image warnings are not logged (set
// IMAGESEARCH_VIPS_WARNINGS=1 to see them); errors come back as Status.
//
// Thread-safety: every function here is thread-safe; any number of threads
// may decode at once. Each call uses a modest amount of libvips concurrency
// (1 worker unless the VIPS_CONCURRENCY environment variable says otherwise),
// because callers such as the indexer run their own pool of decode threads.
#ifndef IMAGESEARCH_LIBS_IMAGE_IMAGE_H_
#define IMAGESEARCH_LIBS_IMAGE_IMAGE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace imagesearch::image {

// model.json "resize": "shortest_edge" scales the shorter side to image_size
// and keeps the aspect ratio; "squash" scales both sides to image_size.
// (shortest_edge + center crop is done as: crop the centre square, then
// resize; the same pixels without a large intermediate image.)
enum class ResizeMode { kShortestEdge, kSquash };
// model.json "crop": "center" takes the central image_size square; "none" is
// only valid with kSquash (whose output is already square).
enum class CropMode { kCenter, kNone };
// model.json "interpolation": "bicubic" | "bilinear" | "nearest".
enum class Interpolation { kBicubic, kBilinear, kNearest };

struct PreprocessOptions {
  // Output side in pixels; the output is always image_size x image_size.
  // REQUIRES: 1 <= image_size <= 4096.
  int image_size = 224;
  ResizeMode resize = ResizeMode::kShortestEdge;
  CropMode crop = CropMode::kCenter;
  Interpolation interpolation = Interpolation::kBicubic;
  // Largest width*height accepted, checked from the header before decoding.
  int64_t max_pixels = 64'000'000;
  // Largest encoded input accepted, in bytes.
  int64_t max_bytes = 64 << 20;
};

// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC):
// pixels[(y * width + x) * 3 + c], c = 0 (R), 1 (G), 2 (B).
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
};

// Starts libvips once per process: turns its operation cache off, blocks
// loaders libvips marks untrusted, and limits per-call concurrency. Idempotent
// and thread-safe; every later call returns the first call's result. The
// decode functions call it themselves, but a binary should call it at start so
// that a broken libvips install fails early. Returns INTERNAL if libvips
// cannot start.
absl::Status InitImageLibrary();

// Returns OK if `options` can be used, else INVALID_ARGUMENT saying why.
absl::Status ValidatePreprocessOptions(const PreprocessOptions& options);

// Decodes `encoded` and returns it preprocessed as `options` says: exactly
// options.image_size square. INVALID_ARGUMENT for bad options or bad input
// (empty, too large, too many pixels, unknown or unsupported format, corrupt
// or truncated data), with the reason in the message.
absl::StatusOr<RgbImage> DecodeAndPreprocess(std::string_view encoded,
                                             const PreprocessOptions& options);

// ReadFileToString(path, options.max_bytes) (libs/common/file_util.h), then
// DecodeAndPreprocess. Error
// messages start with the path.
absl::StatusOr<RgbImage> DecodeAndPreprocessFile(const std::string& path,
                                                 const PreprocessOptions& options);

// A small preview of the whole image (not the model's crop), for people to
// look at: upright, RGB on white, at most max_side pixels on its long side
// (never enlarged), encoded as baseline JPEG without metadata.
struct ThumbnailOptions {
  int max_side = 128;  // REQUIRES: 8 <= max_side <= 1024.
  int quality = 80;    // JPEG quality, 1..100.
};

// INVALID_ARGUMENT naming the field out of its range.
absl::Status ValidateThumbnailOptions(const ThumbnailOptions& thumbnail);

struct DecodedImage {
  RgbImage model_input;        // Exactly what DecodeAndPreprocess returns.
  std::string thumbnail_jpeg;  // Empty unless a thumbnail was asked for.
};

// DecodeAndPreprocess, plus (when `thumbnail` is set) a thumbnail made from
// the same decode: the pixels are decoded once, held after colour
// conversion, and both outputs are made from them. Same errors as
// DecodeAndPreprocess, plus INVALID_ARGUMENT for bad thumbnail options.
absl::StatusOr<DecodedImage> DecodeWithThumbnail(std::string_view encoded,
                                                 const PreprocessOptions& options,
                                                 const ThumbnailOptions* thumbnail);
// ReadFileToString(path, options.max_bytes), then DecodeWithThumbnail. Error
// messages start with the path.
absl::StatusOr<DecodedImage> DecodeFileWithThumbnail(const std::string& path,
                                                     const PreprocessOptions& options,
                                                     const ThumbnailOptions* thumbnail);

// Parse model.json spellings; INVALID_ARGUMENT naming the accepted values.
absl::StatusOr<ResizeMode> ParseResizeMode(std::string_view name);
absl::StatusOr<CropMode> ParseCropMode(std::string_view name);
absl::StatusOr<Interpolation> ParseInterpolation(std::string_view name);

// The model.json spellings, inverse of the parsers.
std::string_view ResizeModeName(ResizeMode mode);
std::string_view CropModeName(CropMode mode);
std::string_view InterpolationName(Interpolation interpolation);

// libvips' own accounting of the pixel memory it has allocated, e.g. for a
// metrics gauge. With the cache off both return to their idle level once no
// decode is in flight.
struct ImageLibraryStats {
  int64_t tracked_bytes = 0;        // bytes currently allocated
  int64_t tracked_allocations = 0;  // allocations currently live
  int64_t peak_tracked_bytes = 0;   // high-water mark of tracked_bytes
};
ImageLibraryStats GetImageLibraryStats();

}  // namespace imagesearch::image

#endif  // IMAGESEARCH_LIBS_IMAGE_IMAGE_H_
