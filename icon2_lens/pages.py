"""Reports as pages: a list of blocks rendered to Markdown and to a self-contained HTML page.

A report is assembled once as blocks (heading, paragraph, table, figure, link, code) and rendered
twice, so ``report.md`` and ``report.html`` always say the same thing.

May import: ``icon2_lens._files`` only (a low-level module).

Example:
    >>> import pandas as pd
    >>> print(render_markdown([("h1", "Title"), ("table", pd.DataFrame({"a": [1.0]}))]))
    # Title
    <BLANKLINE>
    | a |
    | --- |
    | 1.000 |
    <BLANKLINE>
"""

import html
from pathlib import Path
from typing import Any

import pandas as pd

from icon2_lens._files import write_text

__all__ = ["Block", "markdown_table", "render_markdown", "render_html", "write_pages"]

Block = tuple[str, Any]


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (cells escaped for ``|`` and newlines).

    Example:
        >>> print(markdown_table(pd.DataFrame({"a": [1.0], "b": ["x|y"]})))
        | a | b |
        | --- | --- |
        | 1.000 | x\\|y |
    """

    def cell(v: object) -> str:
        text = (f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}") if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def render_markdown(blocks: list[Block]) -> str:
    """Blocks (``("h1", text)``, ``("p", text)``, ``("table", DataFrame)``, ``("img", path)``,
    ``("link", (label, path))``, ``("pre", text)``, ``("md", text)``) as Markdown."""
    parts = []
    for kind, x in blocks:
        if kind in ("h1", "h2"):
            parts.append(("#" if kind == "h1" else "##") + " " + x)
        elif kind == "p":
            parts.append(x)
        elif kind == "table":
            parts.append(markdown_table(x))
        elif kind == "img":
            parts.append(f"![{x}]({x})")
        elif kind == "link":
            parts.append(f"[{x[0]}]({x[1]})")
        elif kind == "pre":
            parts.append("```\n" + x + "\n```")
        elif kind == "md":
            parts.append(x)
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    """The same blocks as a self-contained HTML page."""
    body = []
    for kind, x in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(x)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(x)}</p>")
        elif kind == "table":
            body.append(x.to_html(index=False, escape=True, border=0, classes="t"))
        elif kind == "img":
            body.append(f'<img src="{html.escape(x)}" alt="{html.escape(x)}">')
        elif kind == "link":
            body.append(f'<p><a href="{html.escape(x[1])}">{html.escape(x[0])}</a></p>')
        elif kind in ("pre", "md"):
            body.append(f"<pre>{html.escape(x)}</pre>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
        "table.t{border-collapse:collapse}table.t td,table.t th{border:1px solid #ccc;padding:3px 8px}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_pages(root: Path, blocks: list[Block], title: str) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` of ``blocks`` into ``root``."""
    md, page = root / "report.md", root / "report.html"
    write_text(md, render_markdown(blocks))
    write_text(page, render_html(blocks, title))
    return md, page
