// Inline SVG charts for report.html: static markup, no scripts; hover text through <title>
// elements. Every label is HTML-escaped here, so callers pass plain text. Torch-free.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace lathe::svg {

/// One series of a bar chart: a value (or none) per category.
struct Series {
  std::string name;
  std::string color;  ///< CSS colour, e.g. "#2f6fdf"
  std::vector<std::optional<double>> values;
};

struct BarChart {
  std::string title;    ///< accessible title (<title> of the <svg>)
  std::string y_label;  ///< axis caption
  std::vector<std::string> categories;
  std::vector<Series> series;
  /// Series drawn over each other (the first widest, behind) instead of side by side: for "kept of
  /// before" charts.
  bool overlay = false;
  bool log_scale = false;                     ///< log10 axis; values <= 0 are not drawn
  std::optional<double> y_max;                ///< fixed top of the axis (e.g. 1.0 for accuracy)
  std::function<std::string(double)> format;  ///< tick and value labels
  int height = 300;
};

/// A grouped (or overlaid) vertical bar chart with a legend, y ticks and category labels.
std::string bar_chart(const BarChart& chart);

/// Two horizontal bars comparing sizes; `labels` are shown at the bar ends.
std::string size_bars(const std::string& title, double before, double after,
                      const std::string& before_label, const std::string& after_label);

struct Heatmap {
  std::string title;
  std::vector<std::string> columns, rows;
  /// cells[row][column]: value or none (no tensor there).
  std::vector<std::vector<std::optional<double>>> cells;
  std::vector<std::vector<std::string>> tooltips;           ///< same shape as cells
  std::function<std::string(double)> color;                 ///< fill for a value
  std::function<std::string(double)> label;                 ///< short text inside a cell
  std::vector<std::pair<std::string, std::string>> legend;  ///< (colour, text)
  std::string empty_color = "#ffffff";                      ///< fill of a cell without a value
};

/// A grid of coloured cells (rows × columns) with row and column labels and a legend.
std::string heatmap(const Heatmap& map);

/// Values at which to draw ticks between lo and hi: 1, 2 or 5 × 10^k steps (about `count` ticks).
std::vector<double> nice_ticks(double lo, double hi, int count = 5);

}  // namespace lathe::svg
