// balanced_assignment on hand-made costs with a known optimum, against brute force on small random
// ones, its errors and its determinism. tests/python/test_balanced_assignment.py checks it against
// a dense assignment solver on many more.
#include "compressor/quant/balanced_assignment.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "compressor/common/errors.h"

namespace lathe {
namespace {

double total(const std::vector<double>& cost, int64_t bins, const std::vector<int32_t>& bin_of) {
  double sum = 0;
  for (size_t row = 0; row < bin_of.size(); ++row) sum += cost[row * bins + bin_of[row]];
  return sum;
}

/// Every row has a bin in range and no bin holds more than `capacity`.
void expect_valid(const std::vector<int32_t>& bin_of, int64_t rows, int64_t bins,
                  int64_t capacity) {
  ASSERT_EQ(static_cast<int64_t>(bin_of.size()), rows);
  std::vector<int64_t> count(bins, 0);
  for (const int32_t b : bin_of) {
    ASSERT_GE(b, 0);
    ASSERT_LT(b, bins);
    ++count[b];
  }
  for (const int64_t n : count) EXPECT_LE(n, capacity);
}

/// The least total over every assignment that respects the capacity (bins^rows of them).
double brute_force(const std::vector<double>& cost, int64_t rows, int64_t bins, int64_t capacity) {
  std::vector<int32_t> bin_of(rows, 0);
  std::vector<int64_t> count(bins, 0);
  double best = std::numeric_limits<double>::infinity();
  while (true) {
    std::fill(count.begin(), count.end(), 0);
    bool fits = true;
    for (const int32_t b : bin_of) fits = fits && ++count[b] <= capacity;
    if (fits) best = std::min(best, total(cost, bins, bin_of));
    int64_t i = 0;  // next assignment: count in base `bins`
    while (i < rows && ++bin_of[i] == bins) bin_of[i++] = 0;
    if (i == rows) return best;
  }
}

TEST(BalancedAssignment, EachRowTakesItsCheapestBinWhenRoomAllows) {
  const std::vector<double> cost = {3, 1, 2,  //
                                    0, 5, 5,  //
                                    4, 4, -1};
  EXPECT_EQ(balanced_assignment(cost, 3, 3, 3), (std::vector<int32_t>{1, 0, 2}));
}

TEST(BalancedAssignment, GreedyIsWrongAndTheFirstRowMoves) {
  // Row 0 first takes bin 0; row 1 wants bin 0 far more, so row 0 moves to bin 1 (1 + 0 < 0 + 10).
  const std::vector<double> cost = {0, 1,  //
                                    0, 10};
  EXPECT_EQ(balanced_assignment(cost, 2, 2, 1), (std::vector<int32_t>{1, 0}));
}

TEST(BalancedAssignment, AugmentsThroughAnotherBin) {
  // Row 2 can only go cheaply to bin 0: row 0 moves on to bin 1, which pushes row 1 on to bin 2.
  // The only assignment of total 10; every other one costs at least 100.
  const std::vector<double> cost = {0,   5,   100,  //
                                    100, 0,   5,    //
                                    0,   100, 100};
  const std::vector<int32_t> bin_of = balanced_assignment(cost, 3, 3, 1);
  EXPECT_EQ(bin_of, (std::vector<int32_t>{1, 2, 0}));
  EXPECT_EQ(total(cost, 3, bin_of), 10);
}

TEST(BalancedAssignment, FullBinsKeepTheRowsThatLoseMostByLeaving) {
  // Every row prefers bin 0 (room for 2); rows 2 and 3 lose most in bin 1, so they keep bin 0.
  const std::vector<double> cost = {0, 1,  //
                                    0, 2,  //
                                    0, 3,  //
                                    0, 4};
  const std::vector<int32_t> bin_of = balanced_assignment(cost, 4, 2, 2);
  EXPECT_EQ(bin_of, (std::vector<int32_t>{1, 1, 0, 0}));
  EXPECT_EQ(total(cost, 2, bin_of), 3);
}

TEST(BalancedAssignment, OneBinTakesEveryRow) {
  EXPECT_EQ(balanced_assignment({2.5, -1, 7}, 3, 1, 3), (std::vector<int32_t>{0, 0, 0}));
}

TEST(BalancedAssignment, MoreBinsThanRows) {
  const std::vector<double> cost = {5, 4, 3, 2, 1, 0,  //
                                    5, 4, 3, 2, 1, 0};
  const std::vector<int32_t> bin_of = balanced_assignment(cost, 2, 6, 1);
  expect_valid(bin_of, 2, 6, 1);
  EXPECT_EQ(total(cost, 6, bin_of), 1);
}

TEST(BalancedAssignment, MatchesBruteForceOnSmallRandomCases) {
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 300; ++trial) {
    const int64_t bins = 1 + static_cast<int64_t>(rng() % 4);
    const int64_t rows = 1 + static_cast<int64_t>(rng() % 7);
    const int64_t capacity = (rows + bins - 1) / bins + static_cast<int64_t>(rng() % 2);
    std::vector<double> cost(rows * bins);
    // Half with many ties (small integers), half with distinct real values.
    for (double& c : cost) {
      c = trial % 2 == 0 ? static_cast<double>(rng() % 3) : std::ldexp(rng() % 100000, -10) - 40;
    }
    const std::vector<int32_t> bin_of = balanced_assignment(cost, rows, bins, capacity);
    expect_valid(bin_of, rows, bins, capacity);
    EXPECT_EQ(total(cost, bins, bin_of), brute_force(cost, rows, bins, capacity))
        << "trial " << trial << ": " << rows << " rows, " << bins << " bins of " << capacity;
  }
}

TEST(BalancedAssignment, SameInputSameOutput) {
  std::mt19937 rng(7);
  const int64_t rows = 600, bins = 8, capacity = 75;
  std::vector<double> cost(rows * bins);
  for (double& c : cost) c = static_cast<double>(rng() % 4);  // many ties
  const std::vector<int32_t> first = balanced_assignment(cost, rows, bins, capacity);
  expect_valid(first, rows, bins, capacity);
  EXPECT_EQ(balanced_assignment(cost, rows, bins, capacity), first);
}

TEST(BalancedAssignment, RefusesBadSizes) {
  const std::vector<double> four(4, 0.0);
  EXPECT_THROW(balanced_assignment(four, 0, 2, 1), ConfigError);
  EXPECT_THROW(balanced_assignment(four, 2, 0, 1), ConfigError);
  EXPECT_THROW(balanced_assignment(four, 2, 2, 0), ConfigError);
  EXPECT_THROW(balanced_assignment(four, -2, -2, 1), ConfigError);
  EXPECT_THROW(balanced_assignment(four, 2, 3, 1), ConfigError);  // 4 values for 2×3
  try {
    balanced_assignment(std::vector<double>(10, 0.0), 5, 2, 2);
    FAIL() << "5 rows in 2 bins of 2 accepted";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "balanced assignment: capacity: 5 rows do not fit in 2 bins of 2");
  }
}

TEST(BalancedAssignment, RefusesNonFiniteCosts) {
  std::vector<double> cost = {0, 1, 2, 3};
  cost[3] = std::numeric_limits<double>::quiet_NaN();
  try {
    balanced_assignment(cost, 2, 2, 1);
    FAIL() << "NaN accepted";
  } catch (const DataError& e) {
    EXPECT_STREQ(e.what(), "balanced assignment: cost: row 1, bin 1 is not finite");
  }
  cost[3] = -std::numeric_limits<double>::infinity();
  EXPECT_THROW(balanced_assignment(cost, 2, 2, 1), DataError);
}

}  // namespace
}  // namespace lathe
