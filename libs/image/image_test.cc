#include "libs/image/image.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"

namespace imagesearch::image {
namespace {

// Expected 4x4 cell means, computed with PIL/numpy from the source files by
// tests/data/images/compute_expectations.py (independent of libvips). Each
// cell is the mean RGB of the source region that a correct resize + crop maps
// onto that cell of the output.
// rocket.jpg (640x427), shortest_edge + center crop.
constexpr double kRocketCenterCells[16][3] = {
    {31.60, 47.15, 78.36},  {32.38, 47.23, 78.01},  {27.79, 42.77, 72.26},  {22.47, 35.87, 61.78},
    {49.21, 67.77, 103.44}, {51.21, 66.76, 99.52},  {46.80, 59.96, 88.33},  {36.01, 50.34, 79.78},
    {68.92, 87.33, 121.39}, {76.07, 90.03, 118.82}, {70.29, 80.57, 103.00}, {46.34, 58.34, 84.06},
    {101.93, 95.34, 95.03}, {96.35, 90.27, 92.36},  {111.30, 96.35, 86.55}, {63.56, 63.45, 71.38},
};
// chelsea.png (451x300), shortest_edge + center crop.
constexpr double kChelseaCenterCells[16][3] = {
    {151.27, 111.70, 83.39},  {136.42, 97.97, 68.41},  {126.30, 91.24, 63.91},
    {154.84, 115.11, 94.95},  {149.63, 107.42, 72.59}, {110.77, 81.37, 51.61},
    {169.64, 127.80, 94.78},  {141.84, 111.81, 86.19}, {151.65, 106.26, 77.12},
    {152.08, 102.25, 60.02},  {159.30, 106.12, 59.03}, {146.10, 112.40, 85.99},
    {169.98, 133.04, 113.84}, {161.32, 117.22, 86.31}, {131.83, 90.60, 69.52},
    {158.97, 130.13, 108.13},
};
// coffee.png (600x400), squash, no crop: the whole image.
constexpr double kCoffeeSquashCells[16][3] = {
    {96.33, 47.90, 21.89},   {198.48, 133.23, 91.33}, {208.81, 144.12, 100.91},
    {199.88, 129.42, 82.38}, {174.43, 75.01, 35.78},  {198.43, 116.42, 67.41},
    {201.78, 121.57, 74.71}, {193.76, 118.15, 70.95}, {174.05, 85.49, 49.45},
    {97.97, 24.84, 13.05},   {126.97, 50.97, 30.51},  {165.66, 78.93, 39.26},
    {173.63, 119.80, 84.66}, {73.24, 16.42, 8.04},    {96.92, 30.10, 14.25},
    {156.76, 80.34, 39.19},
};
// camera.png (512x512, 8-bit grey), shortest_edge + center crop.
constexpr double kCameraCells[16] = {
    206.68, 146.84, 197.66, 199.73, 85.51, 63.72,  138.88, 179.37,
    18.29,  76.06,  136.66, 155.23, 36.22, 132.16, 146.49, 145.48,
};

std::string ImagePath(const std::string& name) {
  return std::string(IMAGESEARCH_TESTDATA_DIR) + "/images/" + name;
}

std::string ReadImage(const std::string& name) {
  absl::StatusOr<std::string> data = ReadFileToString(ImagePath(name), int64_t{1} << 30);
  INFO(data.status().ToString());
  REQUIRE(data.ok());
  return *std::move(data);
}

PreprocessOptions Options(int size, ResizeMode resize, CropMode crop,
                          Interpolation interpolation = Interpolation::kBicubic) {
  PreprocessOptions options;
  options.image_size = size;
  options.resize = resize;
  options.crop = crop;
  options.interpolation = interpolation;
  return options;
}

PreprocessOptions Squash(int size, Interpolation interpolation = Interpolation::kBicubic) {
  return Options(size, ResizeMode::kSquash, CropMode::kNone, interpolation);
}

RgbImage Decode(const std::string& name, const PreprocessOptions& options) {
  absl::StatusOr<RgbImage> image = DecodeAndPreprocessFile(ImagePath(name), options);
  INFO(name << ": " << image.status().ToString());
  REQUIRE(image.ok());
  REQUIRE(image->width == options.image_size);
  REQUIRE(image->height == options.image_size);
  REQUIRE(image->pixels.size() == static_cast<size_t>(options.image_size) * options.image_size * 3);
  return *std::move(image);
}

// Mean of each channel over cell (row, col) of a grid x grid split.
std::vector<double> CellMean(const RgbImage& image, int grid, int row, int col) {
  const int x0 = col * image.width / grid, x1 = (col + 1) * image.width / grid;
  const int y0 = row * image.height / grid, y1 = (row + 1) * image.height / grid;
  std::vector<double> sum(3, 0.0);
  for (int y = y0; y < y1; ++y) {
    for (int x = x0; x < x1; ++x) {
      for (int c = 0; c < 3; ++c)
        sum[c] += image.pixels[(static_cast<size_t>(y) * image.width + x) * 3 + c];
    }
  }
  for (double& s : sum) s /= static_cast<double>((x1 - x0) * (y1 - y0));
  return sum;
}

// Largest |output cell mean - expected cell mean| over all cells and channels.
double MaxCellError(const RgbImage& image, const double (&expected)[16][3]) {
  double worst = 0;
  for (int i = 0; i < 16; ++i) {
    const std::vector<double> got = CellMean(image, 4, i / 4, i % 4);
    for (int c = 0; c < 3; ++c) worst = std::max(worst, std::abs(got[c] - expected[i][c]));
  }
  return worst;
}

double MeanAbsDiff(const RgbImage& a, const RgbImage& b) {
  REQUIRE(a.pixels.size() == b.pixels.size());
  double sum = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) sum += std::abs(int{a.pixels[i]} - int{b.pixels[i]});
  return sum / static_cast<double>(a.pixels.size());
}

RgbImage Rotate90Clockwise(const RgbImage& in) {
  RgbImage out{in.height, in.width, std::vector<uint8_t>(in.pixels.size())};
  for (int y = 0; y < in.height; ++y) {
    for (int x = 0; x < in.width; ++x) {
      // Source (x, y) lands at (height - 1 - y, x).
      const size_t from = (static_cast<size_t>(y) * in.width + x) * 3;
      const size_t to = (static_cast<size_t>(x) * out.width + (in.height - 1 - y)) * 3;
      for (int c = 0; c < 3; ++c) out.pixels[to + c] = in.pixels[from + c];
    }
  }
  return out;
}

size_t UniqueColours(const RgbImage& image) {
  std::set<uint32_t> colours;
  for (size_t i = 0; i < image.pixels.size(); i += 3) {
    colours.insert(uint32_t{image.pixels[i]} << 16 | uint32_t{image.pixels[i + 1]} << 8 |
                   image.pixels[i + 2]);
  }
  return colours.size();
}

void RequireInvalid(const absl::StatusOr<RgbImage>& result, const std::string& needle) {
  INFO("status: " << result.status().ToString() << "\nexpected to contain: " << needle);
  REQUIRE(absl::IsInvalidArgument(result.status()));
  REQUIRE(std::string(result.status().message()).find(needle) != std::string::npos);
}

TEST_CASE("InitImageLibrary is idempotent", "[image]") {
  REQUIRE(InitImageLibrary().ok());
  REQUIRE(InitImageLibrary().ok());
}

TEST_CASE("every supported format gives exactly image_size x image_size", "[image]") {
  const char* files[] = {
      "rocket.jpg",
      "chelsea.jpg",
      "chelsea_exif6.jpg",
      "chelsea.png",
      "camera.png",
      "logo.png",
      "logo_alpha.png",
      "astronaut.png",
      "motorcycle_left.png",
      "chelsea_small16.png",
      "chelsea_small_palette.png",
      "chelsea.webp",
      "coffee_chelsea.gif",
      "no_time_for_that_tiny.gif",
      "coffee_chelsea.tif",
      "chelsea_small.avif",
      "chelsea_small_cmyk.jpg",
      "logo_alpha_small16.png",
      "logo_alpha_small_grey.png",
  };
  for (const char* file : files) {
    for (int size : {224, 37, 301}) {
      SECTION(std::string(file) + " at " + std::to_string(size)) {
        Decode(file, Options(size, ResizeMode::kShortestEdge, CropMode::kCenter));
        Decode(file, Squash(size, Interpolation::kBilinear));
        Decode(file,
               Options(size, ResizeMode::kSquash, CropMode::kCenter, Interpolation::kNearest));
      }
    }
  }
}

TEST_CASE("JPEG: resize + center crop keep the right region", "[image][jpeg]") {
  // 224 needs no shrink-on-load (427/224 < 4); 48 decodes at 1/4 scale
  // (427/48 = 8.9) and 96 at 1/2 (4.4).
  for (int size : {224, 96, 48}) {
    SECTION("size " + std::to_string(size)) {
      const RgbImage out =
          Decode("rocket.jpg", Options(size, ResizeMode::kShortestEdge, CropMode::kCenter));
      CHECK(MaxCellError(out, kRocketCenterCells) < 3.0);
    }
  }
}

TEST_CASE("PNG: resize + center crop keep the right region", "[image][png]") {
  for (Interpolation interpolation :
       {Interpolation::kBicubic, Interpolation::kBilinear, Interpolation::kNearest}) {
    SECTION(std::string(InterpolationName(interpolation))) {
      const RgbImage out = Decode(
          "chelsea.png", Options(224, ResizeMode::kShortestEdge, CropMode::kCenter, interpolation));
      CHECK(MaxCellError(out, kChelseaCenterCells) < 2.0);
    }
  }
  SECTION("a left-aligned crop would not pass") {
    // Sanity check of the test itself: the expectation is sensitive to where
    // the crop is taken. chelsea is 451x300, so the centre is 75 px in.
    const RgbImage squashed = Decode("chelsea.png", Squash(224));
    CHECK(MaxCellError(squashed, kChelseaCenterCells) > 10.0);
  }
}

TEST_CASE("squash keeps the whole image", "[image][png]") {
  const RgbImage none = Decode("coffee.png", Squash(224));
  CHECK(MaxCellError(none, kCoffeeSquashCells) < 1.0);
  // A square output needs no crop, so "center" changes nothing.
  const RgbImage center =
      Decode("coffee.png", Options(224, ResizeMode::kSquash, CropMode::kCenter));
  CHECK(none.pixels == center.pixels);
}

TEST_CASE("enlarging matches PIL's resize pixel for pixel", "[image][png]") {
  // chelsea_small.png is 150x100: its centre square is enlarged 1.28x. The
  // references are PIL's (tests/data/images/compute_expectations.py), which
  // rounds to 8 bits between its two passes; ours keeps floats, so a pixel may
  // differ by a level or two, never more, and the mean difference is tiny.
  const std::string small = ReadImage("chelsea_small.png");
  struct Case {
    const char* name;
    Interpolation interpolation;
    int max_diff;
    double max_mean_diff;
  };
  for (const Case& c : {Case{"bicubic", Interpolation::kBicubic, 2, 0.3},
                        Case{"bilinear", Interpolation::kBilinear, 2, 0.3},
                        Case{"nearest", Interpolation::kNearest, 0, 0.0}}) {
    INFO(c.name);
    absl::StatusOr<RgbImage> want = DecodeAndPreprocess(
        ReadImage(absl::StrCat("chelsea_small_enlarged_128_", c.name, ".png")), Squash(128));
    absl::StatusOr<RgbImage> got = DecodeAndPreprocess(
        small, Options(128, ResizeMode::kShortestEdge, CropMode::kCenter, c.interpolation));
    REQUIRE(want.ok());
    REQUIRE(got.ok());
    REQUIRE(got->pixels.size() == want->pixels.size());
    int max_diff = 0;
    double sum = 0;
    for (size_t i = 0; i < got->pixels.size(); ++i) {
      const int d = std::abs(int{got->pixels[i]} - int{want->pixels[i]});
      max_diff = std::max(max_diff, d);
      sum += d;
    }
    const double mean = sum / static_cast<double>(got->pixels.size());
    UNSCOPED_INFO("max diff " << max_diff << ", mean " << mean);
    CHECK(max_diff <= c.max_diff);
    CHECK(mean <= c.max_mean_diff);
  }
}

TEST_CASE("a long, thin image never becomes a huge intermediate", "[image][png]") {
  // chelsea_row_strip.png is one row of chelsea.png repeated 5 times: 2255x1.
  // Resizing it to shortest edge 224 before cropping would make a 505120x224
  // image (340 MB); cropping the centre first keeps everything tiny.
  const auto start = std::chrono::steady_clock::now();
  for (Interpolation interpolation :
       {Interpolation::kBicubic, Interpolation::kBilinear, Interpolation::kNearest}) {
    Decode("chelsea_row_strip.png",
           Options(224, ResizeMode::kShortestEdge, CropMode::kCenter, interpolation));
    Decode("chelsea_row_strip.png", Squash(224, interpolation));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 2.0);
  CHECK(GetImageLibraryStats().peak_tracked_bytes < (100 << 20));
}

TEST_CASE("grey PNG expands to R == G == B", "[image][png]") {
  const RgbImage out =
      Decode("camera.png", Options(128, ResizeMode::kShortestEdge, CropMode::kCenter));
  for (size_t i = 0; i < out.pixels.size(); i += 3) {
    REQUIRE(out.pixels[i] == out.pixels[i + 1]);
    REQUIRE(out.pixels[i] == out.pixels[i + 2]);
  }
  double worst = 0;
  for (int i = 0; i < 16; ++i) {
    worst = std::max(worst, std::abs(CellMean(out, 4, i / 4, i % 4)[0] - kCameraCells[i]));
  }
  CHECK(worst < 1.5);
}

TEST_CASE("16-bit PNG becomes the same 8-bit image", "[image][png]") {
  // chelsea_small16.png is chelsea_small.png scaled by 257 (v * 257 >> 8 == v).
  const RgbImage eight = Decode("chelsea_small.png", Squash(64));
  const RgbImage sixteen = Decode("chelsea_small16.png", Squash(64));
  CHECK(eight.pixels == sixteen.pixels);
}

TEST_CASE("palette PNG expands to RGB", "[image][png]") {
  const RgbImage rgb = Decode("chelsea_small.png", Squash(64));
  const RgbImage palette = Decode("chelsea_small_palette.png", Squash(64));
  CHECK(MeanAbsDiff(rgb, palette) < 4.0);
  // Nearest-neighbour only copies source pixels, so it cannot invent colours
  // beyond the 256-entry palette; bicubic blends them into many more.
  CHECK(UniqueColours(Decode("chelsea_small_palette.png", Squash(200, Interpolation::kNearest))) <=
        256);
  CHECK(UniqueColours(Decode("chelsea_small_palette.png", Squash(200, Interpolation::kBicubic))) >
        1000);
}

TEST_CASE("alpha is composited onto white", "[image][png]") {
  // logo_alpha.png is logo.png (opaque) with: transparent black (0,0,0,0)
  // outside the circle of radius 240 around (249.5, 249.5); inside it alpha
  // 255 for x < 250 and 128 for x >= 250. At 500x500 squash nothing is
  // resampled, so every pixel can be checked.
  const RgbImage opaque = Decode("logo.png", Squash(500));
  const RgbImage alpha = Decode("logo_alpha.png", Squash(500));
  int mismatches = 0;
  for (int y = 0; y < 500; ++y) {
    for (int x = 0; x < 500; ++x) {
      const bool outside = (x - 249.5) * (x - 249.5) + (y - 249.5) * (y - 249.5) > 240.0 * 240.0;
      for (int c = 0; c < 3; ++c) {
        const size_t i = (static_cast<size_t>(y) * 500 + x) * 3 + c;
        double expected = opaque.pixels[i];
        if (outside) {
          expected = 255;
        } else if (x >= 250) {
          expected = (opaque.pixels[i] * 128.0 + 255.0 * 127.0) / 255.0;
        }
        if (std::abs(alpha.pixels[i] - expected) > 1.0) ++mismatches;
      }
    }
  }
  CHECK(mismatches == 0);
  // The corner is transparent black in the file: white, not black, comes out.
  CHECK(alpha.pixels[0] == 255);
  CHECK(alpha.pixels[1] == 255);
  CHECK(alpha.pixels[2] == 255);
}

TEST_CASE("alpha is composited onto white in 16-bit and grey images too", "[image][png]") {
  // 100x100 nearest-neighbour reductions of logo_alpha.png: 8-bit RGBA, the
  // same in 16 bits per sample, and converted to grey + alpha.
  const RgbImage rgba = Decode("logo_alpha_small.png", Squash(100));
  const RgbImage rgba16 = Decode("logo_alpha_small16.png", Squash(100));
  int worst = 0;
  for (size_t i = 0; i < rgba.pixels.size(); ++i) {
    worst = std::max(worst, std::abs(int{rgba.pixels[i]} - int{rgba16.pixels[i]}));
  }
  CHECK(worst <= 1);
  const RgbImage grey = Decode("logo_alpha_small_grey.png", Squash(100));
  double sum = 0;
  for (size_t i = 0; i < grey.pixels.size(); i += 3) {
    REQUIRE(grey.pixels[i] == grey.pixels[i + 1]);
    REQUIRE(grey.pixels[i] == grey.pixels[i + 2]);
    sum += grey.pixels[i];
  }
  CHECK(sum / static_cast<double>(grey.pixels.size() / 3) < 230);  // the logo is still there
  for (const RgbImage* image : {&rgba, &rgba16, &grey}) {
    // Corners are transparent black in the files.
    for (size_t corner :
         {size_t{0}, size_t{99} * 3, size_t{99 * 100} * 3, size_t{100 * 100 - 1} * 3}) {
      for (int c = 0; c < 3; ++c) CHECK(int{image->pixels[corner + c]} == 255);
    }
  }
}

TEST_CASE("CMYK JPEG becomes RGB", "[image][jpeg]") {
  // chelsea_small_cmyk.jpg is chelsea_small.png converted to CMYK by libvips.
  // The sRGB -> CMYK -> sRGB round trip through libvips' default profiles
  // alone moves pixels by 6 on average; a wrong conversion (e.g. inverted
  // Adobe CMYK) moves them by far more.
  CHECK(MeanAbsDiff(Decode("chelsea_small.png", Squash(64)),
                    Decode("chelsea_small_cmyk.jpg", Squash(64))) < 8.0);
}

TEST_CASE("EXIF orientation is applied", "[image][jpeg]") {
  // chelsea_exif6.jpg stores chelsea rotated 90 degrees counter-clockwise
  // (300x451) with Orientation = 6; chelsea.jpg is the same photo upright.
  for (const PreprocessOptions& options :
       {Squash(224), Options(224, ResizeMode::kShortestEdge, CropMode::kCenter)}) {
    const RgbImage upright = Decode("chelsea.jpg", options);
    const RgbImage rotated = Decode("chelsea_exif6.jpg", options);
    CHECK(MeanAbsDiff(upright, rotated) < 3.0);
    // Sanity check of the test: the photo is not rotation-symmetric.
    CHECK(MeanAbsDiff(upright, Rotate90Clockwise(upright)) > 20.0);
  }
}

TEST_CASE("WebP and AVIF decode to the same picture", "[image][webp][heif]") {
  CHECK(MeanAbsDiff(Decode("chelsea.png", Squash(128)), Decode("chelsea.webp", Squash(128))) < 3.0);
  CHECK(MeanAbsDiff(Decode("chelsea_small.png", Squash(64)),
                    Decode("chelsea_small.avif", Squash(64))) < 6.0);
}

TEST_CASE("GIF and TIFF give their first frame", "[image][gif][tiff]") {
  // Both files hold two 150x100 frames: coffee, then chelsea.
  const RgbImage coffee = Decode("coffee.png", Squash(64));
  const RgbImage chelsea = Decode("chelsea.png", Squash(64));
  CHECK(MeanAbsDiff(coffee, chelsea) > 30.0);
  const RgbImage gif = Decode("coffee_chelsea.gif", Squash(64));
  CHECK(MeanAbsDiff(gif, coffee) < 8.0);  // GIF is quantised to 256 colours
  const RgbImage tiff = Decode("coffee_chelsea.tif", Squash(64));
  CHECK(MeanAbsDiff(tiff, coffee) < 3.0);
}

TEST_CASE("truncated and corrupt input is refused", "[image][errors]") {
  SECTION("truncated.jpg") {
    RequireInvalid(DecodeAndPreprocess(ReadImage("truncated.jpg"), PreprocessOptions()),
                   "cannot decode jpeg image");
  }
  SECTION("truncated PNG") {
    const std::string png = ReadImage("chelsea.png");
    RequireInvalid(DecodeAndPreprocess(png.substr(0, png.size() * 2 / 5), PreprocessOptions()),
                   "cannot decode png image");
  }
  SECTION("truncated JPEG, also when shrinking on load") {
    const std::string jpeg = ReadImage("rocket.jpg");
    const std::string cut = jpeg.substr(0, jpeg.size() * 3 / 5);
    RequireInvalid(DecodeAndPreprocess(cut, PreprocessOptions()), "cannot decode jpeg image");
    RequireInvalid(DecodeAndPreprocess(cut, Squash(32)), "cannot decode jpeg image");
  }
  SECTION("truncated WebP, GIF and TIFF") {
    for (const char* name : {"chelsea.webp", "coffee_chelsea.gif", "coffee_chelsea.tif"}) {
      const std::string data = ReadImage(name);
      const absl::StatusOr<RgbImage> result =
          DecodeAndPreprocess(data.substr(0, data.size() / 3), PreprocessOptions());
      INFO(name << ": " << result.status().ToString());
      CHECK(absl::IsInvalidArgument(result.status()));
    }
  }
  SECTION("random bytes") {
    std::mt19937 rng(42);
    std::string noise(4096, '\0');
    for (char& c : noise) c = static_cast<char>(rng() & 0xff);
    RequireInvalid(DecodeAndPreprocess(noise, PreprocessOptions()), "unrecognised image format");
  }
  SECTION("JPEG signature followed by garbage") {
    std::mt19937 rng(7);
    std::string data = "\xff\xd8\xff\xe0";
    for (int i = 0; i < 2000; ++i) data.push_back(static_cast<char>(rng() & 0xff));
    RequireInvalid(DecodeAndPreprocess(data, PreprocessOptions()), "cannot decode jpeg image");
  }
  SECTION("empty") { RequireInvalid(DecodeAndPreprocess("", PreprocessOptions()), "empty"); }
  SECTION("a real TIFF that libvips cannot read") {
    // scikit-image's multipage_rgb.tif stores 3 samples in an unusual layout.
    RequireInvalid(DecodeAndPreprocess(ReadImage("multipage_rgb.tif"), PreprocessOptions()),
                   "cannot decode tiff image");
  }
  SECTION("formats we do not accept") {
    // libvips would rasterise SVG (and, through ImageMagick, PPM and much
    // more); we refuse them.
    RequireInvalid(
        DecodeAndPreprocess(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"></svg>",
            PreprocessOptions()),
        "unsupported image format (svg)");
    RequireInvalid(DecodeAndPreprocess("P6\n2 2\n255\n012345678901", PreprocessOptions()),
                   "unsupported image format");
  }
}

TEST_CASE("damaged files never crash and fail cleanly", "[image][errors]") {
  // Deterministic damage to real files of every format: flipped bytes,
  // overwritten runs and cuts. Each either decodes to the right size (some
  // damage lands in metadata or is invisible to the decoder) or is refused with
  // INVALID_ARGUMENT; nothing else is acceptable.
  std::mt19937 rng(1234);
  int refused = 0;
  for (const char* name : {"chelsea_small.png", "chelsea_small_cmyk.jpg", "chelsea.webp",
                           "coffee_chelsea.gif", "coffee_chelsea.tif", "chelsea_small.avif"}) {
    const std::string original = ReadImage(name);
    for (int trial = 0; trial < 20; ++trial) {
      std::string data = original;
      const size_t at = 16 + rng() % (data.size() - 32);
      switch (trial % 3) {
        case 0:
          for (int k = 0; k < 8; ++k)
            data[16 + rng() % (data.size() - 16)] ^= static_cast<char>(1 + rng() % 255);
          break;
        case 1:
          for (size_t k = at; k < std::min(data.size(), at + 64); ++k)
            data[k] = static_cast<char>(rng() & 0xff);
          break;
        default:
          data.resize(at);
          break;
      }
      const absl::StatusOr<RgbImage> result = DecodeAndPreprocess(data, Squash(32));
      INFO(name << " trial " << trial << ": " << result.status().ToString());
      if (result.ok()) {
        REQUIRE(result->pixels.size() == 32 * 32 * 3);
      } else {
        REQUIRE(absl::IsInvalidArgument(result.status()));
        ++refused;
      }
    }
  }
  CHECK(refused > 40);  // most damage is detected
}

TEST_CASE("decompression bombs are refused from the header", "[image][errors]") {
  SECTION("PNG whose header claims 50000x50000") {
    const std::string bomb = ReadImage("bomb_50000x50000.png");
    REQUIRE(bomb.size() < 1000);
    const auto start = std::chrono::steady_clock::now();
    const absl::StatusOr<RgbImage> result = DecodeAndPreprocess(bomb, PreprocessOptions());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    RequireInvalid(result, "50000x50000");
    RequireInvalid(result, "over the limit of 64000000 pixels");
    CHECK(seconds < 1.0);
  }
  SECTION("real JPEG whose frame header is patched to 50000x50000") {
    std::string jpeg = ReadImage("rocket.jpg");
    const size_t sof = jpeg.find("\xff\xc0");
    REQUIRE(sof != std::string::npos);
    // SOF0: marker, length (2), precision (1), height (2), width (2).
    jpeg[sof + 5] = static_cast<char>(50000 >> 8);
    jpeg[sof + 6] = static_cast<char>(50000 & 0xff);
    jpeg[sof + 7] = static_cast<char>(50000 >> 8);
    jpeg[sof + 8] = static_cast<char>(50000 & 0xff);
    const auto start = std::chrono::steady_clock::now();
    const absl::StatusOr<RgbImage> result = DecodeAndPreprocess(jpeg, PreprocessOptions());
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    RequireInvalid(result, "jpeg image is 50000x50000");
    CHECK(seconds < 1.0);
  }
  SECTION("real WebP whose canvas is patched to 50000x50000") {
    // libvips' WebP loader allocates the whole frame while reading the header
    // (4 bytes a pixel: 10 GB here), so the size must be checked before it.
    std::string webp = ReadImage("chelsea.webp");
    REQUIRE(webp.substr(12, 4) == "VP8X");
    for (size_t at : {24, 27}) {  // 24-bit (width - 1), (height - 1)
      webp[at] = static_cast<char>(49999 & 0xff);
      webp[at + 1] = static_cast<char>((49999 >> 8) & 0xff);
      webp[at + 2] = static_cast<char>(49999 >> 16);
    }
    const int64_t peak_before = GetImageLibraryStats().peak_tracked_bytes;
    RequireInvalid(DecodeAndPreprocess(webp, PreprocessOptions()), "webp image is 50000x50000");
    CHECK(GetImageLibraryStats().peak_tracked_bytes == peak_before);
  }
  SECTION("a large WebP is shrunk while decoding, not allocated in full") {
    // chelsea.webp at 451x300 needs no shrink; ask for a 16x16 output so that
    // it is decoded at 1/8 scale (300 / 16 >= 16), then compare with the PNG.
    CHECK(MeanAbsDiff(Decode("chelsea.webp", Squash(16)), Decode("chelsea.png", Squash(16))) < 4.0);
  }
  SECTION("the limit is the caller's") {
    PreprocessOptions options;
    options.max_pixels = 451 * 300 - 1;
    RequireInvalid(DecodeAndPreprocessFile(ImagePath("chelsea.png"), options),
                   "png image is 451x300 = 135300 pixels, over the limit of 135299 pixels");
    options.max_pixels = 451 * 300;
    Decode("chelsea.png", options);
  }
}

TEST_CASE("size limits and bad options", "[image][errors]") {
  PreprocessOptions options;
  options.max_bytes = 1000;
  RequireInvalid(DecodeAndPreprocess(ReadImage("rocket.jpg"), options),
                 "over the limit of 1000 bytes");
  RequireInvalid(DecodeAndPreprocessFile(ImagePath("rocket.jpg"), options),
                 "over the limit of 1000 bytes");
  RequireInvalid(DecodeAndPreprocessFile(ImagePath("rocket.jpg"),
                                         Options(0, ResizeMode::kSquash, CropMode::kNone)),
                 "image_size");
  RequireInvalid(DecodeAndPreprocessFile(ImagePath("rocket.jpg"),
                                         Options(224, ResizeMode::kShortestEdge, CropMode::kNone)),
                 "squash");
}

TEST_CASE("file errors", "[image][errors]") {
  const absl::StatusOr<RgbImage> missing =
      DecodeAndPreprocessFile(ImagePath("no_such_file.jpg"), PreprocessOptions());
  CHECK(absl::IsNotFound(missing.status()));
  CHECK(std::string(missing.status().message()).find("no_such_file.jpg") != std::string::npos);
  CHECK(absl::IsInvalidArgument(
      DecodeAndPreprocessFile(ImagePath(""), PreprocessOptions()).status()));  // a directory
}

TEST_CASE("model.json spellings round-trip", "[image]") {
  for (ResizeMode mode : {ResizeMode::kShortestEdge, ResizeMode::kSquash}) {
    CHECK(*ParseResizeMode(ResizeModeName(mode)) == mode);
  }
  for (CropMode mode : {CropMode::kCenter, CropMode::kNone}) {
    CHECK(*ParseCropMode(CropModeName(mode)) == mode);
  }
  for (Interpolation mode :
       {Interpolation::kBicubic, Interpolation::kBilinear, Interpolation::kNearest}) {
    CHECK(*ParseInterpolation(InterpolationName(mode)) == mode);
  }
  CHECK(absl::IsInvalidArgument(ParseResizeMode("shortest").status()));
  CHECK(absl::IsInvalidArgument(ParseCropMode("centre").status()));
  CHECK(absl::IsInvalidArgument(ParseInterpolation("lanczos").status()));
  CHECK(std::string(ParseInterpolation("").status().message()).find("bicubic") !=
        std::string::npos);
}

// Width and height from a baseline/progressive JPEG's SOF marker, or {0, 0}.
std::pair<int, int> JpegSize(const std::string& jpeg) {
  auto byte = [&jpeg](size_t i) { return static_cast<int>(static_cast<uint8_t>(jpeg[i])); };
  if (jpeg.size() < 4 || byte(0) != 0xFF || byte(1) != 0xD8) return {0, 0};
  size_t i = 2;
  while (i + 9 < jpeg.size()) {
    if (byte(i) != 0xFF) return {0, 0};
    const int marker = byte(i + 1);
    const size_t length = static_cast<size_t>(byte(i + 2) << 8 | byte(i + 3));
    if (marker == 0xC0 || marker == 0xC1 || marker == 0xC2) {
      return {byte(i + 7) << 8 | byte(i + 8), byte(i + 5) << 8 | byte(i + 6)};
    }
    i += 2 + length;
  }
  return {0, 0};
}

DecodedImage DecodeWithThumb(const std::string& name, const ThumbnailOptions& thumb,
                             const PreprocessOptions& options = PreprocessOptions()) {
  absl::StatusOr<DecodedImage> d = DecodeFileWithThumbnail(ImagePath(name), options, &thumb);
  INFO(name << ": " << d.status().ToString());
  REQUIRE(d.ok());
  return *std::move(d);
}

TEST_CASE("thumbnails: the whole image, upright, never enlarged, as JPEG", "[image][thumbnail]") {
  const ThumbnailOptions thumb;  // 128 px
  struct Case {
    const char* name;
    int width, height;
  };
  for (const Case& c :
       {Case{"chelsea.jpg", 128, 85}, Case{"chelsea_exif6.jpg", 128, 85},
        Case{"chelsea_small.png", 128, 85}, Case{"camera.png", 128, 128},
        Case{"chelsea_row_strip.png", 128, 1}, Case{"no_time_for_that_tiny.gif", 14, 25},
        Case{"logo_alpha_small.png", 0, 0}}) {
    const DecodedImage d = DecodeWithThumb(c.name, thumb);
    INFO(c.name);
    REQUIRE(!d.thumbnail_jpeg.empty());
    const auto [w, h] = JpegSize(d.thumbnail_jpeg);
    if (c.width != 0) {
      CHECK(w == c.width);
      CHECK(h == c.height);
    }
    CHECK(std::max(w, h) <= 128);
    CHECK(d.thumbnail_jpeg.size() < 16 * 1024);
    // The model input is exactly what DecodeAndPreprocess gives.
    const RgbImage plain = Decode(c.name, PreprocessOptions());
    CHECK(d.model_input.pixels == plain.pixels);
  }
  // Upright: the EXIF-rotated file's thumbnail looks like the upright one's.
  const PreprocessOptions look = Squash(64);
  auto as_pixels = [&look](const std::string& jpeg) {
    absl::StatusOr<RgbImage> img = DecodeAndPreprocess(jpeg, look);
    REQUIRE(img.ok());
    return *std::move(img);
  };
  const RgbImage upright = as_pixels(DecodeWithThumb("chelsea.jpg", thumb).thumbnail_jpeg);
  const RgbImage rotated = as_pixels(DecodeWithThumb("chelsea_exif6.jpg", thumb).thumbnail_jpeg);
  CHECK(MeanAbsDiff(upright, rotated) < 4.0);
  CHECK(MeanAbsDiff(upright, as_pixels(DecodeWithThumb("coffee.png", thumb).thumbnail_jpeg)) >
        20.0);
  // Transparent areas are white, as in the model input.
  const RgbImage logo = as_pixels(DecodeWithThumb("logo_alpha_small.png", thumb).thumbnail_jpeg);
  CHECK(CellMean(logo, 16, 0, 0)[0] > 240);
  // A smaller size gives a smaller thumbnail.
  ThumbnailOptions small;
  small.max_side = 32;
  CHECK(JpegSize(DecodeWithThumb("chelsea.jpg", small).thumbnail_jpeg) == std::make_pair(32, 21));
}

TEST_CASE("thumbnails: bad input and options fail like the plain decode", "[image][thumbnail]") {
  const ThumbnailOptions thumb;
  absl::StatusOr<DecodedImage> d =
      DecodeFileWithThumbnail(ImagePath("truncated.jpg"), PreprocessOptions(), &thumb);
  absl::StatusOr<RgbImage> plain =
      DecodeAndPreprocessFile(ImagePath("truncated.jpg"), PreprocessOptions());
  REQUIRE(!d.ok());
  // Same code and reason; libvips may add detail of its own (e.g. "source:
  // bad seek") depending on how far the pipeline read.
  CHECK(d.status().code() == plain.status().code());
  for (const char* part : {"truncated.jpg: cannot decode jpeg image (corrupt or truncated)",
                           " while reading the header: ", "Premature end of input file"}) {
    CHECK(std::string(d.status().message()).find(part) != std::string::npos);
    CHECK(std::string(plain.status().message()).find(part) != std::string::npos);
  }
  for (int side : {0, 7, 1025}) {
    ThumbnailOptions bad;
    bad.max_side = side;
    absl::StatusOr<DecodedImage> r =
        DecodeWithThumbnail(ReadImage("chelsea.jpg"), PreprocessOptions(), &bad);
    CHECK(absl::IsInvalidArgument(r.status()));
  }
  ThumbnailOptions bad_quality;
  bad_quality.quality = 0;
  CHECK(absl::IsInvalidArgument(
      DecodeWithThumbnail(ReadImage("chelsea.jpg"), PreprocessOptions(), &bad_quality).status()));
}

TEST_CASE("many threads decoding at once give identical results", "[image][threads]") {
  struct Input {
    std::string name;
    std::string data;
    PreprocessOptions options;
  };
  std::vector<Input> inputs = {
      {"rocket.jpg", ReadImage("rocket.jpg"), Squash(96)},
      {"chelsea_exif6.jpg", ReadImage("chelsea_exif6.jpg"), PreprocessOptions()},
      {"logo_alpha.png", ReadImage("logo_alpha.png"), PreprocessOptions()},
      {"chelsea.webp", ReadImage("chelsea.webp"), Squash(64, Interpolation::kBilinear)},
      {"coffee_chelsea.gif", ReadImage("coffee_chelsea.gif"), PreprocessOptions()},
      {"coffee_chelsea.tif", ReadImage("coffee_chelsea.tif"), Squash(50)},
      {"truncated.jpg", ReadImage("truncated.jpg"), PreprocessOptions()},
      {"bomb", ReadImage("bomb_50000x50000.png"), PreprocessOptions()},
  };
  std::vector<absl::StatusOr<RgbImage>> expected;
  for (const Input& input : inputs)
    expected.push_back(DecodeAndPreprocess(input.data, input.options));

  constexpr int kThreads = 8;
  constexpr int kRounds = 3;
  std::vector<std::vector<absl::StatusOr<RgbImage>>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        for (size_t k = 0; k < inputs.size(); ++k) {
          // Each thread walks the inputs from a different starting point.
          const Input& input = inputs[(k + t) % inputs.size()];
          got[t].push_back(DecodeAndPreprocess(input.data, input.options));
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  for (int t = 0; t < kThreads; ++t) {
    REQUIRE(got[t].size() == kRounds * inputs.size());
    for (size_t j = 0; j < got[t].size(); ++j) {
      const size_t k = (j % inputs.size() + t) % inputs.size();
      INFO("thread " << t << ", " << inputs[k].name << ": " << got[t][j].status().ToString());
      REQUIRE(got[t][j].status().code() == expected[k].status().code());
      if (expected[k].ok()) REQUIRE(got[t][j]->pixels == expected[k]->pixels);
    }
  }
  // The failures stay failures with their own reason.
  CHECK(!expected[6].ok());
  CHECK(!expected[7].ok());
}

TEST_CASE("libvips memory returns to idle after decodes and failures", "[image][memory]") {
  const std::string jpeg = ReadImage("rocket.jpg");
  const std::string bad = ReadImage("truncated.jpg");
  const std::string png = ReadImage("logo_alpha.png");
  auto run = [&] {
    REQUIRE(DecodeAndPreprocess(jpeg, PreprocessOptions()).ok());
    REQUIRE(DecodeAndPreprocess(png, PreprocessOptions()).ok());
    REQUIRE(!DecodeAndPreprocess(bad, PreprocessOptions()).ok());
  };
  for (int i = 0; i < 3; ++i) run();
  const ImageLibraryStats idle = GetImageLibraryStats();
  for (int i = 0; i < 20; ++i) run();
  const ImageLibraryStats after = GetImageLibraryStats();
  // libvips' worker threads keep a few region buffers for reuse, so the idle
  // level is not zero; but a leaked pipeline would hold at least the decoded
  // 640x427 photo (820 kB) or the 224x224 result (150 kB) per round, 3 MB or
  // more over 20 rounds.
  CHECK(after.tracked_bytes <= idle.tracked_bytes + (1 << 20));
  CHECK(after.tracked_allocations <= idle.tracked_allocations + 20);
  CHECK(after.peak_tracked_bytes >= after.tracked_bytes);
}

}  // namespace
}  // namespace imagesearch::image
