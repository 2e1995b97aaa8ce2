"""Pictures: grids of frames (PNG), labelled animations (GIF) and training curves (PNG), drawn with Pillow.

train_min.py draws its sample grids and curves.png with these, `framepred.py predict` its GIF, and
`metrics.py evaluate` the paper's Figure 4 layout and its clip GIFs. Images come on the [-1, 1]
scale as (C, H, W) arrays (SPEC "Tensors").
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data import to_uint8


def image_to_uint8(image):
    """(C, H, W) on [-1, 1], C in {1, 3} -> (H, W, 3) uint8 for Pillow: data.to_uint8 ((x + 1) * 127.5,
    rounded, clipped) with the channels moved last and a grey image repeated to RGB."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) or (1, H, W) image, got {a.shape}")
    return to_uint8(np.repeat(a, 3 // a.shape[0], axis=0)).transpose(1, 2, 0)


def _upscale(a, min_size):
    """Nearest-neighbour integer upscaling of (H, W, 3) so that its larger side is >= min_size."""
    s = max(1, -(-min_size // max(a.shape[:2])))
    return a.repeat(s, axis=0).repeat(s, axis=1)


def _text_size(text, font):
    """(width, height) in px of text (may hold newlines) in font; (0, 0) for empty text."""
    if not text:
        return 0, 0
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), str(text), font=font)
    return x1 - min(x0, 0), y1 - min(y0, 0)


def save_grid_png(path, rows, labels=None, col_labels=None, min_size=96, gap=4, title=None, captions=None,
                  font_size=13):
    """Write one PNG grid of images, e.g. the layout of paper Figure 4.

    rows: list of lists of (3, H, W) images on [-1, 1], or None for an empty cell; rows may
    differ in length. Each image is upscaled by an integer factor with nearest neighbour so
    that its larger side is >= ``min_size`` px; cells are sized for the largest upscaled image
    and separated by ``gap`` px of white. Text (Pillow's default font at ``font_size`` px; any
    text may hold newlines): labels, one per row, in a column on the left; col_labels, one per
    column, above the grid; title above everything; captions, per row a list of texts (or None),
    one above each of that row's cells. Returns the (width, height) of the written image.
    """
    cells = [[None if im is None else _upscale(image_to_uint8(im), min_size) for im in row] for row in rows]
    present = [c for row in cells for c in row if c is not None]
    ch = max((c.shape[0] for c in present), default=min_size)
    cw = max((c.shape[1] for c in present), default=min_size)
    ncols = max((len(r) for r in rows), default=0)
    font = _curve_font(font_size)
    title_font = _curve_font(font_size + 3)

    def strip(texts, f=font):                  # height of a band holding the tallest of texts
        h = max((_text_size(t, f)[1] for t in texts or [] if t), default=0)
        return h + gap if h else 0
    captions = list(captions or []) + [None] * (len(rows) - len(captions or []))
    cap_h = [strip(c) for c in captions]
    left = max((_text_size(t, font)[0] for t in labels), default=0) + 2 * gap if labels else 0
    title_h = strip([title], title_font) + (gap if title else 0)
    top = title_h + strip(col_labels)
    width = max(left + ncols * cw + (ncols + 1) * gap, _text_size(title, title_font)[0] + 2 * gap)
    height = top + len(rows) * ch + sum(cap_h) + (len(rows) + 1) * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        _text(draw, (gap, gap), str(title), title_font)
    for c, t in enumerate(col_labels or []):
        _text(draw, (left + gap + c * (cw + gap) + cw / 2, title_h), str(t), font, "ma")
    y = top + gap
    for r, row in enumerate(cells):
        for c, t in enumerate(captions[r] or []):
            if t:
                _text(draw, (left + gap + c * (cw + gap) + cw / 2, y), str(t), font, "ma")
        y += cap_h[r]
        if labels and r < len(labels) and labels[r]:
            _text(draw, (gap, y + ch / 2), str(labels[r]), font, "lm")
        for c, cell in enumerate(row):
            if cell is not None:
                canvas.paste(Image.fromarray(cell), (left + gap + c * (cw + gap), y))
        y += ch + gap
    canvas.save(path, format="PNG")
    return canvas.size


PREDICTED_MARK = (220, 30, 30)   # the frame drawn around predicted images in the GIFs


def _gif_frame(panels, labels, caption, marked, min_size, gap=4, border=3, font=None):
    """One labelled GIF frame: panels side by side (each upscaled, see _upscale), a label above
    each, a caption below, and a red frame around every panel when ``marked`` (a prediction)."""
    ims = [_upscale(image_to_uint8(p), min_size) for p in panels]
    ph, pw = max(i.shape[0] for i in ims), max(i.shape[1] for i in ims)
    head = max((_text_size(t, font)[1] for t in labels or []), default=0)
    head = head + 2 * gap if head else 0
    foot = _text_size(caption, font)[1] + 2 * gap if caption else 0
    step = max([pw + 2 * border] + [_text_size(t, font)[0] for t in labels or []]) + gap
    canvas = Image.new("RGB", (max(len(ims) * step + gap, _text_size(caption, font)[0] + 2 * gap),
                               head + ph + 2 * border + foot + (0 if foot else gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(ims):
        x = gap + i * step + (step - gap - pw - 2 * border) // 2      # centred under its label
        if marked:
            draw.rectangle([x, head, x + pw + 2 * border - 1, head + ph + 2 * border - 1], fill=PREDICTED_MARK)
        canvas.paste(Image.fromarray(im), (x + border, head + border))
        if labels and i < len(labels):
            _text(draw, (x + border + pw / 2, gap), str(labels[i]), font, "ma")
    if caption:
        _text(draw, (gap, head + ph + 2 * border + gap), str(caption), font,
              fill=PREDICTED_MARK if marked else (0, 0, 0))
    return canvas


def save_gif(path, frames, fps=4, min_size=96, labels=None, captions=None, first_predicted=None):
    """Write frames, a list of (3, H, W) images on [-1, 1], as a looping animated GIF.

    Frames are upscaled with nearest neighbour as in ``save_grid_png`` (``min_size``); each
    lasts 1000 / fps ms. GIF stores at most 256 colours per frame (Pillow quantises), and
    Pillow merges consecutive identical frames into one longer frame.
    Labelled form (any of the last three given): a frame may be a list of panels shown side by
    side; labels name the panels (above them), captions say what each frame is (below it), and
    frames from index first_predicted on, the predictions, get a red frame and a red caption.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    if labels is None and captions is None and first_predicted is None:
        images = [Image.fromarray(_upscale(image_to_uint8(f), min_size)) for f in frames]
    else:
        font = _curve_font(13)
        marked = len(frames) if first_predicted is None else first_predicted
        images = [_gif_frame(f if isinstance(f, (list, tuple)) else [f], labels,
                             captions[i] if captions else None, i >= marked, min_size, font=font)
                  for i, f in enumerate(frames)]
        size = (max(im.size[0] for im in images), max(im.size[1] for im in images))
        for i, im in enumerate(images):               # one size for every frame of the GIF
            if im.size != size:
                images[i] = Image.new("RGB", size, (255, 255, 255))
                images[i].paste(im, (0, 0))
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000.0 / fps)), loop=0)


# Training curves (train_min.py's eval.jsonl): (key, legend label, colour, dashed) per panel.
_BLUE, _ORANGE = (31, 119, 180), (255, 127, 14)
_LOSS_CURVES = (("g_total", "G total", (0, 0, 0), False), ("g_lp", "G lp", _BLUE, False),
                ("g_gdl", "G gdl", (44, 160, 44), False), ("g_adv", "G adv", (214, 39, 40), False),
                ("d_loss", "D loss", (148, 103, 189), False))
_ACC_CURVES = (("d_acc_real", "D acc. real", _BLUE, False), ("d_acc_fake", "D acc. fake", _ORANGE, False))
_SCORE_CURVES = (("psnr", "PSNR model", _BLUE, False), ("psnr_last", "PSNR last input", _BLUE, True),
                 ("sharp", "sharp. model", _ORANGE, False), ("sharp_last", "sharp. last input", _ORANGE, True))


def _curve_font(size=14):
    try:  # Pillow >= 10.1 scales its built-in font; older ones have one bitmap size
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text(draw, xy, text, font, anchor="la", fill=(0, 0, 0)):
    """draw.text with the anchor done here (Pillow's bitmap fallback font refuses anchor=)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
    y = xy[1] - {"a": top, "m": (top + bottom) / 2}[anchor[1]]
    draw.text((x, y), text, fill=fill, font=font, align={"l": "left", "m": "center", "r": "right"}[anchor[0]])


def _finite(value):
    """float(value), or None for a missing, non-numeric, NaN or infinite value."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _nice_ticks(lo, hi, count=5):
    """Round tick values (1, 2, 5 x 10^k apart) inside [lo, hi]."""
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def _log_ticks(lo, hi):
    """Tick values for a log axis over [10^lo, 10^hi]: round linear values within a decade, else
    1, 2, 5 x 10^k or coarser (at most 8)."""
    if hi - lo < 1:
        return [v for v in _nice_ticks(10.0 ** lo, 10.0 ** hi) if v > 0]
    for ms in ((1,), (1, 3), (1, 2, 5)):
        ticks = [m * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in ms
                 if lo - 1e-9 <= math.log10(m) + e <= hi + 1e-9]
        if len(ticks) >= 4:
            break
    return ticks[::-(-len(ticks) // 8)]


def _polyline(draw, pts, fill, dashed, width=2, on=7, off=5):
    """A line through pts (pixels), solid or dashed (on / off px)."""
    if not dashed:
        return draw.line(pts, fill=fill, width=width)
    pos = 0.0  # distance along the polyline, so the dash pattern runs on across segments
    for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
        length, t = math.hypot(xb - xa, yb - ya), 0.0
        while t < length:
            phase = (pos + t) % (on + off)
            run = min(length - t, (on if phase < on else on + off) - phase)
            if phase < on:
                a, b = t / length, (t + run) / length
                draw.line([(xa + (xb - xa) * a, ya + (yb - ya) * a), (xa + (xb - xa) * b, ya + (yb - ya) * b)],
                          fill=fill, width=width)
            t += run
        pos += length


def _plot_panel(draw, box, series, title, font, xrange, yrange=None, log=False, note=None, legend_w=190):
    """One panel in box (x0, y0, x1, y1): title, axes with numeric ticks, the lines, a legend on
    the right. series: [(label, colour, dashed, [(step, value), ...])]; xrange: (first, last) step
    shown; yrange fixes the y axis, else it fits the data; log: a log y axis if all values are > 0
    and span > 2x. Returns the plot area (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    px0, py0, px1, py1 = x0 + 66, y0 + 28, x1 - legend_w, y1 - 46
    ys = [y for *_, ps in series for _, y in ps] or [0.0, 1.0]
    xlo, xhi = xrange
    log = log and yrange is None and min(ys) > 0 and max(ys) > 2 * min(ys)
    f = math.log10 if log else float
    ylo, yhi = yrange or (f(min(ys)), f(max(ys)))
    if yhi - ylo < 1e-12:
        ylo, yhi = ylo - max(0.5, abs(ylo) * 0.1), yhi + max(0.5, abs(yhi) * 0.1)
    if yrange is None:
        ylo, yhi = ylo - 0.05 * (yhi - ylo), yhi + 0.05 * (yhi - ylo)

    def to_px(x, y):
        return (px0 + (x - xlo) / (xhi - xlo) * (px1 - px0), py1 - (f(y) - ylo) / (yhi - ylo) * (py1 - py0))

    grey = (225, 225, 225)
    _text(draw, (px0, y0 + 6), title, font)
    for v in _nice_ticks(xlo, xhi):
        x = to_px(v, 10.0 ** ylo if log else ylo)[0]
        draw.line([(x, py0), (x, py1)], fill=grey)
        _text(draw, (x, py1 + 6), f"{v:g}", font, "ma")
    for v in _log_ticks(ylo, yhi) if log else _nice_ticks(ylo, yhi):
        y = to_px(xlo, v)[1]
        draw.line([(px0, y), (px1, y)], fill=grey)
        _text(draw, (px0 - 6, y), f"{v:g}", font, "rm")
    draw.rectangle([px0, py0, px1, py1], outline=(0, 0, 0))
    _text(draw, ((px0 + px1) / 2, py1 + 26), "step" + (" (log y axis)" if log else ""), font, "ma")
    for i, (label, colour, dashed, ps) in enumerate(series):
        xy = [to_px(x, y) for x, y in sorted(ps)]
        if len(xy) > 1:
            _polyline(draw, xy, colour, dashed)
        r = 3 if len(xy) == 1 or (len(xy) <= 40 and not dashed) else 0
        for x, y in xy if r else []:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        ly = py0 + 8 + 20 * i
        _polyline(draw, [(px1 + 12, ly), (px1 + 40, ly)], colour, dashed)
        _text(draw, (px1 + 46, ly), label, font, "lm")
    if note:
        _text(draw, ((px0 + px1) / 2, (py0 + py1) / 2), note, font, "mm", fill=(110, 110, 110))
    return px0, py0, px1, py1


def save_curves_png(path, records, title=None, size=(900, 900)):
    """Write training curves from train_min.py's eval records (a list of dicts, one per
    evaluation, each with "step") as one PNG, three panels stacked: the G loss terms and D
    loss, D's accuracy on real and generated samples on [0, 1], and the held-out PSNR and
    sharpness (dB) of the model (solid) and of the copy-last-input baseline (dashed). Missing
    keys and None / NaN / inf values are skipped. Written to a temporary file in the same
    folder, then renamed over ``path``. Returns the three plot areas (x0, y0, x1, y1) in px."""
    def series(curves):
        out = [(label, colour, dashed, [(s, v) for r in records
                                        if (s := _finite(r.get("step"))) is not None
                                        and (v := _finite(r.get(key))) is not None])
               for key, label, colour, dashed in curves]
        return [c for c in out if c[3]]

    steps = [s for r in records if (s := _finite(r.get("step"))) is not None] or [1.0]
    xlo = min(0.0, min(steps))  # the same x axis in every panel, with room for the last marker
    xrange = (xlo, xlo + 1.03 * (max(steps) - xlo) if max(steps) > xlo else xlo + 1.0)
    font = _curve_font()
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top = 34 if title else 6
    if title:
        _text(draw, (size[0] / 2, 10), str(title), _curve_font(16), "ma")
    h = (size[1] - top) / 3
    panels = [(series(_LOSS_CURVES), "G loss terms (mean since last eval)", None, True, "no data"),
              (series(_ACC_CURVES), "D accuracy", (0.0, 1.0), False, "no adversarial loss"),
              (series(_SCORE_CURVES), "Held-out scores (dB)", None, False, "no data")]
    boxes = []
    for i, (ser, name, yrange, log, empty) in enumerate(panels):
        note = "no evaluation yet" if not records else None if ser else empty
        box = (0, round(top + i * h), size[0], round(top + (i + 1) * h))
        boxes.append(_plot_panel(draw, box, ser, name, font, xrange, yrange, log, note))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return boxes
