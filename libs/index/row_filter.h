// A set of rows (dense row numbers 0..N-1) as a bitmap: which rows a filtered
// search may return. Built per query from the attribute columns
// (libs/serving/filter.h); read by the searcher. Value type; thread-compatible.
#ifndef IMAGESEARCH_LIBS_INDEX_ROW_FILTER_H_
#define IMAGESEARCH_LIBS_INDEX_ROW_FILTER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace imagesearch::index {

class RowFilter {
 public:
  // `rows` rows, none allowed (or all, with `all`).
  explicit RowFilter(size_t rows, bool all = false)
      : rows_(rows), words_((rows + 63) / 64, all ? ~uint64_t{0} : 0) {
    if (all) ClearTail();
  }
  size_t rows() const { return rows_; }
  bool Allows(uint32_t row) const {
    return row < rows_ && (words_[row >> 6] >> (row & 63) & 1) != 0;
  }
  void Allow(uint32_t row) {
    if (row < rows_) words_[row >> 6] |= uint64_t{1} << (row & 63);
  }
  void Disallow(uint32_t row) {
    if (row < rows_) words_[row >> 6] &= ~(uint64_t{1} << (row & 63));
  }
  // Rows allowed.
  size_t Count() const {
    size_t n = 0;
    for (uint64_t w : words_) n += static_cast<size_t>(__builtin_popcountll(w));
    return n;
  }
  // Set operations with a filter over the same rows.
  void IntersectWith(const RowFilter& o) {
    for (size_t i = 0; i < words_.size(); ++i) words_[i] &= o.words_[i];
  }
  void UnionWith(const RowFilter& o) {
    for (size_t i = 0; i < words_.size(); ++i) words_[i] |= o.words_[i];
  }
  void Subtract(const RowFilter& o) {
    for (size_t i = 0; i < words_.size(); ++i) words_[i] &= ~o.words_[i];
  }
  // Calls f(row) for every allowed row, ascending.
  template <typename F>
  void ForEach(F f) const {
    ForEachIn(0, rows_, f);
  }
  // Calls f(row) for every allowed row in [begin, end), ascending.
  template <typename F>
  void ForEachIn(size_t begin, size_t end, F f) const {
    if (end > rows_) end = rows_;
    if (begin >= end) return;
    for (size_t i = begin >> 6; i <= (end - 1) >> 6; ++i) {
      for (uint64_t w = WordIn(i, begin, end); w != 0; w &= w - 1) {
        f(static_cast<uint32_t>(i * 64 + static_cast<size_t>(__builtin_ctzll(w))));
      }
    }
  }
  // Rows allowed in [begin, end).
  size_t CountIn(size_t begin, size_t end) const {
    if (end > rows_) end = rows_;
    if (begin >= end) return 0;
    size_t n = 0;
    for (size_t i = begin >> 6; i <= (end - 1) >> 6; ++i) {
      n += static_cast<size_t>(__builtin_popcountll(WordIn(i, begin, end)));
    }
    return n;
  }

 private:
  // Word i with the bits outside [begin, end) cleared.
  uint64_t WordIn(size_t i, size_t begin, size_t end) const {
    uint64_t w = words_[i];
    if (i == begin >> 6) w &= ~uint64_t{0} << (begin & 63);
    if (i == (end - 1) >> 6 && (end & 63) != 0) w &= (uint64_t{1} << (end & 63)) - 1;
    return w;
  }
  void ClearTail() {
    if (rows_ % 64 != 0 && !words_.empty()) words_.back() &= (uint64_t{1} << (rows_ % 64)) - 1;
  }
  size_t rows_;
  std::vector<uint64_t> words_;
};

}  // namespace imagesearch::index

#endif  // IMAGESEARCH_LIBS_INDEX_ROW_FILTER_H_
