// rpc::CompletionThreads with two threads on one server queue: one polls
// while it keeps up; the second joins only while the work needs it and it
// adds throughput, and leaves when the work stops. Events are grpc::Alarms
// on a real server's queue; their work sleeps, so what the threads can do
// does not depend on how busy this machine's cores are.
#include "libs/rpc/completion_threads.h"

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace imagesearch::rpc {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

// What every loop's Proceed saw: which thread ran it, and how many ran at once.
struct Record {
  std::mutex mu;
  std::map<std::thread::id, int> by_thread;  // Guarded by mu.
  std::atomic<int> running{0};
  std::atomic<int> most_at_once{0};

  int Threads() {
    std::lock_guard<std::mutex> lock(mu);
    return static_cast<int>(by_thread.size());
  }
  // Events off the thread that ran most of them, as a share of all.
  double ShareOffBusiest() {
    std::lock_guard<std::mutex> lock(mu);
    int total = 0, top = 0;
    for (const auto& [id, n] : by_thread) {
      total += n;
      top = std::max(top, n);
    }
    return total == 0 ? 0 : 1.0 - static_cast<double>(top) / total;
  }
};

// An alarm that, each time it fires, works for `work` (sleeping), then
// fires again after `gap`, until stopped. With `serial`, its whole Proceed
// holds that lock, so that no two loops proceed at once.
class AlarmLoop : public CqTag {
 public:
  AlarmLoop(grpc::CompletionQueue* queue, Record* record, microseconds work, milliseconds gap,
            std::mutex* serial)
      : queue_(queue), record_(record), work_(work), gap_(gap), serial_(serial) {
    Arm();
  }
  void Stop() { stopping_ = true; }
  bool Done() const { return done_; }
  int proceeds() const { return proceeds_; }

  void Proceed(bool ok) override {
    std::unique_lock<std::mutex> serial;
    if (serial_ != nullptr) serial = std::unique_lock<std::mutex>(*serial_);
    if (!ok || stopping_) {
      done_ = true;
      return;
    }
    ++proceeds_;
    const int now = ++record_->running;
    int most = record_->most_at_once.load();
    while (now > most && !record_->most_at_once.compare_exchange_weak(most, now)) {
    }
    {
      std::lock_guard<std::mutex> lock(record_->mu);
      ++record_->by_thread[std::this_thread::get_id()];
    }
    std::this_thread::sleep_for(work_);
    --record_->running;
    Arm();
  }

 private:
  void Arm() { alarm_.Set(queue_, std::chrono::system_clock::now() + gap_, GrpcTag()); }

  grpc::CompletionQueue* queue_;
  Record* record_;
  microseconds work_;
  milliseconds gap_;
  std::mutex* serial_;
  grpc::Alarm alarm_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> done_{false};
  std::atomic<int> proceeds_{0};
};

// A server whose one queue two CompletionThreads poll.
class TwoThreads {
 public:
  TwoThreads() {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
    queues.push_back(builder.AddCompletionQueue());
    threads_ = std::make_unique<CompletionThreads>(std::move(queues), 2);
    server_ = builder.BuildAndStart();
    REQUIRE(server_ != nullptr);
  }
  ~TwoThreads() {
    for (auto& loop : loops_) loop->Stop();
    for (auto& loop : loops_) {
      const auto give_up = steady_clock::now() + std::chrono::seconds(5);
      while (!loop->Done() && steady_clock::now() < give_up)
        std::this_thread::sleep_for(milliseconds(1));
    }
    server_->Shutdown(std::chrono::system_clock::now());
    threads_->Shutdown();
  }
  AlarmLoop* Loop(microseconds work, milliseconds gap, std::mutex* serial = nullptr) {
    loops_.push_back(
        std::make_unique<AlarmLoop>(threads_->server_queue(0), &record_, work, gap, serial));
    return loops_.back().get();
  }
  // The share of `polling(0)` readings, every 5 ms for `span`, that read `n`.
  double ShareAt(int n, milliseconds span) {
    int hits = 0, total = 0;
    for (const auto end = steady_clock::now() + span; steady_clock::now() < end; ++total) {
      hits += threads_->polling(0) == n ? 1 : 0;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return total == 0 ? 0 : static_cast<double>(hits) / total;
  }
  // Waits up to `limit` for polling(0) to read `n`; returns the last reading.
  int AwaitPolling(int n, milliseconds limit) {
    const auto give_up = steady_clock::now() + limit;
    int now = threads_->polling(0);
    while (now != n && steady_clock::now() < give_up) {
      std::this_thread::sleep_for(milliseconds(5));
      now = threads_->polling(0);
    }
    return now;
  }
  void StopLoops() {
    for (auto& loop : loops_) loop->Stop();
  }

  CompletionThreads& threads() { return *threads_; }
  Record& record() { return record_; }

 private:
  Record record_;
  std::unique_ptr<CompletionThreads> threads_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<AlarmLoop>> loops_;
};

TEST_CASE("Work one thread keeps up with stays on that thread") {
  TwoThreads t;
  // Busy 1 ms in 6, far under kEngageBusy even if sleeps overrun.
  t.Loop(milliseconds(1), milliseconds(5));
  int most_polling = 0;
  const auto end = steady_clock::now() + milliseconds(400);
  while (steady_clock::now() < end) {
    most_polling = std::max(most_polling, t.threads().polling(0));
    std::this_thread::sleep_for(milliseconds(2));
  }
  CHECK(most_polling == 1);
  CHECK(t.record().Threads() == 1);
  CHECK(t.record().most_at_once.load() == 1);
}

TEST_CASE("Work that fills one thread brings in the second, which leaves when the work stops") {
  TwoThreads t;
  // Four loops, each due again at once (gRPC's alarms fire up to ~1 ms
  // late, so two loops would leave one thread idle half the time): one
  // thread would be busy all the time, and two do twice the work (they
  // sleep), so the trial keeps the second.
  for (int i = 0; i < 4; ++i) t.Loop(milliseconds(1), milliseconds(0));
  CHECK(t.AwaitPolling(2, milliseconds(2000)) == 2);
  // Kept past its trial: polling most of the next 3 s (trials of leaving
  // take a window each, ~0.26 s here, after 0.2, 0.4, 0.8, 1.6 s: ~3/4 of
  // the time at 2). Were every trial of joining to fail, it would poll a
  // window (~0.13 s) after each of those backoffs: under a fifth.
  CHECK(t.ShareAt(2, milliseconds(3000)) > 0.5);
  CHECK(t.record().Threads() == 2);
  CHECK(t.record().most_at_once.load() == 2);
  t.StopLoops();
  // Idle: the standby's recheck closes a window with no work and it leaves.
  CHECK(t.AwaitPolling(1, milliseconds(2000)) == 1);
}

TEST_CASE("A second thread that adds no throughput leaves, and tries again ever more rarely") {
  TwoThreads t;
  std::mutex serial;  // The work of the two loops cannot overlap.
  // Four loops, as above, so that one thread always has the next one due.
  for (int i = 0; i < 4; ++i) t.Loop(microseconds(500), milliseconds(0), &serial);
  // Each trial polls with two threads for a window (256 events, ~0.15 s
  // here), after backoffs of 0.2, 0.4, 0.8, 1.6 s: ~0.15 s of the 2 s from
  // 2 s to 4 s. With a backoff that did not grow it would be ~40% of them,
  // and all of them with a thread that stayed.
  std::this_thread::sleep_for(milliseconds(2000));
  // A trial misjudged on a loaded machine (its one-thread window slowed by
  // another process) keeps the second thread a while and resets the backoff,
  // so up to three spans of 2 s are read: a backoff that never grew would
  // read ~40% in every one of them.
  double share = 1;
  for (int span = 0; span < 3 && share >= 0.25; ++span) share = t.ShareAt(2, milliseconds(2000));
  CHECK(share < 0.25);
  CHECK(t.record().ShareOffBusiest() < 0.25);
  CHECK(t.record().most_at_once.load() == 1);  // The lock held: the check can see overlap.
}

TEST_CASE("A Proceed that holds the first thread long does not hold up the other events") {
  TwoThreads t;
  // The first thread takes this loop's event and sleeps in it for 0.4 s, and
  // again right after: without the standby's rescue nothing else would be
  // delivered until it returns.
  t.Loop(milliseconds(400), milliseconds(0));
  std::this_thread::sleep_for(milliseconds(50));
  AlarmLoop* quick = t.Loop(milliseconds(0), milliseconds(5));
  std::this_thread::sleep_for(milliseconds(250));
  // Every 5 ms for 0.25 s, less the rescue's delay (20-40 ms).
  CHECK(quick->proceeds() >= 10);
}

TEST_CASE("An idle queue's standby sleeps until the first thread has work, then rescues it") {
  TwoThreads t;
  // No Proceed yet, so the first standby parks at once (kParkAfterNs since
  // the first thread's last one).
  std::this_thread::sleep_for(milliseconds(100));
  const int64_t before = t.threads().rescue_looks(0);
  std::this_thread::sleep_for(milliseconds(500));
  // Looking every kRescueNs, it would have woken about 25 times.
  CHECK(t.threads().rescue_looks(0) == before);
  // Work comes back with a Proceed that holds the first thread: the standby,
  // woken by its start, still takes the other events after kRescueNs.
  t.Loop(milliseconds(400), milliseconds(0));
  std::this_thread::sleep_for(milliseconds(50));
  AlarmLoop* quick = t.Loop(milliseconds(0), milliseconds(5));
  std::this_thread::sleep_for(milliseconds(250));
  CHECK(quick->proceeds() >= 10);
  CHECK(t.threads().rescue_looks(0) > before);
}

}  // namespace
}  // namespace imagesearch::rpc
