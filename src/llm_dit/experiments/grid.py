"""The one grid builder: reference first, labelled axes, the prompt as the title.

Layout (:func:`layout`): when exactly two parameters vary over the cells, a 2-D table (the one with
more values across, axis names and values as labels; cells without those parameters, such as the pure-text
baseline, join the reference in the leading column). Otherwise one labelled row, wrapped every
:data:`MAX_COLUMNS` panels. Missing or failed cells are grey panels that say so.

Fonts: Pillow's own scalable font (bundled with Pillow, no system font needed); a Pillow built
without FreeType falls back to its bitmap font. Nothing here depends on the machine's fonts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .cells import fmt

MAX_COLUMNS = 6
BG, FG, MUTED, MISSING = (30, 30, 30), (235, 235, 235), (160, 160, 160), (70, 70, 70)


@dataclass
class Panel:
    label: str
    image: Image.Image | None = None  # None: a grey panel with ``note``
    note: str = ""


@dataclass
class Layout:
    title: str
    lead: list[Panel]  # the reference(s), then cells outside the table
    rows: list[list[Panel | None]]
    row_labels: list[str] = field(default_factory=list)  # empty: a labelled row (labels under panels)
    col_labels: list[str] = field(default_factory=list)
    row_title: str = ""
    col_title: str = ""


def varied(params: list[dict[str, Any]]) -> list[str]:
    """Keys whose values differ among the cells that have them, in order of first appearance."""
    keys: dict[str, set] = {}
    for p in params:
        for k, v in p.items():
            keys.setdefault(k, set()).add(fmt(v))
    return [k for k, vals in keys.items() if len(vals) > 1]


def layout(title: str, lead: list[Panel], cells: list[tuple[dict[str, Any], Panel]],
           rows: str | None = None, cols: str | None = None) -> Layout:
    """Place ``(params, panel)`` pairs; ``rows``/``cols`` force the axes, else they are found."""
    if rows is None and cols is None:
        keys = varied([p for p, _ in cells if p])
        if len(keys) == 2 and all(keys[0] in p and keys[1] in p for p, _ in cells if p):
            count = {k: len({fmt(p[k]) for p, _ in cells if p}) for k in keys}
            # the parameter with more values runs across: grids are wider than tall on screens
            rows, cols = sorted(keys, key=lambda k: count[k])
    if rows is None or cols is None:
        # cells without parameters (the text-only baseline a run adds) join the reference in the
        # leading column when the others vary something: never inside the row of what varies
        varies = any(p for p, _ in cells)
        flat: list[Panel | None] = [panel for p, panel in cells if p or not varies]
        lead = lead + [panel for p, panel in cells if varies and not p]
        return Layout(title, lead, [flat[i:i + MAX_COLUMNS] for i in range(0, len(flat), MAX_COLUMNS)] or [[]])
    inside = [(p, panel) for p, panel in cells if rows in p and cols in p]
    outside = [panel for p, panel in cells if not (rows in p and cols in p)]
    row_vals = list(dict.fromkeys(fmt(p[rows]) for p, _ in inside))
    col_vals = list(dict.fromkeys(fmt(p[cols]) for p, _ in inside))
    table: list[list[Panel | None]] = [[None] * len(col_vals) for _ in row_vals]
    for p, panel in inside:
        table[row_vals.index(fmt(p[rows]))][col_vals.index(fmt(p[cols]))] = panel
    return Layout(title, lead + outside, table, row_vals, col_vals, rows, cols)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    text = " ".join(str(text).split())  # one line: captions carry newlines
    if draw.textlength(text, font=font) <= width:
        return text
    lo, hi = 0, len(text)  # the longest prefix that fits with the ellipsis: binary search, not one char at a time
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + "…", font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"


#: The side of one picture in a grid.
PANEL = 256


def thumbnail(image: Image.Image, size: int = PANEL) -> Image.Image:
    """The picture as a grid shows it: scaled up or down to fit ``size``, keeping the aspect ratio
    (tiny runs make 64 px images). A thumbnail made once is shown unchanged."""
    return ImageOps.contain(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)


def _thumb(panel: Panel | None, size: int, font) -> Image.Image:
    if panel is not None and panel.image is not None:
        im = thumbnail(panel.image, size)
        out = Image.new("RGB", (size, size), BG)
        out.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
        return out
    out = Image.new("RGB", (size, size), MISSING)
    if panel is not None:
        d = ImageDraw.Draw(out)
        d.text((size // 2, size // 2), _fit_text(d, panel.note or "missing", font, size - 8), fill=FG, font=font,
               anchor="mm")
    return out


def render(lay: Layout, size: int = PANEL) -> Image.Image:
    """Draw a :class:`Layout` as one RGB image."""
    pad, label_h = 8, 22
    small, big = _font(14), _font(18)
    two_d = bool(lay.row_labels)
    n_cols = max([len(r) for r in lay.rows] + [1])
    gutter = 120 if two_d else 0
    lead_w = (size + pad) if lay.lead else 0
    head = 36 + (2 * label_h if two_d else 0)
    cell_h = size + (0 if two_d else label_h) + pad
    body_rows = max(len(lay.rows), len(lay.lead), 1)
    width = pad + lead_w + gutter + n_cols * (size + pad)
    height = head + body_rows * cell_h + pad
    canvas = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(canvas)
    d.text((pad, 8), _fit_text(d, lay.title, big, width - 2 * pad), fill=FG, font=big)
    x0 = pad + lead_w + gutter
    if two_d:  # axis titles and column values
        d.text((x0, 36), _fit_text(d, lay.col_title, small, n_cols * (size + pad)), fill=MUTED, font=small)
        for j, v in enumerate(lay.col_labels):
            d.text((x0 + j * (size + pad) + size // 2, 36 + label_h + 4), _fit_text(d, v, small, size), fill=FG,
                   font=small, anchor="mt")
        d.text((pad + lead_w, 36 + label_h + 4), _fit_text(d, lay.row_title, small, gutter - pad), fill=MUTED,
               font=small)
    for i, panel in enumerate(lay.lead):  # the leading column: reference(s), then cells outside the table
        y = head + i * cell_h
        canvas.paste(_thumb(panel, size, small), (pad, y))
        _label(d, panel.label, pad, y, size, small, two_d)
    for i, row in enumerate(lay.rows):
        y = head + i * cell_h
        if two_d:
            d.text((pad + lead_w, y + size // 2), _fit_text(d, lay.row_labels[i], small, gutter - 2 * pad), fill=FG,
                   font=small, anchor="lm")
        for j, cell in enumerate(row):  # None: an empty place of the table
            x = x0 + j * (size + pad)
            canvas.paste(_thumb(cell, size, small), (x, y))
            if cell is not None:
                _label(d, cell.label, x, y, size, small, two_d)
    return canvas


def _label(d: ImageDraw.ImageDraw, text: str, x: int, y: int, size: int, font, overlay: bool) -> None:
    if overlay:  # 2-D: the label sits on the picture, on a dark strip
        d.rectangle([x, y + size - 20, x + size, y + size], fill=BG)
        d.text((x + 4, y + size - 18), _fit_text(d, text, font, size - 8), fill=FG, font=font)
    else:
        d.text((x + size // 2, y + size + 4), _fit_text(d, text, font, size), fill=FG, font=font, anchor="mt")
