"""HTML assembly: one self-contained page, images inline as base64 data URIs."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #212121; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.figure { max-width: 100%; } .overlays { display: flex; flex-wrap: wrap; gap: .8em; }
.overlays figure { margin: 0; max-width: 380px; } .overlays img { max-width: 100%; }
.note { color: #616161; font-style: italic; } .warn { color: #b71c1c; }
pre { background: #f5f5f5; padding: .5em; overflow-x: auto; font-size: .85em; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, alt: str, mime: str = "image/png", cls: str = "figure") -> str:
    return f'<img class="{cls}" alt="{esc(alt)}" src="{data_uri(data, mime)}">'


def table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


@dataclass
class Section:
    id: str
    title: str
    parts: List[str] = field(default_factory=list)

    def add(self, fragment: Optional[str]) -> Section:
        if fragment:
            self.parts.append(fragment)
        return self

    def html(self) -> str:
        head = f'<section id="{esc(self.id)}">\n<h2>{esc(self.title)}</h2>\n'
        return head + "\n".join(self.parts) + "\n</section>"


def page(title: str, intro: Sequence[str], sections: Sequence[Section]) -> str:
    nav = " · ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(s.html() for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n" + "\n".join(intro)
            + f"\n<nav>{nav}</nav>\n{body}\n</body></html>\n")
