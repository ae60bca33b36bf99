"""Files of `scedit eval --control`: per-image CSV, summary JSON, worst-cases sheet (all written atomically).

- `control_per_image.csv`: one row per (image, condition): file, condition,
  control image, then every metric measured (empty where a metric does not
  apply to the row's condition);
- `control_summary.json`: per condition the mean of each metric, the image
  count and the dataset-level figures, the conditions not measured and why,
  and the settings;
- `control_worst.png`: for each condition its worst images by the primary
  metric, one row each: the condition map the model saw | the map detected on
  the generated image | the generated image, under a line naming the file and
  the value.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from PIL import Image, ImageDraw

from ..fsutil import atomic_path, write_json_atomic, write_text_atomic

CSV_NAME, SUMMARY_NAME, WORST_NAME = "control_per_image.csv", "control_summary.json", "control_worst.png"
HEADER = "condition map | regenerated map | generated image"
_LABEL_H, _PAD = 14, 2


def _csv_text(result) -> str:
    metric_names: list[str] = []
    for row in result.rows:
        metric_names += [k for k in row.metrics if k not in metric_names]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "condition", "control_image", *metric_names])
    for row in result.rows:
        w.writerow([row.file, row.condition, row.control_image, *(row.metrics.get(k, "") for k in metric_names)])
    return buf.getvalue()


def worst_sheet(cases) -> Image.Image:
    """The worst-cases sheet: a header line, then per case a label line over its three thumbnails."""
    cw = max(t.width for c in cases for t in c.thumbs)
    ch = max(t.height for c in cases for t in c.thumbs)
    labels = [f"{c.condition}  {c.metric}={c.value:.4f}  {c.file}" for c in cases]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(measure.textlength(t) for t in [HEADER, *labels])
    width = max(3 * cw + 4 * _PAD, int(text_w) + 2 * _PAD)
    row_h = _LABEL_H + ch + _PAD
    sheet = Image.new("RGB", (width, _LABEL_H + len(cases) * row_h + _PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, 1), HEADER, fill=(0, 0, 0))
    for i, (case, label) in enumerate(zip(cases, labels)):
        top = _LABEL_H + i * row_h
        draw.text((_PAD, top + 1), label, fill=(0, 0, 0))
        for j, thumb in enumerate(case.thumbs):
            sheet.paste(thumb, (_PAD + j * (cw + _PAD), top + _LABEL_H))
    return sheet


def write_control_report(result, report_dir: Path, cases) -> dict[str, str]:
    """Write the report files into `report_dir`; returns {kind: path}."""
    report_dir = Path(report_dir)
    written = {"per_image_csv": str(report_dir / CSV_NAME), "summary_json": str(report_dir / SUMMARY_NAME)}
    if cases:
        written["worst_png"] = str(report_dir / WORST_NAME)
    write_text_atomic(report_dir / CSV_NAME, _csv_text(result))
    write_json_atomic(report_dir / SUMMARY_NAME, {
        "folder": result.folder,
        "images": result.images,
        "summary": result.summary,
        "not_measured": result.not_measured,
        "settings": result.settings,
        "worst": [{"condition": c.condition, "file": c.file, c.metric: c.value} for c in cases],
        "files": written,
    })
    if cases:
        with atomic_path(report_dir / WORST_NAME) as tmp:
            worst_sheet(cases).save(tmp, format="PNG")
    return written
