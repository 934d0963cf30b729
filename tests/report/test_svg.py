"""SVG charts: round ticks by hand, one mark per line and point, a bar per known value."""

from __future__ import annotations

import re

from ownlm.report.svg import bar_chart, line_chart, nice_ticks


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 100) == [0, 25, 50, 75, 100]
    assert nice_ticks(0, 0.037) == [0, 0.01, 0.02, 0.03, 0.04]
    assert nice_ticks(0, 7) == [0, 2, 4, 6, 8]
    assert nice_ticks(5, 5) == [4, 6, 8, 10]  # a flat series still gets an axis (5..10)


def test_line_chart_draws_a_path_and_a_point_per_value() -> None:
    series = {"a": [(0.0, 1.0), (60.0, 2.0), (120.0, 3.0)], "b": [(60.0, 5.0)], "c": []}
    colors = {"a": "#111111", "b": "#222222", "c": "#333333"}
    svg = line_chart("tfp", "TFP", series, colors, bucket="minute", y_format=str)
    assert svg.count('class="mark line"') == 1  # b's one point needs no line, c has no points
    assert svg.count('class="mark point"') == 4
    assert 'data-plot="tfp"' in svg and 'stroke="#111111"' in svg
    # the highest value sits highest (smallest y), the axis runs from 0 to 6
    ys = [float(y) for y in re.findall(r'data-series="a" cx="[\d.]+" cy="([\d.]+)"', svg)]
    assert ys[0] > ys[1] > ys[2]


def test_bar_chart_scales_to_x_max_and_skips_unknown() -> None:
    svg = bar_chart(
        "success", "S", {"a": 0.5, "b": None, "c": 1.0}, {"a": "#1", "b": "#2", "c": "#3"},
        x_format=str, x_max=1.0,
    )  # fmt: skip
    widths = [float(w) for w in re.findall(r'class="mark bar"[^>]*width="([\d.]+)"', svg)]
    assert len(widths) == 2 and widths[1] == 2 * widths[0]
    assert "no feedback" in svg


def test_no_data_says_so() -> None:
    svg = line_chart("cost", "C", {"a": []}, {"a": "#1"}, bucket="day", y_format=str)
    assert "no data" in svg and "mark" not in svg
