#include "compressor/report/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

#include "compressor/report/report.h"

namespace lathe::svg {
namespace {

using report_text::html_escape;

constexpr double kWidth = 960;
constexpr double kCharWidth = 6.6;  // average glyph advance at 11px, to fit labels
constexpr double kMaxBar = 72;

std::string default_format(double v) {
  return fmt::format("{:g}", v);
}

/// `text` cut to `max_chars` with an ellipsis.
std::string fit(const std::string& text, size_t max_chars) {
  if (text.size() <= max_chars || max_chars < 2) return text;
  return text.substr(0, max_chars - 1) + "\u2026";
}

std::string open_svg(double height, const std::string& title) {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" width=\"100%\" role=\"img\" "
      "class=\"plot\"><title>{}</title>\n",
      kWidth, height, html_escape(title));
}

std::string text(double x, double y, const std::string& body, const std::string& attrs = "") {
  return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\"{}>{}</text>\n", x, y,
                     attrs.empty() ? "" : " " + attrs, html_escape(body));
}

std::string rect(double x, double y, double w, double h, const std::string& fill,
                 const std::string& tooltip) {
  return fmt::format(
      "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
      "fill=\"{}\"><title>{}</title></rect>\n",
      x, y, std::max(w, 0.0), std::max(h, 0.0), html_escape(fill), html_escape(tooltip));
}

std::string legend(const std::vector<std::pair<std::string, std::string>>& entries, double x,
                   double y) {
  std::string out;
  for (const auto& [color, name] : entries) {
    out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"12\" height=\"12\" fill=\"{}\"/>\n",
                       x, y - 10, html_escape(color));
    out += text(x + 17, y, name, "class=\"legend\"");
    x += 30 + kCharWidth * name.size();
  }
  return out;
}

/// True for a "#rrggbb" colour dark enough to need white text (Rec. 709 luma below 0.45).
bool is_dark(const std::string& color) {
  if (color.size() != 7 || color[0] != '#') return false;
  const long rgb = std::strtol(color.c_str() + 1, nullptr, 16);
  const double luminance =
      (0.2126 * ((rgb >> 16) & 0xFF) + 0.7152 * ((rgb >> 8) & 0xFF) + 0.0722 * (rgb & 0xFF)) / 255;
  return luminance < 0.45;
}

/// Axis range and value → y mapping of a bar chart.
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  std::vector<double> ticks;
  double top = 0, bottom = 0;  // pixel rows of hi and lo
  double t(double v) const { return log ? std::log10(v) : v; }
  double y(double v) const { return bottom - (bottom - top) * (t(v) - t(lo)) / (t(hi) - t(lo)); }
};

Axis make_axis(const BarChart& chart, double top, double bottom) {
  Axis axis;
  axis.top = top;
  axis.bottom = bottom;
  axis.log = chart.log_scale;
  double max_v = 0, min_pos = INFINITY;
  for (const auto& s : chart.series)
    for (const auto& v : s.values)
      if (v && std::isfinite(*v)) {
        max_v = std::max(max_v, *v);
        if (*v > 0) min_pos = std::min(min_pos, *v);
      }
  if (axis.log && std::isfinite(min_pos)) {
    axis.lo = std::pow(10.0, std::floor(std::log10(min_pos)));
    axis.hi = std::pow(10.0, std::ceil(std::log10(max_v)));
    if (axis.hi <= axis.lo) axis.hi = axis.lo * 10;
    for (double t = axis.lo; t <= axis.hi * 1.0001; t *= 10) axis.ticks.push_back(t);
    return axis;
  }
  axis.log = false;
  axis.hi = chart.y_max.value_or(max_v > 0 ? max_v * 1.08 : 1.0);
  axis.ticks = nice_ticks(0, axis.hi);
  if (!chart.y_max && axis.ticks.size() >= 2) {
    const double step = axis.ticks[1] - axis.ticks[0];
    axis.hi = std::ceil(axis.hi / step - 1e-9) * step;
    if (axis.ticks.back() < axis.hi - 1e-9 * step) axis.ticks.push_back(axis.hi);
  }
  return axis;
}

std::string draw_axis(const Axis& axis, const BarChart& chart, double left, double right) {
  const auto& format = chart.format ? chart.format : default_format;
  std::string out;
  for (double t : axis.ticks) {
    const double y = axis.y(t);
    out += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" class=\"grid\"/>\n", left, y,
        right, y);
    out += text(left - 6, y + 4, format(t), "class=\"tick\" text-anchor=\"end\"");
  }
  out += fmt::format(
      "<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" class=\"axis\"/>\n", left,
      axis.bottom, right);
  const double mid = (axis.top + axis.bottom) / 2;
  out += text(
      14, mid, chart.y_label + (axis.log ? " (log scale)" : ""),
      fmt::format("class=\"caption\" text-anchor=\"middle\" transform=\"rotate(-90 14 {:.1f})\"",
                  mid));
  return out;
}

/// Category labels under the groups, thinned to every k-th when they would collide.
std::string draw_categories(const std::vector<std::string>& categories, double left, double group,
                            double y) {
  size_t longest = 1;
  for (const auto& c : categories) longest = std::max(longest, c.size());
  const size_t max_chars = std::max<size_t>(3, static_cast<size_t>(group / kCharWidth) - 1);
  const size_t shown = std::min(longest, max_chars);
  const size_t stride =
      std::max<size_t>(1, static_cast<size_t>(std::ceil((shown * kCharWidth + 6) / group)));
  std::string out;
  for (size_t i = 0; i < categories.size(); i += stride) {
    out += text(left + (i + 0.5) * group, y,
                stride > 1 ? categories[i] : fit(categories[i], max_chars),
                "class=\"tick\" text-anchor=\"middle\"");
  }
  return out;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int count) {
  std::vector<double> ticks;
  if (!(hi > lo) || count < 1) return {lo};
  const double raw = (hi - lo) / count;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

std::string bar_chart(const BarChart& chart) {
  const double left = 76, right = kWidth - 16, top = 40, bottom = chart.height - 30;
  const Axis axis = make_axis(chart, top, bottom);
  const auto& format = chart.format ? chart.format : default_format;
  std::string out = open_svg(chart.height, chart.title);
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& s : chart.series) keys.emplace_back(s.color, s.name);
  out += legend(keys, left, 18);
  out += draw_axis(axis, chart, left, right);
  const size_t n = std::max<size_t>(1, chart.categories.size()),
               k = std::max<size_t>(1, chart.series.size());
  const double group = (right - left) / n;
  for (size_t j = 0; j < chart.series.size(); ++j) {
    const Series& s = chart.series[j];
    // Bars are at most kMaxBar wide, so that two categories do not become two slabs.
    const double width = chart.overlay ? std::min(group * 0.78, kMaxBar) * (1.0 - 0.35 * j / k)
                                       : std::min(group * 0.8 / k, kMaxBar);
    for (size_t i = 0; i < s.values.size() && i < chart.categories.size(); ++i) {
      const auto& v = s.values[i];
      if (!v || (axis.log && *v <= 0)) continue;
      const double x = chart.overlay ? left + (i + 0.5) * group - width / 2
                                     : left + (i + 0.5) * group + (j - k / 2.0) * width;
      const double shown = std::isfinite(*v) ? std::min(*v, axis.hi) : axis.hi;
      const double y = axis.y(std::max(shown, axis.lo));
      out += rect(x, y, width, bottom - y, s.color,
                  fmt::format("{} · {}: {}", chart.categories[i], s.name, format(*v)));
      const bool label = (!chart.overlay || j + 1 == chart.series.size()) &&
                         width >= 9 * kCharWidth / 2 &&
                         format(*v).size() * kCharWidth <= std::max(width, group * 0.95);
      if (label)
        out += text(x + width / 2, y - 4, format(*v), "class=\"value\" text-anchor=\"middle\"");
    }
  }
  out += draw_categories(chart.categories, left, group, bottom + 16);
  return out + "</svg>\n";
}

std::string size_bars(const std::string& title, double before, double after,
                      const std::string& before_label, const std::string& after_label) {
  const double left = 76, right = kWidth - 140, height = 110;
  const double max_v = std::max({before, after, 1.0});
  std::string out = open_svg(height, title);
  const std::pair<const char*, double> rows[] = {{"before", before}, {"after", after}};
  const std::string colors[] = {"#9aa5b1", "#2f6fdf"};
  const std::string labels[] = {before_label, after_label};
  for (int i = 0; i < 2; ++i) {
    const double y = 16 + i * 44, w = (right - left) * rows[i].second / max_v;
    out += text(left - 8, y + 21, rows[i].first, "class=\"tick\" text-anchor=\"end\"");
    out += rect(left, y, w, 30, colors[i], std::string(rows[i].first) + ": " + labels[i]);
    out += text(left + w + 8, y + 20, labels[i], "class=\"value\"");
  }
  return out + "</svg>\n";
}

std::string heatmap(const Heatmap& map) {
  size_t longest = 4;
  for (const auto& r : map.rows) longest = std::max(longest, r.size());
  const double label_w = std::min(300.0, static_cast<double>(longest) * kCharWidth + 24.5);
  const size_t ncols = std::max<size_t>(1, map.columns.size());
  const double cell_w = std::min(64.0, (kWidth - label_w - 16) / ncols), cell_h = 22, top = 26;
  const double height = top + map.rows.size() * cell_h + 44;
  std::string out = open_svg(height, map.title);
  out += draw_categories(map.columns, label_w, cell_w, top - 8);
  for (size_t r = 0; r < map.rows.size(); ++r) {
    const double y = top + r * cell_h;
    out +=
        text(label_w - 8, y + 15,
             fit(map.rows[r], std::min(longest, static_cast<size_t>((label_w - 24) / kCharWidth))),
             "class=\"tick\" text-anchor=\"end\"");
    for (size_t c = 0; c < map.columns.size(); ++c) {
      const auto& v = map.cells[r][c];
      const double x = label_w + c * cell_w;
      out += rect(x + 0.5, y + 0.5, cell_w - 1, cell_h - 1, v ? map.color(*v) : map.empty_color,
                  map.tooltips[r][c]);
      if (v && map.label) {
        const std::string body = map.label(*v);
        if (body.size() * kCharWidth * 0.9 <= cell_w - 2) {
          const char* ink = is_dark(map.color(*v)) ? " style=\"fill:#ffffff\"" : "";
          out += text(x + cell_w / 2, y + 15, body,
                      std::string("class=\"cell\" text-anchor=\"middle\"") + ink);
        }
      }
    }
  }
  out += legend(map.legend, label_w, height - 14);
  return out + "</svg>\n";
}

}  // namespace lathe::svg
