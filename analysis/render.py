"""Markdown and self-contained HTML output: tables, embedded images, the page shell."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
     padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
tr:nth-child(even) td{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.noise{color:#888} .few{color:#b36b00} .missing{color:#b00} .sig{font-weight:600}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
.row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start} .row figure{flex:1 1 540px;margin:0}
figcaption{font-size:.85em;color:#555}
.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
.small{font-size:.85em;color:#555}
"""


def _cell_class(text: str) -> str:
    if "~noise" in text or text.startswith("noise"):
        return "noise"
    if "too few" in text:
        return "few"
    if text in ("no baseline", "no data") or "erases" in text:
        return "missing"
    return ""


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def html_table(df: pd.DataFrame, max_rows: int | None = 500, links: dict | None = None) -> str:
    """An HTML table of df (all values escaped); marks in cells get a CSS class. links: {column:
    value -> href}: that column's non-empty cells become links."""
    shown = df if max_rows is None else df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    link_at = {i: (links or {})[c] for i, c in enumerate(shown.columns) if c in (links or {})}
    rows = []
    for values in shown.itertuples(index=False, name=None):
        cells = []
        for i, v in enumerate(values):
            text = _fmt(v)
            if i in link_at and text:
                cells.append(f'<td><a href="{html.escape(link_at[i](v), quote=True)}">{html.escape(text)}</a></td>')
                continue
            cls = _cell_class(text)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                cls = (cls + " num").strip()
            cells.append(f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if max_rows is not None and len(df) > max_rows:
        more = f'<p class="small">{len(df) - max_rows} more rows in the CSV files.</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def md_table(df: pd.DataFrame, max_rows: int | None = 200) -> str:
    """A GitHub-flavoured Markdown table of df."""
    if df.empty:
        return "_none_\n"
    shown = df if max_rows is None else df.head(max_rows)

    def esc(v) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in shown.columns) + " |",
             "|" + "|".join("---" for _ in shown.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in shown.itertuples(index=False, name=None)]
    if max_rows is not None and len(df) > max_rows:
        lines.append(f"\n_{len(df) - max_rows} more rows in the CSV files._")
    return "\n".join(lines) + "\n"


def html_image(png: bytes, alt: str, caption: str = "") -> str:
    """A <figure> with the PNG embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">{cap}</figure>'


def html_page(title: str, body: list[str]) -> str:
    """The whole self-contained page."""
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")


def h(level: int, text: str) -> str:
    return f"<h{level}>{html.escape(text)}</h{level}>"


def p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>"


def p_html(inner: str, cls: str = "") -> str:
    """A paragraph of markup the caller has escaped (links)."""
    return f'<p class="{cls}">{inner}</p>' if cls else f"<p>{inner}</p>"


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """CSV with a header; pyarrow's writer (several times faster than pandas on big tables)."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        pacsv.write_csv(pa.Table.from_pandas(df, preserve_index=False), path)
    except (ImportError, pa.ArrowException, TypeError, ValueError):
        df.to_csv(path, index=False)
