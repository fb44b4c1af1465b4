"""One self-contained, printable HTML report of a sample's cells: the differential, the model, a gallery.

No template engine (the device has none): every text is escaped, every image is an inline JPEG data URL,
the style sheet is inside the file, so the report can be mailed, archived, or printed to PDF from a browser.
"""
from __future__ import annotations

import datetime
import html
from dataclasses import dataclass, field
from typing import Any

from edge_app.core.model import adaptation_note
from edge_app.core.overlay import colour_hex, jpeg_data_url
from edge_app.core.pipeline import UNCERTAIN
from edge_app.core.records import differential
from edge_app.core.wording import NOT_DIAGNOSTIC as DISCLAIMER

MAX_THUMBNAILS = 48  # per class; the counts always cover every cell


@dataclass
class ReportCell:
    """One cell: its final label, the model's answer and confidence, whether a person reviewed it, a JPEG."""

    source: str
    label: str
    model_label: str
    confidence: float
    reviewed: bool
    jpeg: bytes | None = None


@dataclass
class ReportInput:
    sample: str
    model_file: str
    model_meta: dict[str, Any]
    labels: list[str]
    cells: list[ReportCell] = field(default_factory=list)
    failed_images: int = 0
    date: str = ""


STYLE = """
* { box-sizing: border-box; }
body { font: 11pt/1.35 "DejaVu Sans", system-ui, sans-serif; color: #111827; margin: 1.5rem auto; max-width: 60rem;
       padding: 0 1rem; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
h1 { font-size: 1.5rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.2rem 0 .4rem; }
.disclaimer { border: 2px solid #b91c1c; color: #7f1d1d; background: #fef2f2; padding: .5rem .8rem; font-weight: 600;
              border-radius: 4px; margin: .6rem 0 1rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #d1d5db; vertical-align: top; }
table.facts th { width: 12rem; color: #374151; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.swatch { display: inline-block; width: .8em; height: .8em; border-radius: 2px; margin-right: .4em; vertical-align: -.05em; }
.bar { height: .7em; background: #e5e7eb; width: 12rem; } .bar span { display: block; height: 100%; }
tr.uncertain td { color: #92400e; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(5.6rem, 1fr)); gap: .4rem; }
figure { margin: 0; break-inside: avoid; page-break-inside: avoid; text-align: center; font-size: 7.5pt; color: #374151; }
figure img { width: 100%; aspect-ratio: 1; object-fit: cover; border-radius: 3px; border: 2px solid #e5e7eb; display: block; }
figure.reviewed img { border-color: #059669; }
figcaption { overflow-wrap: anywhere; line-height: 1.15; margin-top: .1rem; }
section.class { break-inside: auto; }
section.class h2 { break-after: avoid; page-break-after: avoid; }
.muted { color: #6b7280; font-size: .9em; }
footer { margin-top: 1.5rem; color: #6b7280; font-size: 8.5pt; border-top: 1px solid #d1d5db; padding-top: .4rem; }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { margin: 0; max-width: none; padding: 0; font-size: 10pt; }
  .gallery { grid-template-columns: repeat(8, 1fr); }
  .disclaimer { break-inside: avoid; }
  table.differential, table.facts { break-inside: avoid; }
}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render(report: ReportInput) -> str:
    """The report as one HTML document."""
    labels = report.labels
    rows = [{"label": c.label, "error": ""} for c in report.cells]
    diff = differential(rows, labels)
    reviewed = [c for c in report.cells if c.reviewed]
    changed = sum(1 for c in reviewed if c.label != c.model_label)
    note = adaptation_note(report.model_meta) or "not adapted (the model as shipped or converted)"
    date = report.date or datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    facts = [("Sample", report.sample), ("Date", date), ("Model file", report.model_file),
             ("Model adaptation", note), ("Total cells", diff["total"]),
             ("UNCERTAIN", f"{diff['uncertain']} (left out of '% of answered')"),
             ("Reviewed by a person", f"{len(reviewed)} of {len(report.cells)}"
              + (f" ({changed} reclassified)" if reviewed else ""))]
    if report.failed_images:
        facts.append(("Images not read", report.failed_images))
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>HematoVision report – {_e(report.sample)}</title>", f"<style>{STYLE}</style></head><body>",
           "<header><h1>HematoVision differential report</h1>",
           f'<p class="disclaimer" id="disclaimer">{_e(DISCLAIMER)}</p></header>',
           '<table class="facts">' + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
           + "</table>", "<h2>Differential count</h2>",
           '<table class="differential"><thead><tr><th>Class</th><th class="num">Count</th>'
           '<th class="num">% of answered</th><th class="num">% of all cells</th><th></th></tr></thead><tbody>']
    for c in diff["classes"]:
        colour = colour_hex(c["label"], labels)
        out.append(f'<tr data-label="{_e(c["label"])}"><td><span class="swatch" style="background:{colour}"></span>'
                   f'{_e(c["label"])}</td><td class="num">{c["count"]}</td><td class="num">{c["percent"]:.1f} %</td>'
                   f'<td class="num">{c["percent_of_all"]:.1f} %</td>'
                   f'<td><div class="bar"><span style="width:{c["percent"]:.1f}%;background:{colour}"></span></div></td></tr>')
    out.append(f'<tr class="uncertain" data-label="{UNCERTAIN}"><td>UNCERTAIN</td><td class="num">{diff["uncertain"]}'
               f'</td><td class="num">–</td><td class="num">{diff["uncertain_percent"]:.1f} %</td><td></td></tr>')
    out.append(f'</tbody><tfoot><tr><th>Total</th><th class="num">{diff["total"]}</th><th></th><th></th><th></th></tr>'
               "</tfoot></table>")
    for label in labels + [UNCERTAIN]:
        cells = [c for c in report.cells if c.label == label]
        if not cells:
            continue
        shown = [c for c in cells if c.jpeg][:MAX_THUMBNAILS]
        more = f' <span class="muted">(showing {len(shown)} of {len(cells)})</span>' if len(shown) < len(cells) else ""
        out.append(f'<section class="class" data-label="{_e(label)}"><h2>{_e(label)} – {len(cells)}{more}</h2>'
                   '<div class="gallery">')
        for c in shown:
            caption = c.source.replace("\\", "/").rsplit("/", 1)[-1]
            if c.reviewed:
                caption += " ✓" if c.label == c.model_label else f" ✓ (model: {c.model_label})"
            else:
                caption += f" {100 * c.confidence:.0f} %"
            out.append(f'<figure class="{"reviewed" if c.reviewed else ""}"><img alt="{_e(label)}" '
                       f'src="{jpeg_data_url(c.jpeg)}"><figcaption>{_e(caption)}</figcaption></figure>')
        out.append("</div></section>")
    out.append(f"<footer>{_e(DISCLAIMER)} Percentages are of the cells given a class; UNCERTAIN cells are counted "
               "apart. A green frame marks a cell a person reviewed. Generated by HematoVision Edge "
               f"{_e(_version())} on {_e(date)}.</footer></body></html>")
    return "\n".join(out)


def _version() -> str:
    from hemato import __version__
    return __version__
