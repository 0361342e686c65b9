"""The HTML of one report page: run counts, filters, pager and one table row per result row.

Everything is inline (CSS and a little JS) so a page opens from file://, an object store or any
static host with nothing fetched from elsewhere; images are relative links to OUT/report/thumbs/
and, on click, to the full files in OUT/images/ and OUT/masks/. Filters act on the rows of the open
page and travel to the other pages in the URL's #fragment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from html import escape
from typing import Any, Callable

import numpy as np

STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}
header{background:#20242b;color:#eee;padding:12px 20px}
header h1{font-size:17px;margin:0 0 8px}
.counts{display:flex;flex-wrap:wrap;gap:8px;margin:0;padding:0;list-style:none}
.counts li{background:#343a44;border-radius:4px;padding:4px 10px}
.counts b{font-size:16px;margin-right:4px}
.counts .error b{color:#ff8a8a}.counts .ok b{color:#8ae08a}
.groups{margin-top:6px;color:#bbb}
nav,.filters{padding:8px 20px;background:#fff;border-bottom:1px solid #ddd}
nav a,nav span{margin-right:8px}
.filters label{margin-right:14px}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{border-bottom:1px solid #e4e4e0;padding:6px 8px;vertical-align:top;text-align:left}
th{background:#eceae4;position:sticky;top:0}
td.img{width:168px;text-align:center;color:#999}
td.img img{max-width:160px;max-height:160px;display:block;margin:auto}
tr.error{background:#fff1f0}
.status{font-weight:bold}.error .status{color:#b00020}.ok .status{color:#2e7d32}
.id{font-family:ui-monospace,monospace;overflow-wrap:anywhere;min-width:150px}
.msg{color:#b00020;white-space:pre-wrap;max-width:480px}
.kv{color:#555}.kv b{color:#222;font-weight:600}
.prompt{color:#444;font-style:italic;max-width:480px}
"""

SCRIPT = """
(function(){
  var keys=["status","task","engine"], pick={}, rows=document.querySelectorAll("tr.row");
  keys.forEach(function(k){pick[k]=document.getElementById("filter-"+k);});
  function fragment(){
    var parts=[];
    keys.forEach(function(k){if(pick[k].value)parts.push(k+"="+encodeURIComponent(pick[k].value));});
    return parts.join("&");
  }
  function apply(){
    var shown=0;
    rows.forEach(function(tr){
      var keep=keys.every(function(k){return !pick[k].value||tr.dataset[k]===pick[k].value;});
      tr.hidden=!keep; if(keep)shown++;
    });
    document.getElementById("shown").textContent=shown+" of "+rows.length+" rows on this page";
    var f=fragment();
    document.querySelectorAll("a[data-page]").forEach(function(a){a.href=a.dataset.page+(f?"#"+f:"");});
    try{history.replaceState(null,"",f?"#"+f:location.pathname);}catch(e){}
  }
  new URLSearchParams(location.hash.slice(1)).forEach(function(v,k){if(pick[k])pick[k].value=v;});
  keys.forEach(function(k){pick[k].addEventListener("change",apply);});
  apply();
})();
"""

NONE = "(none)"  # e.g. the engine of a row that failed before an engine was chosen
EAGER_ROWS = 12  # thumbnails of the first rows load at once (a screenshot sees them), the rest lazily



@dataclass
class Selection:
    """Which row of which result file each id ends as, errors first; and the run's counts."""

    files: list[str]
    errors: dict[int, np.ndarray]  # file index -> sorted row numbers
    others: dict[int, np.ndarray]
    status: Counter
    task: Counter
    engine: Counter
    unreadable: list[str]

    @property
    def rows(self) -> int:
        return sum(self.status.values())

def _attr(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}s"


def _counts(summary: dict[str, Any], selection: Selection) -> str:
    statuses = {"ok": 0, "error": 0, "skipped": 0, **selection.status}
    items = [f'<li class="{_attr(s)}"><b id="count-{_attr(s)}">{n}</b>{_attr(s)}</li>' for s, n in statuses.items()]
    items.insert(0, f'<li><b id="count-rows">{selection.rows}</b>rows</li>')
    if "missing" in summary:
        items.append(f'<li><b id="count-missing">{int(summary["missing"])}</b>missing</li>')
    if summary.get("wall_s") is not None:
        rate = f', {summary["rows_per_s"]} rows/s' if summary.get("rows_per_s") else ""
        items.append(f'<li><b>{_attr(summary["wall_s"])}s</b>wall{_attr(rate)}</li>')
    return '<ul class="counts">' + "".join(items) + "</ul>"


def _groups(selection: Selection, summary: dict[str, Any]) -> str:
    def line(label: str, counter: Counter) -> str:
        return f"{label}: " + ", ".join(f"{_attr(k or NONE)} {n}" for k, n in sorted(counter.items()))

    lines = [line("tasks", selection.task), line("engines", selection.engine)]
    if summary.get("error_types"):
        lines.append("errors: " + ", ".join(f"{_attr(k)} {n}" for k, n in sorted(summary["error_types"].items())))
    return "".join(f'<div class="groups">{text}</div>' for text in lines)


def _pager(number: int, pages: int, error_pages: int, page_name: Callable[[int], str]) -> str:
    def link(n: int, text: str) -> str:
        return f'<a data-page="{page_name(n)}" href="{page_name(n)}">{text}</a>'

    parts = [link(1, "« first"), link(number - 1, "‹ prev") if number > 1 else ""]
    for n in range(max(1, number - 5), min(pages, number + 5) + 1):
        parts.append(f"<span><b>{n}</b></span>" if n == number else link(n, str(n)))
    parts += [link(number + 1, "next ›") if number < pages else "", link(pages, "last »"),
              f"<span>page {number} of {pages}</span>"]
    if error_pages:
        parts.append(f"<span>error rows: page{'s 1-' + str(error_pages) if error_pages > 1 else ' 1'}</span>")
    return "<nav>" + "".join(parts) + "</nav>"


def _filters(selection: Selection) -> str:
    def select(key: str, counter: Counter) -> str:
        options = "".join(f'<option value="{_attr(v or NONE)}">{_attr(v or NONE)} ({n})</option>'
                          for v, n in sorted(counter.items()))
        return f'<label>{key} <select id="filter-{key}"><option value="">all</option>{options}</select></label>'

    return ('<div class="filters">' + select("status", selection.status) + select("task", selection.task)
            + select("engine", selection.engine) + '<span id="shown"></span></div>')


def _image(src: str | None, link: str | None, alt: str, eager: bool) -> str:
    if not src:
        return '<td class="img">-</td>'
    img = f'<img src="{_attr(src)}" alt="{_attr(alt)}"{"" if eager else " loading=lazy"}>'
    return f'<td class="img"><a href="{_attr(link)}">{img}</a></td>' if link else f'<td class="img">{img}</td>'


def _details(row: dict[str, Any]) -> str:
    settings = [(k, row.get(k)) for k in ("task", "engine", "model", "seed", "steps", "strength", "nfe")]
    shown = " · ".join(f"{k} <b>{_attr(v)}</b>" for k, v in settings if v is not None)
    parts = [f'<div class="kv">{shown}</div>']
    if row.get("status") == "error":
        parts.append(f'<div class="msg">{_attr(row.get("error_stage"))} stage, {_attr(row.get("error_type"))}: '
                     f'{_attr(row.get("error_message"))}</div>')
    else:
        times = " · ".join(f"{k} {_seconds(row.get('t_' + k + '_s'))}" for k in ("load", "mask", "edit", "write"))
        parts.append(f'<div class="kv">{_attr(row.get("width"))}x{_attr(row.get("height"))} · {times}</div>')
    if row.get("prompt"):
        parts.append(f'<div class="prompt">{_attr(row["prompt"])}</div>')
    parts.append(f'<div class="kv">mask {_attr(row.get("mask_spec"))} · input {_attr(row.get("image"))}</div>')
    return "".join(parts)


def _row(row: dict[str, Any], thumbs: dict[str, str | None], eager: bool) -> str:
    status = row.get("status") or ""
    data = " ".join(f'data-{k}="{_attr(row.get(k) or NONE)}"' for k in ("status", "task", "engine"))
    return (f'<tr class="row {_attr(status)}" data-id="{_attr(row.get("id"))}" {data}>'
            f'<td><div class="id">{_attr(row.get("id"))}</div><div class="status">{_attr(status)}</div></td>'
            + _image(thumbs["input"], None, "input", eager)
            + _image(thumbs["mask"], row.get("mask_output") and "../" + row["mask_output"], "mask overlay", eager)
            + _image(thumbs["output"], row.get("output") and "../" + row["output"], "output", eager)
            + f"<td>{_details(row)}</td></tr>")


def render_page(*, number: int, pages: int, rows: list[dict[str, Any]], thumbs: list[dict[str, str | None]],
                page_name: Callable[[int], str], summary: dict[str, Any], selection: Selection,
                error_pages: int) -> str:
    """One self-contained page of the report."""
    run = summary.get("run_id") or "(no summary.json)"
    pager = _pager(number, pages, error_pages, page_name)
    body = "".join(_row(row, thumb, i < EAGER_ROWS) for i, (row, thumb) in enumerate(zip(rows, thumbs)))
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>editflow report {_attr(run)} '
        f"({number}/{pages})</title><style>{STYLE}</style></head><body>"
        f'<header><h1>editflow run {_attr(run)}</h1>{_counts(summary, selection)}{_groups(selection, summary)}</header>'
        f"{_filters(selection)}{pager}"
        '<table><thead><tr><th>row</th><th>input</th><th>mask</th><th>output</th><th>settings</th></tr></thead>'
        f"<tbody>{body}</tbody></table>{pager}<script>{SCRIPT}</script></body></html>"
    )
