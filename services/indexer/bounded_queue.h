// Blocking queues joined into the indexer's pipeline. Thread-safe.
//
// BoundedQueue: a bounded multi-producer multi-consumer FIFO with close().
// Push blocks while full; Pop blocks while empty and returns nullopt once
// the queue is closed and drained.
//
// ReorderQueue: hands items out in sequence order 0, 1, 2, ... whatever
// order producers finish them in, so parallel stages keep the input's order.
#ifndef IMAGESEARCH_SERVICES_INDEXER_BOUNDED_QUEUE_H_
#define IMAGESEARCH_SERVICES_INDEXER_BOUNDED_QUEUE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

namespace imagesearch::indexer {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}

  // False if the queue was closed (the item is dropped).
  bool Push(T item) {
    std::unique_lock<std::mutex> lock(mu_);
    not_full_.wait(lock, [this] { return closed_ || items_.size() < capacity_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }

  std::optional<T> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    not_empty_.wait(lock, [this] { return closed_ || !items_.empty(); });
    if (items_.empty()) return std::nullopt;
    T item = std::move(items_.front());
    items_.pop_front();
    not_full_.notify_one();
    return item;
  }

  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable not_empty_, not_full_;
  std::deque<T> items_;
  bool closed_ = false;
};

// Push(seq, item) blocks while seq is `window` or more past the next item due,
// so at most `window` finished items wait here however long one producer
// takes; the item that is due never blocks. Every seq from 0 up must be
// pushed exactly once (or the queue closed). Pop blocks for the due item and
// returns nullopt once the queue is closed and the due item is not there.
//
// No deadlock when producers take seqs in order from a FIFO (as the
// indexer's decoders do): while the due item is unfinished, every other
// producer holds a later seq, and the due one's producer is never blocked.
template <typename T>
class ReorderQueue {
 public:
  explicit ReorderQueue(uint64_t window) : window_(window < 1 ? 1 : window) {}

  // False if the queue was closed (the item is dropped).
  bool Push(uint64_t seq, T item) {
    std::unique_lock<std::mutex> lock(mu_);
    room_.wait(lock, [&] { return closed_ || seq < next_ + window_; });
    if (closed_) return false;
    items_.emplace(seq, std::move(item));
    if (seq == next_) due_.notify_one();
    return true;
  }

  std::optional<T> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    due_.wait(lock, [this] { return closed_ || items_.count(next_) > 0; });
    auto it = items_.find(next_);
    if (it == items_.end()) return std::nullopt;
    T item = std::move(it->second);
    items_.erase(it);
    ++next_;
    room_.notify_all();
    return item;
  }

  // After Close, Pop still returns the items that are due in order, then
  // nullopt at the first gap.
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    due_.notify_all();
    room_.notify_all();
  }

 private:
  const uint64_t window_;
  std::mutex mu_;
  std::condition_variable due_, room_;
  std::map<uint64_t, T> items_;
  uint64_t next_ = 0;
  bool closed_ = false;
};

}  // namespace imagesearch::indexer

#endif  // IMAGESEARCH_SERVICES_INDEXER_BOUNDED_QUEUE_H_
