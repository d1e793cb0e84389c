#include "services/router/shard_client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "libs/common/log.h"
#include "libs/snapshot/shard.h"

namespace imagesearch::router {
namespace {

constexpr absl::Duration kResolveEvery = absl::Seconds(5);

bool IsIpLiteral(absl::string_view host) {
  in6_addr v6;
  in_addr v4;
  const std::string h(absl::StripPrefix(absl::StripSuffix(host, "]"), "["));
  return inet_pton(AF_INET, h.c_str(), &v4) == 1 || inet_pton(AF_INET6, h.c_str(), &v6) == 1;
}

// "host:port" -> {host, port}; "[::1]:5" -> {"[::1]", "5"}.
std::pair<std::string, std::string> SplitHostPort(absl::string_view hp) {
  const size_t colon = hp.rfind(':');
  if (colon == absl::string_view::npos) return {std::string(hp), ""};
  return {std::string(hp.substr(0, colon)), std::string(hp.substr(colon + 1))};
}

// The channel target of one address: "ipv4:1.2.3.4:5" or "ipv6:[::1]:5".
std::string AddressTarget(const std::string& address) {
  return absl::StrCat(absl::StartsWith(address, "[") ? "ipv6:" : "ipv4:", address);
}

// The addresses `host` resolves to for `port`, sorted, as "a.b.c.d:port" or
// "[v6]:port"; empty when it does not resolve.
std::vector<std::string> LookUp(const std::string& host, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::vector<std::string> out;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[INET6_ADDRSTRLEN] = {0};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, text, sizeof(text));
      out.push_back(absl::StrCat(text, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, text,
                sizeof(text));
      out.push_back(absl::StrCat("[", text, "]:", port));
    }
  }
  freeaddrinfo(found);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace

HedgeTimer& HedgeTimer::Get() {
  static HedgeTimer* timer = new HedgeTimer();  // Never destroyed: its thread runs to exit.
  return *timer;
}

HedgeTimer::HedgeTimer() : fd_(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC)) {
  if (fd_ < 0) {
    // Without a timerfd nothing would ever hedge: say so, loudly, once.
    LogError("imagesearch-router: timerfd_create: ", strerror(errno), "; hedging is off");
    return;
  }
  thread_ = std::thread([this] { Loop(); });
  thread_.detach();
}

HedgeTimer::Handle HedgeTimer::After(absl::Duration delay, std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  const Handle h{Clock::now() + absl::ToChronoNanoseconds(delay), next_id_++};
  timers_.emplace(std::make_pair(h.when, h.id), std::move(fn));
  if (h.when < armed_) ArmLocked(h.when);
  return h;
}

void HedgeTimer::Cancel(const Handle& h) {
  if (h.id == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (timers_.erase(std::make_pair(h.when, h.id)) == 0) return;
  if (timers_.empty()) {
    ArmLocked(Clock::time_point::max());
  } else if (timers_.begin()->first.first - armed_ > kRearmSlack) {
    ArmLocked(timers_.begin()->first.first);
  }
}

void HedgeTimer::ArmLocked(Clock::time_point when) {
  if (when == armed_ || fd_ < 0) return;
  armed_ = when;
  itimerspec spec{};  // Zero: disarmed.
  if (when != Clock::time_point::max()) {
    // libstdc++'s steady_clock is CLOCK_MONOTONIC, the timerfd's clock.
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch());
    spec.it_value.tv_sec = static_cast<time_t>(ns.count() / 1000000000);
    spec.it_value.tv_nsec = static_cast<long>(ns.count() % 1000000000);
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
  }
  timerfd_settime(fd_, TFD_TIMER_ABSTIME, &spec, nullptr);
}

void HedgeTimer::Loop() {
  while (true) {
    uint64_t expirations = 0;
    if (read(fd_, &expirations, sizeof(expirations)) < 0 && errno != EINTR) {
      LogError("imagesearch-router: hedge timer: ", strerror(errno));
      return;
    }
    std::vector<std::function<void()>> due;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const Clock::time_point now = Clock::now();
      while (!timers_.empty() && timers_.begin()->first.first <= now) {
        due.push_back(std::move(timers_.begin()->second));
        timers_.erase(timers_.begin());
      }
      // A one-shot timerfd that fired is disarmed. It may have fired for a
      // timer since cancelled (Cancel leaves it early by up to kRearmSlack):
      // then nothing was due, and it is set for the earliest left.
      armed_ = Clock::time_point::max();
      if (!timers_.empty()) ArmLocked(timers_.begin()->first.first);
    }
    for (auto& fn : due) fn();
  }
}

ShardClient::ShardClient(uint32_t index, const std::string& target,
                         const ShardClientOptions& options)
    : index_(index),
      target_(target),
      options_(options),
      queues_(options.queues != nullptr ? options.queues : &CompletionThreads::Default()) {
  auto set = std::make_shared<Replicas>();
  absl::string_view t = target;
  if (absl::StrContains(t, ',')) {  // A static list.
    for (absl::string_view a : absl::StrSplit(t, ',', absl::SkipWhitespace())) {
      a = absl::StripAsciiWhitespace(a);
      absl::ConsumePrefix(&a, "ipv4:");
      absl::ConsumePrefix(&a, "ipv6:");
      set->push_back(NewReplica(std::string(a), false));
    }
  } else if (absl::ConsumePrefix(&t, "dns:///") || !absl::StrContains(t, ":/")) {
    const auto [host, port] = SplitHostPort(t);
    if (IsIpLiteral(host)) {
      set->push_back(NewReplica(std::string(t), false));
    } else {
      dns_host_ = host;
      dns_port_ = port;
      for (const std::string& a : LookUp(dns_host_, dns_port_)) {
        set->push_back(NewReplica(a, false));
      }
    }
  }
  // Another scheme, or a name that does not resolve yet: gRPC's resolver and
  // round_robin, until a lookup finds addresses.
  if (set->empty()) set->push_back(NewReplica(target, true));
  replicas_ = std::move(set);
  resolver_ = std::thread([this] { Watch(); });
}

void ShardClient::Watch() {
  const bool dns = !dns_host_.empty();
  absl::Time next_resolve = absl::Now() + kResolveEvery;
  absl::Time next_recheck = absl::InfiniteFuture();
  std::unique_lock<std::mutex> lock(resolver_mu_);
  while (!stopping_) {
    // Sleeps until the next lookup or recheck, or a second while a replica
    // waits for its check; with neither (a static list, before Verify),
    // until stopped or Verify.
    if (check_ && next_recheck == absl::InfiniteFuture()) {
      next_recheck = absl::Now() + options_.recheck_every;
    }
    absl::Time wake = dns ? next_resolve : absl::InfiniteFuture();
    if (check_) {
      wake = std::min(wake, next_recheck);
      if (!AllGood()) wake = std::min(wake, absl::Now() + kCheckPendingEvery);
    }
    const uint64_t seen = check_generation_, suspected = suspected_;
    const auto woken = [&] {
      return stopping_ || check_generation_ != seen || suspected_ != suspected;
    };
    if (wake == absl::InfiniteFuture()) {
      resolver_cv_.wait(lock, woken);
    } else {
      resolver_cv_.wait_for(
          lock, absl::ToChronoNanoseconds(std::max(absl::ZeroDuration(), wake - absl::Now())),
          woken);
    }
    if (stopping_) break;
    const Check check = check_;
    lock.unlock();
    const absl::Time now = absl::Now();
    if (dns && now >= next_resolve) {
      Resolve(check);
      next_resolve = now + kResolveEvery;
    }
    if (check) {
      const bool all = now >= next_recheck;
      std::vector<std::shared_ptr<Replica>> ask;
      for (const auto& r : *replicas()) {
        if (all || r->state.load(std::memory_order_acquire) != Replica::State::kGood ||
            r->recheck.load(std::memory_order_acquire)) {
          ask.push_back(r);
        }
      }
      CheckAll(ask, check, absl::Now() + kCheckTimeout);
      if (all) next_recheck = absl::Now() + options_.recheck_every;
    }
    lock.lock();
  }
}

bool ShardClient::AllGood() const {
  for (const auto& r : *replicas()) {
    if (r->state.load(std::memory_order_acquire) != Replica::State::kGood ||
        r->recheck.load(std::memory_order_acquire)) {
      return false;
    }
  }
  return true;
}

void ShardClient::Suspect(Replica& r, absl::string_view why) {
  r.suspicions.fetch_add(1, std::memory_order_acq_rel);
  if (!why.empty()) {
    {
      std::lock_guard<std::mutex> lock(r.why_mu);
      r.why = std::string(why);
    }
    auto good = Replica::State::kGood;
    if (r.state.compare_exchange_strong(good, Replica::State::kUnchecked)) {
      LogError("imagesearch-router: shard ", index_, " replica ", r.address, " ", why,
               "; it gets no calls until it is checked again");
    }
  }
  // Once: a replica that keeps failing is asked every kCheckPendingEvery
  // until it answers, not once per failed call.
  if (r.recheck.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lock(resolver_mu_);
    ++suspected_;
  }
  resolver_cv_.notify_all();
}

std::vector<absl::StatusOr<v1::GetInfoResponse>> ShardClient::AskAll(
    const std::vector<std::shared_ptr<Replica>>& replicas, absl::Time deadline) {
  // All at once, on the client's queues as every call to the replicas: a
  // replica that hangs costs the others nothing. Registered as attempts, so
  // CancelAll ends them.
  struct Asked final : CqTag {
    grpc::ClientContext context;
    v1::GetInfoResponse info;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::GetInfoResponse>> reader;
    std::promise<void> done;
    bool started = false;
    void Proceed(bool) override { done.set_value(); }
  };
  std::vector<std::unique_ptr<Asked>> asked;
  for (const auto& r : replicas) {
    auto a = std::make_unique<Asked>();
    a->context.set_deadline(absl::ToChronoTime(deadline));
    if (!options_.authorization.empty()) {
      a->context.AddMetadata("authorization", options_.authorization);
    }
    Asked* raw = a.get();
    raw->started =
        AttemptStarting(&raw->context) && queues_->Start([&](grpc::CompletionQueue* queue) {
          raw->reader = r->stub->PrepareAsyncGetInfo(&raw->context, v1::GetInfoRequest(), queue);
          raw->reader->StartCall();
          raw->reader->Finish(&raw->info, &raw->status, raw->GrpcTag());
        });
    asked.push_back(std::move(a));
  }
  std::vector<absl::StatusOr<v1::GetInfoResponse>> out;
  for (auto& a : asked) {
    if (!a->started) {
      out.push_back(absl::UnavailableError("the router is shutting down"));
      continue;
    }
    a->done.get_future().wait();  // The deadline ends it.
    AttemptEnded(&a->context);
    if (!a->status.ok()) {
      out.push_back(FromGrpc(a->status));
    } else {
      out.push_back(std::move(a->info));
    }
  }
  return out;
}

void ShardClient::Judge(Replica& r, const absl::StatusOr<v1::GetInfoResponse>& info,
                        const Check& check, uint64_t suspicions) const {
  using State = Replica::State;
  if (suspicions != kAnySuspicions && r.suspicions.load(std::memory_order_acquire) != suspicions) {
    return;  // Suspected since it was asked: what it said then does not clear it.
  }
  const State was = r.state.load(std::memory_order_acquire);
  if (!info.ok()) {
    // Not answering says nothing of what it serves: a good replica stays
    // good (its calls fail over), one not checked yet waits.
    if (was == State::kUnchecked) {
      std::lock_guard<std::mutex> lock(r.why_mu);
      r.why = absl::StrCat("not answering: ", info.status().message());
    }
    return;
  }
  r.recheck.store(false, std::memory_order_release);  // It answered: judged now.
  const absl::Status fits = check(*info);
  {
    std::lock_guard<std::mutex> lock(r.why_mu);
    r.why = fits.ok() ? "" : std::string(fits.message());
  }
  const State now = fits.ok() ? State::kGood : State::kWrong;
  r.state.store(now, std::memory_order_release);
  if (now == State::kWrong && was != State::kWrong) {
    LogError("imagesearch-router: shard ", index_, " replica ", r.address, ": ", fits.message(),
             "; it gets no calls");
  } else if (now == State::kGood && was == State::kWrong) {
    LogInfo("imagesearch-router: shard ", index_, " replica ", r.address,
            " serves the shard again");
  }
}

void ShardClient::CheckAll(const std::vector<std::shared_ptr<Replica>>& replicas,
                           const Check& check, absl::Time deadline) {
  if (replicas.empty()) return;
  std::vector<uint64_t> suspicions;
  for (const auto& r : replicas)
    suspicions.push_back(r->suspicions.load(std::memory_order_acquire));
  const auto infos = AskAll(replicas, deadline);
  for (size_t i = 0; i < replicas.size(); ++i) {
    Judge(*replicas[i], infos[i], check, suspicions[i]);
  }
}

std::string ShardClient::StampProblem(const grpc::ClientContext& context) const {
  if (stamp_.empty()) return "";
  const auto& metadata = context.GetServerInitialMetadata();
  const auto it = metadata.find(snapshot::kShardStampKey);
  if (it == metadata.end()) return "";
  const absl::string_view got(it->second.data(), it->second.size());
  if (got == stamp_) return "";
  return absl::StrCat("answered as ", snapshot::kShardStampKey, " '", got, "', not '", stamp_,
                      "' (shard/count/collection: another shard, or another layout of the "
                      "collection, restarted at its address)");
}

void ShardClient::Verify(Check check, std::string stamp, absl::Time deadline) {
  stamp_ = std::move(stamp);
  std::vector<std::shared_ptr<Replica>> ask;
  for (const auto& r : *replicas()) {
    if (r->state.load(std::memory_order_acquire) != Replica::State::kGood) ask.push_back(r);
  }
  CheckAll(ask, check, std::min(deadline, absl::Now() + kCheckTimeout));
  {
    std::lock_guard<std::mutex> lock(resolver_mu_);
    check_ = std::move(check);
    ++check_generation_;
    checking_.store(true, std::memory_order_release);
  }
  resolver_cv_.notify_all();
}

bool ShardClient::AnyGood() const {
  for (const auto& r : *replicas()) {
    if (r->state.load(std::memory_order_acquire) == Replica::State::kGood) return true;
  }
  return false;
}

std::string ShardClient::NotGood() const {
  std::string out;
  for (const auto& r : *replicas()) {
    if (r->state.load(std::memory_order_acquire) == Replica::State::kGood) continue;
    absl::StrAppend(&out, out.empty() ? "" : "; ", r->address, ": ", r->Why());
  }
  return out;
}

ShardClient::~ShardClient() {
  {
    std::lock_guard<std::mutex> lock(resolver_mu_);
    stopping_ = true;
  }
  resolver_cv_.notify_all();
  if (resolver_.joinable()) resolver_.join();
  // A call's last reference may be a hedge timer running right now, or an
  // answer its queue is delivering: wait for them (a call outlives no
  // deadline, and CancelAll ends them sooner).
  std::unique_lock<std::mutex> lock(live_mu_);
  live_cv_.wait(lock, [this] { return live_calls_ == 0; });
}

void ShardClient::CancelAll() {
  std::lock_guard<std::mutex> lock(live_mu_);
  cancelling_ = true;
  for (grpc::ClientContext* c : live_attempts_) c->TryCancel();
}

void ShardClient::CallBegins() {
  std::lock_guard<std::mutex> lock(live_mu_);
  ++live_calls_;
}

void ShardClient::CallEnds() {
  std::lock_guard<std::mutex> lock(live_mu_);
  if (--live_calls_ == 0) live_cv_.notify_all();
}

bool ShardClient::AttemptStarting(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(live_mu_);
  if (cancelling_) return false;
  live_attempts_.insert(context);
  return true;
}

void ShardClient::AttemptEnded(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(live_mu_);
  live_attempts_.erase(context);
}

std::shared_ptr<ShardClient::Replica> ShardClient::NewReplica(const std::string& address,
                                                              bool balance) const {
  grpc::ChannelArguments args;
  if (balance) args.SetServiceConfigJSON(R"({"loadBalancingConfig": [{"round_robin": {}}]})");
  // Find a restarted replica soon: reconnect backoff from 100 ms, at most 1 s.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // gRPC's MIN_CONNECT_TIMEOUT (doc/connection-backoff.md), not a backoff:
  // how long one connection attempt may take, HTTP/2 (and TLS) handshake
  // included. A replica on busy cores can take hundreds of ms to send its
  // SETTINGS; a shorter limit fails the channel ("timed out before receiving
  // SETTINGS frame") and every call to that live replica with it. A refused
  // connection fails at once whatever the limit; a replica that accepts and
  // hangs is left to hedging and the call's deadline.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
  args.SetMaxReceiveMessageSize(64 << 20);
  // The filters a shard call passes through, trimmed to what the router
  // uses: about 8% of its instructions a query (tools/bench/results/LOG.md,
  // "The router's own cost"). Deadline checking is asked for again, so a
  // call still ends at its deadline when a replica hangs. What goes:
  // - the retry filter, and with it gRPC's transparent retry of a call that
  //   never reached the server (one that races a replica's GOAWAY at its
  //   connection's max age, say): it comes back UNAVAILABLE, and HedgedCall
  //   retries it on another replica, as it does any UNAVAILABLE (counted in
  //   the shard's retries). The filter also keeps a copy of every request.
  // - message size limits: the receive limit above is not enforced; the
  //   replicas are this deployment's own, and their send limit holds.
  // - compression and decompression: nothing makes a replica compress.
  // - the client idle timer: a shard channel never goes idle.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  args.SetInt(GRPC_ARG_MINIMAL_STACK, 1);
  args.SetInt(GRPC_ARG_ENABLE_DEADLINE_CHECKS, 1);
  auto r = std::make_shared<Replica>();
  r->address = address;
  r->why = "not checked yet";
  // An IP address gets a channel of its own; anything else (a name in a
  // static list, another scheme) is given to gRPC's resolver as it is.
  const bool literal = !balance && IsIpLiteral(SplitHostPort(address).first);
  r->channel = grpc::CreateCustomChannel(
      literal ? AddressTarget(address) : address,
      options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(), args);
  r->stub = v1::ImageSearch::NewStub(r->channel);
  return r;
}

void ShardClient::Resolve(const Check& check) {
  const std::vector<std::string> found = LookUp(dns_host_, dns_port_);
  if (found.empty()) return;  // Keep what worked: a lookup can fail for a moment.
  std::shared_ptr<const Replicas> now = replicas();
  std::vector<std::string> have;
  for (const auto& r : *now) have.push_back(r->address);
  if (have == found) return;
  auto next = std::make_shared<Replicas>();
  std::vector<std::shared_ptr<Replica>> added;
  for (const std::string& a : found) {
    auto same =
        std::find_if(now->begin(), now->end(), [&](const auto& r) { return r->address == a; });
    next->push_back(same != now->end() ? *same : NewReplica(a, false));
    if (same == now->end()) added.push_back(next->back());
  }
  // New addresses are checked before they join, so that a replaced replica
  // takes calls as soon as it is in the set (one that does not answer yet
  // joins unchecked and is asked again each second).
  if (check) CheckAll(added, check, absl::Now() + kCheckTimeout);
  std::lock_guard<std::mutex> lock(replicas_mu_);
  replicas_ = std::move(next);
}

std::shared_ptr<const ShardClient::Replicas> ShardClient::replicas() const {
  std::lock_guard<std::mutex> lock(replicas_mu_);
  return replicas_;
}

size_t ShardClient::Pick(const Replicas& set, const std::vector<size_t>& tried, bool repeat) {
  thread_local std::minstd_rand random(std::random_device{}());
  const size_t n = set.size();
  auto was_tried = [&](size_t i) {
    return std::find(tried.begin(), tried.end(), i) != tried.end();
  };
  // Those not tried, and of them those whose channel is not failing.
  size_t untried[kMaxCandidates], healthy[kMaxCandidates];
  size_t n_untried = 0, n_healthy = 0;
  const size_t offset = random();  // Where the scan starts: ties go anywhere.
  // One that passed its check, tried or not: for a repeat, one whose channel
  // is not failing if there is one (a retry after a replica shed load
  // should not go back to the one that refused connections).
  size_t usable = kNone, usable_healthy = kNone;
  for (size_t k = 0; k < n && n_untried < kMaxCandidates; ++k) {
    const size_t i = (offset + k) % n;
    if (!Usable(*set[i])) continue;
    const bool failing =
        set[i]->channel->GetState(/*try_to_connect=*/true) == GRPC_CHANNEL_TRANSIENT_FAILURE;
    if (usable == kNone) usable = i;
    if (usable_healthy == kNone && !failing) usable_healthy = i;
    if (was_tried(i)) continue;
    untried[n_untried++] = i;
    if (!failing) healthy[n_healthy++] = i;
  }
  if (n_healthy == 0) {
    if (n_untried > 0) return untried[0];
    if (!repeat) return kNone;
    return usable_healthy != kNone ? usable_healthy : usable;
  }
  if (n_healthy == 1) return healthy[0];
  // Two of them: the first two of a scan that started at random, or two
  // drawn at random where there are more.
  size_t a = healthy[0], b = healthy[1];
  if (n_healthy > 2) {
    const size_t ia = random() % n_healthy;
    size_t ib = random() % (n_healthy - 1);
    if (ib >= ia) ++ib;
    a = healthy[ia];
    b = healthy[ib];
  }
  const int64_t now = NowNs();
  return set[b]->load.Cost(now) < set[a]->load.Cost(now) ? b : a;
}

void ShardClient::Record(const std::string& peer, absl::Duration latency, bool ok) {
  if (!ok) return;
  const absl::Time now = absl::Now();
  std::lock_guard<std::mutex> lock(mu_);
  latencies_.Add(latency);
  // The hedge delay is the p95 of the shard's fastest replica, each
  // replica's taken again every kP95Every of its answers (a call only reads
  // the result). Not the shard's p95 over all replicas: a replica turning
  // slow would raise that, so hedges would leave later and more of its slow
  // answers would win, raising it further.
  PeerLatency& p = peers_[peer];
  p.last = now;
  p.ring.Add(latency);
  if (++p.since >= kP95Every || p.ring.size() == kMinSamplesForP95) {
    p.since = 0;
    p.p95 = p.ring.Quantile(0.95);
    // The fastest replica heard from lately (a replica gone for a while, or
    // replaced at a new address, stops counting).
    hedge_p95_ = absl::InfiniteDuration();
    for (auto it = peers_.begin(); it != peers_.end();) {
      if (now - it->second.last > kPeerForgetAfter) {
        peers_.erase(it++);
        continue;
      }
      hedge_p95_ = std::min(hedge_p95_, it->second.p95);
      ++it;
    }
  }
}

ShardStats ShardClient::Stats() const {
  ShardStats out;
  decltype(latencies_) latencies;  // A copy: the quantiles are taken outside the lock.
  {
    std::lock_guard<std::mutex> lock(mu_);
    out = stats_;
    latencies = latencies_;
  }
  if (latencies.size() > 0) {
    out.p50 = latencies.Quantile(0.5);
    out.p95 = latencies.Quantile(0.95);
  }
  return out;
}

absl::Duration ShardClient::HedgeDelay() const {
  if (options_.hedge_delay < absl::ZeroDuration()) return -absl::InfiniteDuration();
  if (options_.hedge_delay > absl::ZeroDuration()) return options_.hedge_delay;
  std::lock_guard<std::mutex> lock(mu_);
  if (hedge_p95_ == absl::InfiniteDuration()) return -absl::InfiniteDuration();
  return std::max(options_.min_hedge_delay, hedge_p95_);
}

}  // namespace imagesearch::router
