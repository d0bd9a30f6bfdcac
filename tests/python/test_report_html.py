"""report.html renders in a real browser: `lathe report` re-renders the committed sample report
(tests/data/report_sample.json, a 4-layer, 8-expert Mixtral with experts pruned and RTN int4/int8),
headless Chromium screenshots it, and the PNG must show the plots (many colours, the chart colours
present), not a blank or broken page. Skips when chromium is not installed (scripts/setup.sh installs
it)."""
import collections
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from reference import LATHE_BIN, SOURCE_DIR

SAMPLE = SOURCE_DIR / "tests" / "data" / "report_sample.json"
WIDTH, HEIGHT = 1280, 2400


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def decode_png(path: Path):
    """(width, height, rows) of an 8-bit RGB/RGBA, non-interlaced PNG; rows are bytes objects."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, idat = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for r in range(height):
        kind = raw[r * (stride + 1)]
        line = bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line if bpp == 3 else bytes(x for j, x in enumerate(line) if j % 4 != 3)))
        prev = line
    return width, height, rows


def colour_counts(rows):
    counts = collections.Counter()
    for row in rows:
        counts.update(row[i:i + 3] for i in range(0, len(row), 3))
    return counts


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    (out / "report").mkdir()
    shutil.copy(SAMPLE, out / "report" / "report.json")
    proc = subprocess.run([LATHE_BIN, "report", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out / "report"


def test_html_is_self_contained_with_one_svg_per_plot(rendered):
    html = (rendered / "report.html").read_text()
    # size, perplexity, accuracy, experts kept, bits per tensor, reconstruction error
    assert html.count("<svg") == 6
    assert "<script" not in html.lower()
    for attr in ("src=", "href=", "@import", "url("):
        assert attr not in html, f"external resource reference {attr!r}"
    markdown = (rendered / "report.md").read_text()
    assert "| perplexity | prose.txt | 21.0735 | 21.9804 | +4.30% | +5.00% | ok |" in markdown
    assert "| 2 | 8 | 5 | 5.76% | 1.55 s |" in markdown


def test_html_renders_in_headless_chromium(rendered, tmp_path):
    chromium = find_chromium()
    if not chromium:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/setup.sh does)")
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         f"--window-size={WIDTH},{HEIGHT}", (rendered / "report.html").as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    width, height, rows = decode_png(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    counts = colour_counts(rows)
    total = width * height
    background, most = counts.most_common(1)[0]
    assert most < 0.8 * total, f"page is mostly one colour {background.hex()}"
    assert len(counts) > 200, f"only {len(counts)} distinct colours: plots or text missing"
    # The chart fills: "after" bars, kept experts, 4-bit cells (same teal), before bars.
    for hex_colour, what in (("2f6fdf", "after bars"), ("2a9d8f", "kept experts / 4-bit cells"),
                             ("9aa5b1", "before bars"), ("457b9d", "8-bit cells")):
        pixels = counts[bytes.fromhex(hex_colour)]
        assert pixels > 500, f"{what} (#{hex_colour}) cover only {pixels} pixels"
