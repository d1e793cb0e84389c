// Indexer throughput against what the encoder alone can do, in one run:
//   (a) encoder alone: images decoded beforehand (untimed), then only the
//       forward passes, in batches of each size of --encoder_batches and in
//       each thread layout (tools/bench/encoder_layouts.h); the best is the
//       reference;
//   (b) the whole indexer (list -> decode -> batch -> encode -> HNSW build)
//       with its default options (as a user runs it), end to end including
//       model load, publish skipped (dry run).
// Prints images/s for each and the ratio (b) / best (a).
//
//   indexer_bench --model=build/models/default/model.pt --input=corpus/manifest.jsonl
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "libs/model/model_bundle.h"
#include "services/indexer/indexer.h"
#include "tools/bench/encoder_layouts.h"

ABSL_FLAG(std::string, model, "", "model.pt");
ABSL_FLAG(std::string, input, "", "A .jsonl manifest ({\"path\": ...}) of images.");
ABSL_FLAG(std::string, encoder_batches, "1,2,4,8,16,32", "Encoder-alone batch sizes swept.");
ABSL_FLAG(int, batch, 0, "The indexer's --batch (0: its default).");
ABSL_FLAG(int, repeats, 1, "Encoder-alone passes over the images (median).");

namespace imagesearch {
namespace {

constexpr double kEncoderSeconds = 4.0;  // Per layout and batch size.

using Clock = std::chrono::steady_clock;

int Run() {
  const std::string input = absl::GetFlag(FLAGS_input);
  const int batch = absl::GetFlag(FLAGS_batch) > 0 ? absl::GetFlag(FLAGS_batch)
                                                   : indexer::IndexerOptions().batch_size;
  std::vector<int> encoder_batches;
  for (absl::string_view b :
       absl::StrSplit(absl::GetFlag(FLAGS_encoder_batches), ',', absl::SkipEmpty())) {
    int v = 0;
    if (!absl::SimpleAtoi(b, &v) || v <= 0) {
      std::cerr << "bad --encoder_batches entry: " << b << "\n";
      return 2;
    }
    encoder_batches.push_back(v);
  }
  auto layouts = bench::LoadEncoderLayouts(absl::GetFlag(FLAGS_model));
  if (!layouts.ok()) {
    std::cerr << layouts.status() << "\n";
    return 1;
  }
  const model::ModelBundle* bundle = layouts->front().bundle.get();
  // The same images the indexer will read: a .jsonl manifest's paths, or a
  // directory's files (the indexer skips what does not decode; so does this).
  std::vector<std::string> paths;
  if (std::filesystem::is_directory(input)) {
    for (const auto& e : std::filesystem::recursive_directory_iterator(input)) {
      if (e.is_regular_file()) paths.push_back(e.path().string());
    }
    std::sort(paths.begin(), paths.end());
  } else {
    std::ifstream in(input);
    const std::string dir = input.substr(0, input.find_last_of('/') + 1);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line);
      std::string path = j["path"].get<std::string>();
      if (path[0] != '/') path = dir + path;
      paths.push_back(path);
    }
  }
  std::vector<image::RgbImage> images;
  for (const auto& path : paths) {
    auto img = bundle->PreprocessFile(path);
    if (img.ok()) images.push_back(std::move(*img));
  }
  std::printf("%zu images; indexer --batch=%d\n", images.size(), batch);
  if (images.empty()) {
    std::cerr << "no image of --input=" << input
              << " decodes (a directory of images, or a .jsonl manifest of {\"path\"} lines)\n";
    return 2;
  }

  // The encoder alone in each thread layout (encoder_layouts.h), for about
  // as long as one pass over the images takes.
  double encoder_rate = 0;
  std::string best;
  for (const bench::EncoderLayout& layout : *layouts) {
    for (const int eb : encoder_batches) {
      std::vector<double> rates;
      for (int rep = 0; rep < absl::GetFlag(FLAGS_repeats); ++rep) {
        const double rate = bench::MeasureEncoder(layout, images, eb, kEncoderSeconds);
        if (rate < 0) return 1;
        rates.push_back(rate);
      }
      std::sort(rates.begin(), rates.end());
      const double rate = rates[rates.size() / 2];
      std::printf("  encoder alone, %s batch %2d: %7.2f img/s\n", layout.name.c_str(), eb, rate);
      std::fflush(stdout);
      if (rate > encoder_rate) {
        encoder_rate = rate;
        best = absl::StrCat(layout.name, " batch ", eb);
      }
    }
  }
  layouts->clear();

  indexer::IndexerOptions o;
  o.input = input;
  o.root = "/tmp/imagesearch_indexer_bench_unused";
  o.model_path = absl::GetFlag(FLAGS_model);
  o.batch_size = batch;
  o.progress = "none";
  o.dry_run = true;
  // A benchmark measures, it does not gate: images that do not decode are
  // skipped here as they were above.
  o.max_reject_ratio = 1.0;
  auto report = indexer::RunIndexer(o);
  if (!report.ok()) {
    std::cerr << report.status() << "\n";
    return 1;
  }
  const double indexer_rate = report->indexed / report->seconds;
  std::printf("  encoder alone at its best (%s; pre-decoded, forward passes only) %7.2f img/s\n",
              best.c_str(), encoder_rate);
  std::printf(
      "  indexer end to end (decode+encode+HNSW, dry run) %7.2f img/s  (%llu images, %.1fs)\n",
      indexer_rate, static_cast<unsigned long long>(report->indexed), report->seconds);
  std::printf("ratio indexer / encoder alone at its best batch: %.3f\n",
              indexer_rate / encoder_rate);
  return 0;
}

}  // namespace
}  // namespace imagesearch

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return imagesearch::Run();
}
