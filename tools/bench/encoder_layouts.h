// The encoder alone, measured in each thread layout a process can run it in
// (header-only, for the benchmarks): one thread running the model with an
// intra-op team of every CPU ("1xN"), or one thread per CPU, each running
// the model on its own batches with one intra-op thread ("Nx1", the services'
// default). A benchmark's "encoder alone at its best" is the best of either.
#ifndef IMAGESEARCH_TOOLS_BENCH_ENCODER_LAYOUTS_H_
#define IMAGESEARCH_TOOLS_BENCH_ENCODER_LAYOUTS_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "libs/common/cpu_quota.h"
#include "libs/image/image.h"
#include "libs/model/model_bundle.h"

namespace imagesearch::bench {

struct EncoderLayout {
  std::string name;  // "RxT": R runner threads, T intra-op threads each.
  int runners = 1;
  std::shared_ptr<const model::ModelBundle> bundle;
};

inline absl::StatusOr<std::vector<EncoderLayout>> LoadEncoderLayouts(const std::string& model) {
  const int cpus = EffectiveCpuCount();
  std::vector<EncoderLayout> layouts;
  for (const int runners : {1, cpus}) {
    if (!layouts.empty() && runners == layouts.back().runners) break;
    model::ModelBundleOptions mo;
    mo.encoder.intra_op_threads = cpus / runners;
    auto bundle = model::ModelBundle::Load(model, mo);
    if (!bundle.ok()) return bundle.status();
    layouts.push_back({absl::StrCat(runners, "x", cpus / runners), runners, *std::move(bundle)});
  }
  return layouts;
}

// Images/s of `layout` at batch size `batch`: each runner, a fresh thread,
// encodes its own batches of `images` in a closed loop for `seconds` (after
// one untimed warm-up batch). Negative if an encode fails.
inline double MeasureEncoder(const EncoderLayout& layout,
                             const std::vector<image::RgbImage>& images, int batch,
                             double seconds) {
  using Clock = std::chrono::steady_clock;
  std::atomic<uint64_t> done{0};
  std::atomic<bool> failed{false};
  std::atomic<int> warm{0};
  std::vector<std::thread> runners;
  Clock::time_point start;
  for (int r = 0; r < layout.runners; ++r) {
    runners.emplace_back([&, r] {
      std::vector<const image::RgbImage*> ptrs;
      size_t next = static_cast<size_t>(r) * 7;
      auto encode = [&] {
        ptrs.clear();
        for (int j = 0; j < batch; ++j) ptrs.push_back(&images[next++ % images.size()]);
        return layout.bundle->EncodeImages(ptrs).ok();
      };
      if (!encode()) failed = true;
      // The clock starts once every runner is warm.
      if (++warm == layout.runners) start = Clock::now();
      while (warm < layout.runners) std::this_thread::yield();
      const auto until = Clock::now() + std::chrono::duration<double>(seconds);
      while (!failed && Clock::now() < until) {
        if (!encode()) failed = true;
        done += static_cast<uint64_t>(batch);
      }
    });
  }
  for (auto& t : runners) t.join();
  if (failed) return -1;
  return done / std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace imagesearch::bench

#endif  // IMAGESEARCH_TOOLS_BENCH_ENCODER_LAYOUTS_H_
