#include "services/router/shard_client.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace imagesearch::router {
namespace {

constexpr size_t kLatencyRing = 512;

// "a:1,b:2" -> "ipv4:a:1,b:2" (or ipv6: for bracketed addresses); a target
// with a scheme, or a single host:port, is used as it is.
std::string ChannelTarget(const std::string& target) {
  if (absl::StrContains(target, ":///") || !absl::StrContains(target, ',')) return target;
  if (absl::StartsWith(target, "ipv4:") || absl::StartsWith(target, "ipv6:")) return target;
  return absl::StrCat(absl::StartsWith(target, "[") ? "ipv6:" : "ipv4:", target);
}

}  // namespace

HedgeTimer& HedgeTimer::Get() {
  static HedgeTimer* timer = new HedgeTimer();  // Never destroyed: its thread runs to exit.
  return *timer;
}

HedgeTimer::HedgeTimer() : thread_([this] { Loop(); }) { thread_.detach(); }

void HedgeTimer::At(absl::Time when, std::function<void()> fn) {
  bool earliest = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    earliest = heap_.empty() || when < heap_.top().when;
    heap_.push(Entry{when, std::move(fn)});
  }
  if (earliest) wake_.notify_one();
}

void HedgeTimer::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (heap_.empty()) {
      wake_.wait(lock);
      continue;
    }
    const absl::Time next = heap_.top().when;
    if (absl::Now() < next) {
      wake_.wait_until(lock, absl::ToChronoTime(next));
      continue;
    }
    std::function<void()> fn = heap_.top().fn;
    heap_.pop();
    lock.unlock();
    fn();
    lock.lock();
  }
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

ShardClient::ShardClient(uint32_t index, const std::string& target,
                         const ShardClientOptions& options)
    : index_(index), target_(target), options_(options) {
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(R"({"loadBalancingConfig": [{"round_robin": {}}]})");
  // Find a restarted replica soon: reconnect backoff from 100 ms, at most 1 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ =
      grpc::CreateCustomChannel(ChannelTarget(target), grpc::InsecureChannelCredentials(), args);
  stub_ = v1::ImageSearch::NewStub(channel_);
  latencies_us_.reserve(kLatencyRing);
}

void ShardClient::Record(absl::Duration latency, bool ok) {
  if (!ok) return;
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t us = absl::ToInt64Microseconds(latency);
  if (latencies_us_.size() < kLatencyRing) {
    latencies_us_.push_back(us);
  } else {
    latencies_us_[next_] = us;
    next_ = (next_ + 1) % kLatencyRing;
  }
  // The hedge delay follows the p95, taken again every kP95Every answers
  // rather than on every call (a call only reads it).
  if (++since_p95_ >= kP95Every || latencies_us_.size() == kMinSamplesForP95) {
    since_p95_ = 0;
    std::vector<int64_t> sorted = latencies_us_;
    const size_t at = std::min(sorted.size() - 1, sorted.size() * 95 / 100);
    std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(at), sorted.end());
    p95_ = absl::Microseconds(sorted[at]);
  }
}

ShardStats ShardClient::Stats() const {
  std::vector<int64_t> sorted;
  ShardStats out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = stats_;
    sorted = latencies_us_;
  }
  if (!sorted.empty()) {
    std::sort(sorted.begin(), sorted.end());
    out.p50 = absl::Microseconds(sorted[sorted.size() / 2]);
    out.p95 = absl::Microseconds(sorted[std::min(sorted.size() - 1, sorted.size() * 95 / 100)]);
  }
  return out;
}

absl::Duration ShardClient::HedgeDelay() const {
  if (options_.hedge_delay < absl::ZeroDuration()) return -absl::InfiniteDuration();
  if (options_.hedge_delay > absl::ZeroDuration()) return options_.hedge_delay;
  std::lock_guard<std::mutex> lock(mu_);
  if (latencies_us_.size() < kMinSamplesForP95) return -absl::InfiniteDuration();
  return std::max(options_.min_hedge_delay, p95_);
}

}  // namespace imagesearch::router
