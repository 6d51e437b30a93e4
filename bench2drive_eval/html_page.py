"""Self-contained HTML pages (inline CSS, PNGs embedded as data URIs): one file to open or mail.

Used by `drivemoe routing-report` and `bench2drive-eval report`. Only the standard library.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path

from bench2drive_eval.jsonio import write_text_atomic

STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: 6px 0; }
p.note { color: #555; font-size: 13px; } .bad { color: #a00; }
div.scroll { overflow-x: auto; }
"""


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def paragraph(text: str, css: str = "") -> str:
    return f'<p class="{css}">{escape(text)}</p>' if css else f"<p>{escape(text)}</p>"


def link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], raw_columns: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except in `raw_columns` (already HTML, e.g. links)."""
    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            text = value if i in raw_columns else escape(f"{value:.3f}" if isinstance(value, float) else value)
            cells.append(f'<td class="num">{text}</td>' if number else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def image(path: Path, alt: str) -> str:
    """The PNG at `path` embedded as a data URI (the page needs no files beside it)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def section(title: str, *parts: str) -> str:
    return f"<h2>{escape(title)}</h2>\n" + "\n".join(parts)


def write_html_page(path: Path, title: str, sections: Sequence[str]) -> Path:
    """Write the page atomically; ValueError naming the path when it cannot be written."""
    text = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")
    path = Path(path)
    try:
        write_text_atomic(path, text)
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror or error}") from None
    return path
