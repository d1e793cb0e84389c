// libFuzzer target: image decoding and preprocessing (libs/image/image.h).
//
// Input: one option byte, then the encoded image. The option byte picks the
// output size, resize/crop/interpolation and whether a thumbnail is made from
// the same decode (DecodeWithThumbnail) or not (DecodeAndPreprocess). Pixel
// and byte limits are kept small so one input costs at most a few ms.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "libs/image/image.h"
#include "tests/fuzz/fuzz_util.h"

using imagesearch::image::CropMode;
using imagesearch::image::Interpolation;
using imagesearch::image::PreprocessOptions;
using imagesearch::image::ResizeMode;
using imagesearch::image::ThumbnailOptions;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  setenv("VIPS_CONCURRENCY", "1", 0);
  FUZZ_CHECK(imagesearch::image::InitImageLibrary().ok());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t opt = data[0];
  std::string_view encoded(reinterpret_cast<const char*>(data) + 1, size - 1);

  PreprocessOptions o;
  static constexpr int kSizes[] = {1, 3, 7, 16};
  o.image_size = kSizes[opt & 3];
  o.resize = (opt & 4) ? ResizeMode::kSquash : ResizeMode::kShortestEdge;
  // kNone is only valid with kSquash; other pairs must be refused cleanly.
  o.crop = (opt & 8) ? CropMode::kNone : CropMode::kCenter;
  static constexpr Interpolation kInterp[] = {Interpolation::kBicubic, Interpolation::kBilinear,
                                              Interpolation::kNearest, Interpolation::kBicubic};
  o.interpolation = kInterp[(opt >> 4) & 3];
  o.max_pixels = 1 << 20;  // Headers may claim anything; this bounds the work.
  o.max_bytes = 1 << 20;
  const bool options_ok = imagesearch::image::ValidatePreprocessOptions(o).ok();

  if (opt & 0x40) {
    ThumbnailOptions t;
    t.max_side = (opt & 0x80) ? 8 : 32;
    t.quality = 50;
    auto r = imagesearch::image::DecodeWithThumbnail(encoded, o, &t);
    if (r.ok()) {
      FUZZ_CHECK(options_ok);
      FUZZ_CHECK(r->model_input.width == o.image_size && r->model_input.height == o.image_size);
      FUZZ_CHECK(r->model_input.pixels.size() ==
                 static_cast<size_t>(o.image_size) * o.image_size * 3);
      FUZZ_CHECK(r->thumbnail_jpeg.size() > 2 &&
                 static_cast<uint8_t>(r->thumbnail_jpeg[0]) == 0xFF &&
                 static_cast<uint8_t>(r->thumbnail_jpeg[1]) == 0xD8);
    } else {
      FUZZ_CHECK(absl::IsInvalidArgument(r.status()));
    }
  } else {
    auto r = imagesearch::image::DecodeAndPreprocess(encoded, o);
    if (r.ok()) {
      FUZZ_CHECK(options_ok);
      FUZZ_CHECK(r->width == o.image_size && r->height == o.image_size);
      FUZZ_CHECK(r->pixels.size() == static_cast<size_t>(o.image_size) * o.image_size * 3);
    } else {
      FUZZ_CHECK(absl::IsInvalidArgument(r.status()));
      FUZZ_CHECK(!r.status().message().empty());
    }
  }
  return 0;
}
