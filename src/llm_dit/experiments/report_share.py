"""Reports to send: one self-contained HTML file, and one page comparing several run folders.

* :func:`single_file`: ``report.html`` with every picture, grid and plot it shows embedded (``data:``
  URIs; cell pictures as 256-pixel thumbnails, so a 1024-pixel sweep stays small), and links to files
  (a picture in full, metadata.json, a trial's report) turned into plain text: it opens with no other
  file present.
* :func:`compare_runs`: several run folders (or trials folders) side by side: each one's setup,
  warnings and answers, then the "look at" metrics of every cell, one column per folder.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from ..errors import InputError
from ..io import write_text

SINGLE_FILE = "report_single.html"
_REF = re.compile(r'(src|href)="([^"]+)"')
_PICTURE = (".png", ".jpg", ".jpeg", ".webp")


def _data_uri(path: Path, thumb: bool) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            im = opened.convert("RGB")
        if thumb:
            im.thumbnail((256, 256))
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=not thumb)
    except Exception:  # a picture that cannot be read is shown as missing, not as a broken page
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def embed(text: str, base: Path, folders: list[Path]) -> str:
    """``text`` (HTML) with the local pictures it refers to embedded, relative to ``base``; links to
    anything else local become plain text (a sent file has no folder beside it). Only pictures inside
    ``folders`` (the run folders the page shows) are read: a record naming another file embeds nothing."""
    cache: dict[tuple[str, bool], str | None] = {}
    roots = [f.resolve() for f in folders]

    def one(m: re.Match) -> str:
        attr, ref = m.group(1), html.unescape(m.group(2))
        if ref.startswith(("data:", "http:", "https:", "#")):
            return m.group(0)
        path = (base / ref.split("?")[0]).resolve()
        inside = any(path.is_relative_to(r) for r in roots)
        if attr == "src" and ref.lower().endswith(_PICTURE) and inside and path.is_file():
            # a cell's picture in the table: a thumbnail (a grid or plot: whole); each embedded once,
            # the links around them dropped (they would embed the same picture again)
            thumb = "grid" not in path.name and path.parent.name != "plots"
            key = (str(path), thumb)
            if key not in cache:
                cache[key] = _data_uri(path, thumb)
            return f'{attr}="{cache[key]}"' if cache[key] else f'{attr}=""'
        return 'data-local="' + html.escape(ref) + '"'  # the link to a file that is not sent

    return _REF.sub(one, text)


def single_file(out: Path) -> Path:
    """``out/report_single.html``: ``out/report.html`` with everything embedded (see :func:`embed`)."""
    report = out / "report.html"
    if not report.is_file():
        raise InputError(f"{out} has no report.html to embed")
    return write_text(out / SINGLE_FILE, embed(report.read_text(encoding="utf-8"), out, [out]), durable=False)


def _read(folder: Path) -> dict:
    """A run or trials folder's metadata, rebuilt from the folder (nothing written there)."""
    from .folder import TRIALS_FILE
    from .report import build_metadata
    from .trials_report import build_trials_metadata

    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    if (folder / TRIALS_FILE).is_file():
        return build_trials_metadata(folder)[0]
    return build_metadata(folder)


def compare_runs(folders: list[Path], target: Path, embedded: bool = False) -> Path:
    """One page comparing ``folders`` (run or trials folders) written to ``target`` (an .html file)."""
    import os

    from .report_html import CSS, answers_block, tiny_banner
    from .report_tables import direction, interval, metric_order, warnings_block

    if target.suffix.lower() != ".html":
        raise InputError(f"the comparison page {target} must end in .html")
    metas = [_read(f) for f in folders]
    names = [f.name or str(f) for f in folders]
    if len(set(names)) != len(names):
        names = [str(f) for f in folders]
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{len(folders)} runs compared</title>",
             f"<style>{CSS}</style></head><body><h1>{len(folders)} runs compared</h1>", tiny_banner(metas[0])]
    metrics: list[str] = []
    for folder, name, meta in zip(folders, names, metas, strict=True):
        rel = os.path.relpath(folder.resolve(), target.resolve().parent)
        grid = "summary_grid.png" if meta.get("kind") == "trials" else "comparison_grid.png"
        ev = meta["evidence"]
        metrics += [m for m in metric_order(ev, meta["experiment"]) if m not in metrics]
        parts.append(f"<h2>{e(name)}: {e(meta['experiment'])}</h2><p>{e(meta.get('prompt') or 'captions')} · "
                     f"{ev['trials']} trial(s) · <a href=\"{e(rel)}/report.html\">its report</a></p>")
        parts += [warnings_block(meta.get("warnings") or []), answers_block(meta.get("answers") or [])]
        if (folder / grid).is_file():
            parts.append(f'<a href="{e(rel)}/{grid}"><img class=grid src="{e(rel)}/{grid}"></a>')
    cells = list(dict.fromkeys(c for m in metas for c in m["evidence"]["cells"]))
    head = "".join(f"<th>{e(m)}<br><small>{e(n)}</small><br><small>{e(direction(m))}</small></th>"
                   for m in metrics for n in names)
    rows = []
    for c in cells:
        tds = [f"<td>{e(interval(meta['evidence']['metrics'].get(c, {}).get(m, {})))}</td>" for m in metrics
               for meta in metas]
        rows.append(f"<tr><td class=name>{e(c)}</td>{''.join(tds)}</tr>")
    parts.append("<h2>Cells, folder by folder</h2><div class=scroll><table class=runcells><thead><tr>"
                 f"<th class=name>cell</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    parts.append("</body></html>\n")
    text = "\n".join(parts)
    if embedded:
        text = embed(text, target.resolve().parent, folders)
    return write_text(target, text, durable=False)
