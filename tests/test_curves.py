"""Tests of figures.save_curves_png: the training-curve figure drawn from train_min.py's eval records.

Pixel checks find a line by its exact RGB colour (Pillow draws lines without antialiasing)
inside the plot areas the function returns, so they see where the data landed.
"""
import math
import os

import numpy as np
from PIL import Image

from figures import _BLUE, _ORANGE, save_curves_png

GREEN = (44, 160, 44)  # g_gdl


def full_record(step, i=0):
    return {"step": step, "psnr": 20 + 0.2 * i, "psnr_last": 21.5, "sharp": 16 + 0.1 * i, "sharp_last": 18.7,
            "g_lp": 1.0 / (1 + i), "g_gdl": 0.55, "g_adv": 0.69, "g_total": 1.5 / (1 + i), "d_loss": 1.3,
            "d_acc_real": 0.6, "d_acc_fake": 0.7}


def load(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def colour_pixels(img, box, colour):
    """(ys, xs) of the pixels of exactly `colour` inside box (x0, y0, x1, y1), in image coordinates."""
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(np.all(img[y0:y1 + 1, x0:x1 + 1] == colour, axis=-1))
    return ys + y0, xs + x0


def check_png(path, boxes):
    img = load(path)
    assert img.shape == (900, 900, 3)
    assert len(boxes) == 3
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 < 900 and 0 <= y0 < y1 < 900 and x1 - x0 > 300 and y1 - y0 > 100
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]
    return img


def test_curves_png_written_with_expected_size(tmp_path):
    path = str(tmp_path / "sub" / "curves.png")
    boxes = save_curves_png(path, [full_record(200 * i, i) for i in range(1, 21)], title="runs/x (adv_gdl)")
    img = check_png(path, boxes)
    assert np.all(img[0, 0] == 255)  # white background
    for box in boxes:  # every panel has its lines: g_lp, d_acc_real, psnr are blue
        assert len(colour_pixels(img, box, _BLUE)[0]) > 50
    for box in boxes[1:]:  # d_acc_fake, sharp are orange
        assert len(colour_pixels(img, box, _ORANGE)[0]) > 50
    # overwriting works (atomic replace)
    save_curves_png(path, [full_record(100)])
    check_png(path, boxes)


def test_curves_zero_records(tmp_path):
    path = str(tmp_path / "curves.png")
    img = check_png(path, boxes := save_curves_png(path, []))
    for box in boxes:
        assert len(colour_pixels(img, box, _BLUE)[0]) == 0
        x0, y0, x1, y1 = box  # the "no evaluation yet" note in the middle of each panel
        middle = img[(y0 + y1) // 2 - 8:(y0 + y1) // 2 + 8, (x0 + x1) // 2 - 40:(x0 + x1) // 2 + 40]
        assert np.any(middle.sum(axis=-1) < 500)


def test_curves_single_record_draws_markers(tmp_path):
    path = str(tmp_path / "curves.png")
    boxes = save_curves_png(path, [full_record(400)])
    img = check_png(path, boxes)
    for box in boxes:  # one marker of a few pixels in each panel (psnr, g_lp, d_acc_real are blue)
        ys, xs = colour_pixels(img, box, _BLUE)
        assert 5 <= len(ys) < 200
        assert xs.min() > box[0] + 0.8 * (box[2] - box[0])  # step 400 of an axis starting at 0: at the right


def test_curves_without_adversarial_or_gdl_keys(tmp_path):
    path = str(tmp_path / "curves.png")
    records = [{"step": s, "psnr": 20 + s / 1000, "psnr_last": 21.0, "sharp": 16.0, "sharp_last": 18.0,
                "g_lp": 0.5 - s / 10000, "g_total": 0.5 - s / 10000} for s in range(100, 1100, 100)]
    boxes = save_curves_png(path, records)
    img = check_png(path, boxes)
    loss, acc, scores = boxes
    assert len(colour_pixels(img, loss, _BLUE)[0]) > 50
    assert len(colour_pixels(img, loss, GREEN)[0]) == 0  # no g_gdl
    assert len(colour_pixels(img, acc, _BLUE)[0]) == 0 and len(colour_pixels(img, acc, _ORANGE)[0]) == 0
    assert len(colour_pixels(img, scores, _ORANGE)[0]) > 50


def test_curves_nan_none_and_missing_values(tmp_path):
    path = str(tmp_path / "curves.png")
    records = [full_record(100 * i, i) for i in range(1, 11)]
    for r in records:
        r["g_gdl"] = None
    records[2]["psnr"] = float("nan")
    records[3]["psnr"] = None
    records[4]["sharp"] = float("inf")
    records[5]["d_acc_fake"] = "n/a"
    del records[6]["g_lp"]
    records[7]["step"] = None  # a record without a usable step is skipped
    records.append({"step": 1200})
    boxes = save_curves_png(path, records)
    img = check_png(path, boxes)
    assert len(colour_pixels(img, boxes[0], GREEN)[0]) == 0  # g_gdl all None: no line
    assert len(colour_pixels(img, boxes[2], _BLUE)[0]) > 50
    # all values of a panel missing: a note, no crash
    save_curves_png(path, [{"step": 10, "psnr": float("nan")}, {"step": 20}])


def test_curves_lines_follow_the_data(tmp_path):
    """A rising PSNR is low at the left and high at the right of its panel, a falling one the
    reverse; D accuracy 1 lies at the top of [0, 1] and 0 at the bottom."""
    for rising in (True, False):
        path = str(tmp_path / f"curves_{rising}.png")
        records = [{"step": 100 * i, "psnr": 10 + (i if rising else 20 - i),
                    "d_acc_real": 1.0, "d_acc_fake": 0.0} for i in range(1, 21)]
        boxes = save_curves_png(path, records)
        img = load(path)
        x0, y0, x1, y1 = boxes[2]
        ys, xs = colour_pixels(img, boxes[2], _BLUE)
        width, mid = x1 - x0, (y0 + y1) / 2
        left, right = ys[xs < x0 + 0.15 * width], ys[xs > x0 + 0.85 * width]
        assert len(left) > 5 and len(right) > 5
        low, high = (left, right) if rising else (right, left)
        assert low.mean() > mid + 0.3 * (y1 - y0) and high.mean() < mid - 0.3 * (y1 - y0)
        ax0, ay0, ax1, ay1 = boxes[1]
        real_y = colour_pixels(img, boxes[1], _BLUE)[0]
        fake_y = colour_pixels(img, boxes[1], _ORANGE)[0]
        assert len(real_y) > 50 and np.all(np.abs(real_y - ay0) <= 4)
        assert len(fake_y) > 50 and np.all(np.abs(fake_y - ay1) <= 4)


def test_curves_loss_panel_log_axis(tmp_path):
    """g_lp falling geometrically over 3 decades is a straight line on the loss panel's log axis
    (on a linear axis its middle would sit near the bottom)."""
    path = str(tmp_path / "curves.png")
    n = 21
    records = [{"step": 100 * i, "g_lp": 10 ** (1 - 3 * i / (n - 1))} for i in range(n)]
    boxes = save_curves_png(path, records)
    img = load(path)
    x0, y0, x1, y1 = boxes[0]
    ys, xs = colour_pixels(img, boxes[0], _BLUE)
    cols = {x: ys[xs == x].mean() for x in np.unique(xs)}
    first, last = min(cols), max(cols)
    middle = min(cols, key=lambda x: abs(x - (first + last) / 2))
    assert cols[first] < y0 + 0.2 * (y1 - y0) and cols[last] > y1 - 0.2 * (y1 - y0)
    assert math.isclose(cols[middle], (cols[first] + cols[last]) / 2, abs_tol=8)
