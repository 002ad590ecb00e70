"""A small document model for the reports people read, rendered to Markdown and to (escaped) HTML.

Why: the run report, the quickstart report and the sweep summary are each built once as a list of
sections, so `report.md` and `report.html` cannot drift apart. Text may use Markdown's inline
`code` and **bold**: Markdown keeps it as written, HTML escapes the text and renders those two.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dukd_ray.storage import join, write_bytes_atomic

_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto} table{border-collapse:collapse} "
    "td,th{border:1px solid #ccc;padding:4px} img{max-width:100%}"
)
_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
]


def _inline_html(text: str) -> str:
    out = html.escape(text)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


class Section(Protocol):
    def to_markdown(self) -> str: ...
    def to_html(self) -> str: ...


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 6:
            raise ValueError(f"heading level must be 1..6, got level={self.level}")

    def to_markdown(self) -> str:
        return f"{'#' * self.level} {self.text}"

    def to_html(self) -> str:
        return f"<h{self.level}>{_inline_html(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str

    def to_markdown(self) -> str:
        return self.text

    def to_html(self) -> str:
        return f"<p>{_inline_html(self.text)}</p>"


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table row {list(row)} has {len(row)} cells, the header {len(self.header)}")

    def to_markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |"

        return "\n".join([line(self.header), "|" + "---|" * len(self.header), *map(line, self.rows)])

    def to_html(self) -> str:
        head = "".join(f"<th>{_inline_html(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"


@dataclass(frozen=True)
class Image:
    """An image file beside the report (a relative `src`), so both renderings link the same file."""

    src: str
    alt: str

    def to_markdown(self) -> str:
        return f"![{self.alt}]({self.src})"

    def to_html(self) -> str:
        return f'<img src="{html.escape(self.src)}" alt="{html.escape(self.alt)}">'


@dataclass(frozen=True)
class BulletList:
    items: tuple[str, ...]

    def to_markdown(self) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def to_html(self) -> str:
        return "<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in self.items) + "</ul>"


@dataclass(frozen=True)
class CodeBlock:
    """Verbatim text (a config file): fenced in Markdown, preformatted and escaped in HTML."""

    text: str
    language: str = ""

    def to_markdown(self) -> str:
        return f"```{self.language}\n{self.text.rstrip()}\n```"

    def to_html(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"


@dataclass
class Report:
    """Sections in reading order; `title` names the HTML page (add a level-1 heading to show it)."""

    title: str
    sections: list[Section] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> Report:
        return self._add(Heading(text, level))

    def paragraph(self, text: str) -> Report:
        return self._add(Paragraph(text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Report:
        return self._add(Table(tuple(header), tuple(tuple(r) for r in rows)))

    def image(self, src: str, alt: str) -> Report:
        return self._add(Image(src, alt))

    def bullets(self, items: Sequence[str]) -> Report:
        return self._add(BulletList(tuple(items)))

    def code(self, text: str, language: str = "") -> Report:
        return self._add(CodeBlock(text, language))

    def to_markdown(self) -> str:
        return "\n\n".join(s.to_markdown() for s in self.sections) + "\n"

    def to_html(self) -> str:
        """A self-contained page (images are the linked files beside it)."""
        return (
            '<!doctype html>\n<html><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(s.to_html() for s in self.sections)
            + "\n</body></html>\n"
        )

    def write(self, folder_url: str, name: str, storage_options: dict[str, Any] | None = None) -> None:
        """`<name>.md` and `<name>.html` in `folder_url` (any fsspec URL), each written atomically."""
        write_bytes_atomic(join(folder_url, f"{name}.md"), self.to_markdown().encode(), storage_options)
        write_bytes_atomic(join(folder_url, f"{name}.html"), self.to_html().encode(), storage_options)

    def _add(self, section: Section) -> Report:
        self.sections.append(section)
        return self
