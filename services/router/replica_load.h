// How loaded one shard replica looks to the router, for picking the replica
// of each shard call: the "peak EWMA" of Finagle and Linkerd. A replica's
// cost is its recent latency times (its calls in flight + 1):
//
//   - a latency above the cost replaces it at once (the peak), so one slow
//     answer is enough to send the next calls elsewhere; a faster one pulls
//     it a quarter of the way down;
//   - the cost decays towards zero with time constant kDecayNs, with or
//     without answers, so a replica passed over is tried again before long
//     (at low load a replica that turned slow and stays slow gets one call
//     every few seconds, which its hedge covers; under load, once its
//     sibling's calls in flight make that dearer; one that recovered takes
//     its share again);
//   - a replica with no answer yet costs nothing while it has no call in
//     flight, and the most of all while its first call is out, so a new
//     replica is tried at once but not flooded before it answered.
//
// The router picks the cheaper of two replicas drawn at random (of every
// replica where a shard has two): "the power of two choices", which spreads
// many routers' calls over equal replicas instead of all sending to the one
// that looks best (with two, each router's choice is its own costs'; the
// decay soon undoes a herd). Thread-safe.
#ifndef IMAGESEARCH_SERVICES_ROUTER_REPLICA_LOAD_H_
#define IMAGESEARCH_SERVICES_ROUTER_REPLICA_LOAD_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>

namespace imagesearch::router {

class ReplicaLoad {
 public:
  // The cost's time constant: a 20x peak decays to the others' level in
  // about 3 s (ln 20), a 3x one in about 1 s.
  static constexpr double kDecayNs = 1e9;
  // How far an answer faster than the cost pulls it down.
  static constexpr double kPull = 0.25;

  // A call to the replica starts.
  void Begin() {
    std::lock_guard<std::mutex> lock(mu_);
    ++pending_;
  }
  // How much a call that ended says about the replica's latency.
  enum class Seen {
    kNothing,  // It was never sent.
    kLatency,  // It answered (or failed) after `latency_ns`.
    kAtLeast,  // It was cut off after `latency_ns` (the loser of a hedge, or
               // the caller's deadline): it can raise the cost, never lower it.
  };
  // A call that Begin counted ended.
  void End(Seen seen, int64_t latency_ns, int64_t now_ns) {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_ > 0) --pending_;
    if (seen == Seen::kNothing) return;
    const double rtt = static_cast<double>(latency_ns);
    const double decayed = DecayedLocked(now_ns);
    if (rtt > decayed) {
      cost_ = rtt;
    } else if (seen == Seen::kAtLeast) {
      return;
    } else {
      cost_ = decayed + kPull * (rtt - decayed);
    }
    // A thread that read the clock earlier may get here second.
    stamp_ns_ = std::max(stamp_ns_, now_ns);
    answered_ = true;
  }
  // The cost of sending it one more call now: lower is better.
  double Cost(int64_t now_ns) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!answered_) return pending_ == 0 ? 0 : std::numeric_limits<double>::infinity();
    return DecayedLocked(now_ns) * (pending_ + 1);
  }
  int pending() const {
    std::lock_guard<std::mutex> lock(mu_);
    return pending_;
  }

 private:
  double Weight(int64_t now_ns) const {
    const int64_t td = now_ns > stamp_ns_ ? now_ns - stamp_ns_ : 0;
    return std::exp(-static_cast<double>(td) / kDecayNs);
  }
  double DecayedLocked(int64_t now_ns) const { return cost_ * Weight(now_ns); }

  mutable std::mutex mu_;
  double cost_ = 0;  // Nanoseconds, as of stamp_ns_.
  int64_t stamp_ns_ = 0;
  int pending_ = 0;
  bool answered_ = false;
};

}  // namespace imagesearch::router

#endif  // IMAGESEARCH_SERVICES_ROUTER_REPLICA_LOAD_H_
