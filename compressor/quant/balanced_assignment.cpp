#include "compressor/quant/balanced_assignment.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

const char* const kWhere = "balanced assignment";

/// One heap entry: moving `row` out of the heap's source bin into its target bin costs `delta`.
/// Valid while the row's move stamp still equals `stamp` (each move of a row bumps its stamp).
struct Move {
  double delta;
  int32_t row;
  uint32_t stamp;
};

/// std heap order for a min-heap: the top is the least delta, then the lower row.
bool after(const Move& x, const Move& y) {
  if (x.delta != y.delta) return x.delta > y.delta;
  if (x.row != y.row) return x.row > y.row;
  return x.stamp > y.stamp;
}

class Solver {
 public:
  Solver(const std::vector<double>& cost, int32_t rows, int32_t bins, int64_t capacity)
      : cost_(cost),
        rows_(rows),
        bins_(bins),
        capacity_(capacity),
        bin_of_(rows, -1),
        stamp_(rows, 0),
        count_(bins, 0),
        slot_of_(bins, -1),
        potential_(bins, 0.0),
        dist_(bins),
        real_(bins),
        parent_(bins),
        via_(bins),
        done_(bins) {}

  std::vector<int32_t> solve() {
    for (int32_t j = 0; j < rows_; ++j) add_row(j);
    return bin_of_;
  }

 private:
  double c(int32_t row, int32_t bin) const {
    return cost_[static_cast<size_t>(row) * bins_ + static_cast<size_t>(bin)];
  }

  /// The heap of moves from bin a (which has a slot) to bin b.
  std::vector<Move>& heap(int32_t a, int32_t b) {
    return heaps_[static_cast<size_t>(slot_of_[a]) * bins_ + static_cast<size_t>(b)];
  }

  /// Puts `row` into `bin` (the caller keeps the counts) and offers its moves out of it. Heaps are
  /// allocated only for bins that ever held a row, so memory stays O(rows·bins) when bins > rows.
  void place(int32_t row, int32_t bin) {
    bin_of_[row] = bin;
    const uint32_t stamp = ++stamp_[row];
    if (slot_of_[bin] < 0) {
      slot_of_[bin] = slots_++;
      heaps_.resize(static_cast<size_t>(slots_) * bins_);
    }
    const double here = c(row, bin);
    for (int32_t b = 0; b < bins_; ++b) {
      if (b == bin) continue;
      std::vector<Move>& h = heap(bin, b);
      h.push_back(Move{c(row, b) - here, row, stamp});
      std::push_heap(h.begin(), h.end(), after);
    }
    entries_ += bins_ - 1;
  }

  /// The cheapest valid move from bin a to bin b (stale tops dropped), or nullptr if none.
  const Move* edge(int32_t a, int32_t b) {
    std::vector<Move>& h = heap(a, b);
    while (!h.empty()) {
      const Move& top = h.front();
      if (stamp_[top.row] == top.stamp) return &top;
      std::pop_heap(h.begin(), h.end(), after);
      h.pop_back();
      --entries_;
    }
    return nullptr;
  }

  /// Drops every stale entry once they outnumber the live ones 3 to 1, so the heaps stay
  /// O(rows·bins) however many moves were made.
  void compact_if_needed(int64_t placed) {
    const int64_t live = placed * (bins_ - 1);
    if (entries_ <= 4 * live + 1024) return;
    entries_ = 0;
    for (std::vector<Move>& h : heaps_) {
      h.erase(std::remove_if(h.begin(), h.end(),
                             [this](const Move& m) { return stamp_[m.row] != m.stamp; }),
              h.end());
      std::make_heap(h.begin(), h.end(), after);
      entries_ += static_cast<int64_t>(h.size());
    }
  }

  /// Adds row j along a shortest path from j to a bin with free room, keeping the assignment of
  /// rows 0..j optimal. dist_ are distances reduced by potential_, real_ the path costs themselves.
  void add_row(int32_t j) {
    for (int32_t b = 0; b < bins_; ++b) {
      real_[b] = c(j, b);
      dist_[b] = real_[b] - potential_[b];
      parent_[b] = -1;
      via_[b] = -1;
      done_[b] = 0;
    }
    // Dijkstra over the bins (dense: bins is small). Empty bins have no outgoing edges, so once
    // every nonempty bin is final the remaining distances are final too.
    int32_t nonempty_left = occupied_;
    while (nonempty_left > 0) {
      int32_t a = -1;
      for (int32_t b = 0; b < bins_; ++b) {
        if (!done_[b] && (a < 0 || dist_[b] < dist_[a])) a = b;
      }
      done_[a] = 1;
      if (count_[a] == 0) continue;
      --nonempty_left;
      for (int32_t b = 0; b < bins_; ++b) {
        if (done_[b]) continue;
        const Move* m = edge(a, b);
        if (m == nullptr) continue;
        const double d = dist_[a] + (m->delta + potential_[a] - potential_[b]);
        if (d < dist_[b]) {
          dist_[b] = d;
          real_[b] = real_[a] + m->delta;
          parent_[b] = a;
          via_[b] = m->row;
        }
      }
    }
    int32_t target = -1;
    for (int32_t b = 0; b < bins_; ++b) {
      if (count_[b] < capacity_ && (target < 0 || real_[b] < real_[target])) target = b;
    }
    // Apply the path's moves back from the target, then put row j into the path's first bin.
    int32_t b = target;
    while (parent_[b] >= 0) {
      place(via_[b], b);
      b = parent_[b];
    }
    place(j, b);
    if (count_[target]++ == 0) ++occupied_;
    potential_ = real_;
    compact_if_needed(static_cast<int64_t>(j) + 1);
  }

  const std::vector<double>& cost_;
  const int32_t rows_;
  const int32_t bins_;
  const int64_t capacity_;
  std::vector<int32_t> bin_of_;
  std::vector<uint32_t> stamp_;
  std::vector<int64_t> count_;
  int32_t occupied_ = 0;  ///< bins with count_ > 0
  std::vector<int32_t> slot_of_;
  int32_t slots_ = 0;
  std::vector<std::vector<Move>> heaps_;  ///< [slot of source bin][target bin]
  int64_t entries_ = 0;                   ///< entries over all heaps, stale ones included
  std::vector<double> potential_;
  std::vector<double> dist_;
  std::vector<double> real_;
  std::vector<int32_t> parent_;
  std::vector<int32_t> via_;
  std::vector<char> done_;
};

}  // namespace

std::vector<int32_t> balanced_assignment(const std::vector<double>& cost, int64_t rows,
                                         int64_t bins, int64_t capacity) {
  constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();
  if (rows < 1 || rows > kMaxIndex) {
    throw ConfigError(kWhere, "rows",
                      "must be 1.." + std::to_string(kMaxIndex) + ", got " + std::to_string(rows));
  }
  if (bins < 1 || bins > kMaxIndex) {
    throw ConfigError(kWhere, "bins",
                      "must be 1.." + std::to_string(kMaxIndex) + ", got " + std::to_string(bins));
  }
  if (capacity < 1) {
    throw ConfigError(kWhere, "capacity", "must be at least 1, got " + std::to_string(capacity));
  }
  // rows, bins < 2^31, so neither product overflows (capacity is capped at rows first).
  if (rows > bins * std::min(capacity, rows)) {
    throw ConfigError(kWhere, "capacity",
                      std::to_string(rows) + " rows do not fit in " + std::to_string(bins) +
                          " bins of " + std::to_string(capacity));
  }
  if (static_cast<uint64_t>(cost.size()) != static_cast<uint64_t>(rows * bins)) {
    throw ConfigError(kWhere, "cost",
                      "expected " + std::to_string(rows) + " x " + std::to_string(bins) + " = " +
                          std::to_string(rows * bins) + " values, got " +
                          std::to_string(cost.size()));
  }
  for (size_t i = 0; i < cost.size(); ++i) {
    if (!std::isfinite(cost[i])) {
      throw DataError(kWhere, "cost",
                      "row " + std::to_string(i / static_cast<size_t>(bins)) + ", bin " +
                          std::to_string(i % static_cast<size_t>(bins)) + " is not finite");
    }
  }
  return Solver(cost, static_cast<int32_t>(rows), static_cast<int32_t>(bins), capacity).solve();
}

}  // namespace lathe
