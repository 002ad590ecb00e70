"""The report model: one list of sections, rendered to Markdown as written and to escaped HTML."""

from __future__ import annotations

import re

import pytest

from dukd_ray.report import Report


def _report() -> Report:
    report = Report("run <1> & co").heading("run <1> & co", level=1).bullets(["a < b", "x & y"])
    report.heading("Results").table(["model", "Set5"], [["bicubic", "28.42 / 0.8104"], ["a|b <c>", "1 & 2"]])
    report.paragraph("see `docs/distill.md`, **best** < 1").image("crops.png", "crops & co")
    return report.code("train:\n  lr: 0.0001\n", "yaml")


def test_markdown_keeps_the_text_and_tables_line_up():
    assert _report().to_markdown() == (
        "# run <1> & co\n\n- a < b\n- x & y\n\n## Results\n\n"
        "| model | Set5 |\n|---|---|\n| bicubic | 28.42 / 0.8104 |\n| a\\|b <c> | 1 & 2 |\n\n"
        "see `docs/distill.md`, **best** < 1\n\n![crops & co](crops.png)\n\n"
        "```yaml\ntrain:\n  lr: 0.0001\n```\n"
    )


def test_html_escapes_every_text_and_renders_the_same_sections():
    page = _report().to_html()
    assert "<title>run &lt;1&gt; &amp; co</title>" in page and "<h1>run &lt;1&gt; &amp; co</h1>" in page
    assert "<ul><li>a &lt; b</li><li>x &amp; y</li></ul>" in page and "<h2>Results</h2>" in page
    assert "<tr><th>model</th><th>Set5</th></tr><tr><td>bicubic</td><td>28.42 / 0.8104</td></tr>" in page
    assert "<td>a|b &lt;c&gt;</td><td>1 &amp; 2</td>" in page
    assert "<p>see <code>docs/distill.md</code>, <strong>best</strong> &lt; 1</p>" in page
    assert '<img src="crops.png" alt="crops &amp; co">' in page
    assert "<pre>train:\n  lr: 0.0001\n</pre>" in page


def test_both_formats_render_the_same_sections_in_order():
    report = _report()
    blocks = report.to_markdown().split("\n\n")
    assert [b.split(" ", 1)[0][:3] for b in blocks] == ["#", "-", "##", "|", "see", "![c", "```"]
    body = report.to_html().split("<body>\n", 1)[1]
    assert re.findall(r"^<(\w+)", body, re.M) == ["h1", "ul", "h2", "table", "p", "img", "pre"]
    assert len(blocks) == len(report.sections) == 7


def test_bad_sections_are_refused():
    with pytest.raises(ValueError, match="has 1 cells, the header 2"):
        Report("t").table(["a", "b"], [["only one"]])
    with pytest.raises(ValueError, match="level"):
        Report("t").heading("h", level=7)
