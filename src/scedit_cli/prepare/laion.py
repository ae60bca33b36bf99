"""`scedit prepare laion`: filter LAION-style metadata the way the paper describes
("removed of duplicates, low-resolution images, those with a risk for harm, and
those that are of low quality"), with a report of what each rule removed.

Rules, applied in this order; a removed row is counted under the first rule it
fails, so rows_in - sum(removed) == rows_out. `failing` counts the per-row
rules (size, scores, caption) independently, so a row can fail several; the
duplicate rules are only checked for rows that pass those. A missing value (null, NaN) fails a
numeric rule: an unscored row is not known to be safe or large enough.

  min_size           WIDTH < min_width or HEIGHT < min_height
  aesthetic          aesthetic < min_aesthetic
  watermark          pwatermark > max_watermark
  unsafe             punsafe > max_unsafe
  caption_length     caption shorter/longer than the limits (after trimming)
  caption_junk       language-agnostic junk: no letters, a bare URL or file name,
                     camera file names (IMG_1234), HTML/template debris, long runs
                     of one character, mostly one repeated word, mostly symbols
  duplicate_url      same URL as an earlier kept row
  duplicate_caption_size  same caption (case/space-insensitive) and same WIDTH x HEIGHT
  image_unreadable   image present but undecodable (only when images are present)
  near_duplicate_image    64-bit pHash within --phash-distance of an earlier kept
                     image (only when images are present)

Column names are matched case-insensitively (LAION uses URL, TEXT, WIDTH,
HEIGHT, aesthetic, pwatermark, punsafe). A rule whose column is absent cannot be
applied: with its default settings the report lists it under `not_applied` and the CLI
says so; when one of its settings was given explicitly (`LaionFilterConfig.explicit`,
the options on the command line) it is an error, since the user asked for that rule.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import SceditError
from ..fsutil import atomic_path, check_output_location, write_json_atomic

RULES = (
    "min_size", "aesthetic", "watermark", "unsafe", "caption_length", "caption_junk",
    "duplicate_url", "duplicate_caption_size", "image_unreadable", "near_duplicate_image",
)
COLUMN_NAMES = {
    "url": ("url",), "text": ("text", "caption"), "width": ("width",), "height": ("height",),
    "aesthetic": ("aesthetic", "aesthetic_score"), "pwatermark": ("pwatermark", "watermark"),
    "punsafe": ("punsafe", "nsfw_prob"), "image": ("image", "jpg", "png"),
}


@dataclass(frozen=True)
class LaionFilterConfig:
    min_width: int = 512
    min_height: int = 512
    min_aesthetic: float | None = 5.0
    max_watermark: float = 0.5
    max_unsafe: float = 0.5
    min_caption_chars: int = 5
    max_caption_chars: int = 1000
    phash_distance: int | None = 4  # None: no near-duplicate image rule
    image_column: str | None = None
    explicit: frozenset[str] = frozenset()  # settings the user gave (field names): their rules must apply


# The rule each setting drives, and the columns each rule reads.
SETTING_RULES = {
    "min_width": "min_size", "min_height": "min_size", "min_aesthetic": "aesthetic", "max_watermark": "watermark",
    "max_unsafe": "unsafe", "min_caption_chars": "caption_length", "max_caption_chars": "caption_length",
    "phash_distance": "near_duplicate_image",
}
RULE_COLUMNS = {
    "min_size": ("width", "height"), "aesthetic": ("aesthetic",), "watermark": ("pwatermark",),
    "unsafe": ("punsafe",), "caption_length": ("text",), "caption_junk": ("text",), "duplicate_url": ("url",),
    "duplicate_caption_size": ("text", "width", "height"), "image_unreadable": ("image",),
    "near_duplicate_image": ("image",),
}


_URL_ONLY = re.compile(r"^(?:https?://|www\.)\S+$", re.I)
_FILENAME = re.compile(r"^\S+\.(?:jpe?g|png|gif|webp|bmp|tiff?|heic|svg)$", re.I)
_CAMERA = re.compile(r"^(?:img|dsc|dscn|dscf|dcim|pict|pic|photo|image|screenshot|untitled)[\s_-]*\d*$", re.I)
_MARKUP = re.compile(r"<\s*/?\s*[a-z][^>]*>|&(?:[a-z]+|#\d+);|\{\{|\}\}|%[0-9a-f]{2}|\\u[0-9a-f]{4}|\ufffd", re.I)
_RUN = re.compile(r"(.)\1{9,}")  # the same character 10+ times: "!!!!!!!!!!", "__________"


def caption_problem(text: Any, cfg: LaionFilterConfig) -> str | None:
    """'caption_length', 'caption_junk' or None. Language-agnostic: works on any script."""
    if not isinstance(text, str):
        return "caption_length"
    t = " ".join(text.split())
    if not cfg.min_caption_chars <= len(t) <= cfg.max_caption_chars:
        return "caption_length"
    letters = sum(ch.isalpha() for ch in t)  # Unicode letters: Latin, CJK, Cyrillic, Arabic, ...
    if letters == 0 or letters / len(t) < 0.3:
        return "caption_junk"
    if _URL_ONLY.match(t) or _FILENAME.match(t) or _CAMERA.match(t) or _MARKUP.search(t) or _RUN.search(t):
        return "caption_junk"
    words = t.casefold().split()
    if len(words) >= 4 and Counter(words).most_common(1)[0][1] / len(words) > 0.5:
        return "caption_junk"
    return None


def _norm_caption(text: str) -> str:
    return " ".join(text.casefold().split())


def _h64(s: str) -> int:
    # 8-byte digests, not the strings: 600k+ URLs stay small in memory.
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "replace"), digest_size=8).digest(), "little")


class NearDuplicateIndex:
    """Exact search for 64-bit hashes within Hamming distance d, by the pigeonhole principle:
    split each hash into d+1 blocks; two hashes within d bits agree on at least one block."""

    def __init__(self, distance: int):
        self.distance = distance
        blocks = distance + 1
        edges = [round(i * 64 / blocks) for i in range(blocks + 1)]
        self.spans = [(edges[i], edges[i + 1] - edges[i]) for i in range(blocks)]
        self.tables: list[dict[int, list[int]]] = [{} for _ in self.spans]

    def _parts(self, h: int):
        return [(h >> start) & ((1 << width) - 1) for start, width in self.spans]

    def find(self, h: int) -> int | None:
        for table, part in zip(self.tables, self._parts(h)):
            for other in table.get(part, ()):
                if (h ^ other).bit_count() <= self.distance:
                    return other
        return None

    def add(self, h: int) -> None:
        for table, part in zip(self.tables, self._parts(h)):
            table.setdefault(part, []).append(h)


def _phash(value: Any, base: Path) -> int:
    import imagehash
    from PIL import Image

    from ..images import to_rgb8

    if isinstance(value, dict):
        value = value.get("bytes") or (str(base / value["path"]) if value.get("path") else None)
    if isinstance(value, (bytes, bytearray)):
        img = Image.open(io.BytesIO(value))
    elif isinstance(value, str) and value:
        img = Image.open(base / value)
    else:
        raise OSError("no image")
    img.load()
    return int(str(imagehash.phash(to_rgb8(img))), 16)


def _resolve_columns(names: list[str], cfg: LaionFilterConfig) -> dict[str, str]:
    lower = {n.lower(): n for n in names}
    found = {}
    for role, options in COLUMN_NAMES.items():
        for o in options:
            if o in lower:
                found[role] = lower[o]
                break
    if cfg.image_column:
        if cfg.image_column not in names:
            raise SceditError(f"--image-column {cfg.image_column!r} is not a column (columns: {', '.join(names)})")
        found["image"] = cfg.image_column
    return found


def _check_explicit_rules(cfg: LaionFilterConfig, cols: dict[str, str], file: Path, names: list[str]) -> None:
    """A setting given explicitly asks for its rule: refuse to run without the rule's columns."""
    for setting in sorted(cfg.explicit & SETTING_RULES.keys()):
        if getattr(cfg, setting) is None:  # the option turned the rule off
            continue
        missing = [role for role in RULE_COLUMNS[SETTING_RULES[setting]] if role not in cols]
        if missing:
            wanted = " or ".join(COLUMN_NAMES[missing[0]])
            raise SceditError(
                f"--{setting.replace('_', '-')} was given, but {file} has no {wanted} column for the "
                f"{SETTING_RULES[setting]} rule (columns: {', '.join(names)}); leave the option out to skip the rule"
            )


def _input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise SceditError(f"{path} contains no .parquet files; point --input at LAION metadata parquet")
        return files
    if not path.is_file():
        raise SceditError(f"--input {path} does not exist")
    if path.suffix != ".parquet":
        raise SceditError(f"--input {path} is not a .parquet file")
    return [path]


def filter_laion(input: Path, output: Path, cfg: LaionFilterConfig = LaionFilterConfig(), report_path: Path | None = None) -> dict[str, Any]:
    """Filter LAION-style parquet `input` into `output` (parquet); returns and saves the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    input, output = Path(input), check_output_location(output, "--output", folder=False)
    files = _input_files(input)
    if report_path is not None:
        check_output_location(report_path, "--report", folder=False)
    if output.resolve() in {f.resolve() for f in files}:
        raise SceditError(f"--output {output} is the input file; the input is never modified: choose another path")
    try:
        schema = pq.read_schema(files[0])
    except Exception as e:
        raise SceditError(f"cannot read parquet {files[0]}: {e}") from None
    cols = _resolve_columns(schema.names, cfg)
    _check_explicit_rules(cfg, cols, files[0], schema.names)
    active = {r for r, roles in RULE_COLUMNS.items() if all(c in cols for c in roles)}
    if cfg.min_aesthetic is None:
        active.discard("aesthetic")
    if cfg.phash_distance is None:
        active.discard("near_duplicate_image")
    not_applied = [r for r in RULES if r not in active]

    removed: Counter = Counter()
    failing: Counter = Counter()
    seen_url: set[int] = set()
    seen_caption_size: set[int] = set()
    near = NearDuplicateIndex(cfg.phash_distance) if "near_duplicate_image" in active else None
    rows_in = rows_out = 0
    removed_examples: dict[str, list[Any]] = {r: [] for r in RULES}
    start = time.perf_counter()
    with atomic_path(output) as tmp:
        writer = None
        try:
            for f in files:
                pf = pq.ParquetFile(f)
                if pf.schema_arrow.names != schema.names:
                    raise SceditError(f"{f} has columns {pf.schema_arrow.names}, unlike {files[0]} ({schema.names}); parts must share one schema")
                for batch in pf.iter_batches(batch_size=8192):
                    rows = batch.to_pylist()
                    keep = []
                    for row in rows:
                        fails = _row_failures(row, cols, cfg, active)
                        # duplicates depend on what was kept before, so they are checked after the per-row rules
                        first = fails[0] if fails else None
                        if first is None:
                            first = _duplicate_rule(row, cols, active, seen_url, seen_caption_size, near, f.parent)
                        for r in fails:
                            failing[r] += 1
                        if first is None:
                            keep.append(True)
                        else:
                            if first not in fails:
                                failing[first] += 1
                            removed[first] += 1
                            if len(removed_examples[first]) < 5:
                                removed_examples[first].append(row.get(cols.get("url")) or row.get(cols.get("text")))
                            keep.append(False)
                    rows_in += len(rows)
                    kept = batch.filter(pa.array(keep, type=pa.bool_()))
                    rows_out += kept.num_rows
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, batch.schema)
                    writer.write_batch(kept)
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema)
        finally:
            if writer is not None:
                writer.close()
    report = {
        "input": str(input),
        "output": str(output),
        "rows_in": rows_in,
        "removed": {r: removed.get(r, 0) for r in RULES if r in active},
        "failing": {r: failing.get(r, 0) for r in RULES if r in active},
        "rows_out": rows_out,
        "not_applied": not_applied,
        "columns": cols,
        "settings": {**asdict(cfg), "explicit": sorted(cfg.explicit)},
        "examples": {r: v for r, v in removed_examples.items() if v},
        "seconds": round(time.perf_counter() - start, 3),
    }
    assert rows_in - sum(report["removed"].values()) == rows_out
    report_path = Path(report_path) if report_path else output.with_name(output.name + ".report.json")
    write_json_atomic(report_path, report)
    report["report"] = str(report_path)
    return report


def _num(v: Any) -> float | None:
    """A cell's number; None for a missing one (null or NaN), which fails its rule."""
    if v is None:
        return None
    v = float(v)
    return None if v != v else v


def _row_failures(row: dict, cols: dict[str, str], cfg: LaionFilterConfig, active: set[str]) -> list[str]:
    fails = []
    if "min_size" in active:
        w, h = _num(row[cols["width"]]), _num(row[cols["height"]])
        if w is None or h is None or w < cfg.min_width or h < cfg.min_height:
            fails.append("min_size")
    if "aesthetic" in active:
        a = _num(row[cols["aesthetic"]])
        if a is None or a < cfg.min_aesthetic:
            fails.append("aesthetic")
    if "watermark" in active:
        p = _num(row[cols["pwatermark"]])
        if p is None or p > cfg.max_watermark:
            fails.append("watermark")
    if "unsafe" in active:
        p = _num(row[cols["punsafe"]])
        if p is None or p > cfg.max_unsafe:
            fails.append("unsafe")
    if "caption_length" in active:
        problem = caption_problem(row[cols["text"]], cfg)
        if problem:
            fails.append(problem)
    return fails


def _duplicate_rule(row, cols, active, seen_url, seen_caption_size, near, base: Path) -> str | None:
    """First duplicate rule the row fails; registers the row as kept when it passes them all."""
    url_h = cap_h = ph = None
    if "duplicate_url" in active and row[cols["url"]]:
        url_h = _h64(str(row[cols["url"]]).strip())
        if url_h in seen_url:
            return "duplicate_url"
    if "duplicate_caption_size" in active:
        cap_h = _h64(f"{_norm_caption(str(row[cols['text']]))}\x00{row[cols['width']]}x{row[cols['height']]}")
        if cap_h in seen_caption_size:
            return "duplicate_caption_size"
    if "image_unreadable" in active:
        try:
            ph = _phash(row[cols["image"]], base)
        except (OSError, SyntaxError, ValueError):
            return "image_unreadable"
        if near is not None and near.find(ph) is not None:
            return "near_duplicate_image"
    if url_h is not None:
        seen_url.add(url_h)
    if cap_h is not None:
        seen_caption_size.add(cap_h)
    if near is not None and ph is not None:
        near.add(ph)
    return None


def format_report(report: dict[str, Any]) -> str:
    lines = [f"LAION filter: {report['rows_in']} rows in"]
    for rule, n in report["removed"].items():
        lines.append(f"  - {rule:<24} {n:>9} removed ({report['failing'][rule]} failing)")
    lines.append(f"  = {report['rows_out']} rows out -> {report['output']}")
    if report["not_applied"]:
        lines.append(f"not applied (column missing or rule off): {', '.join(report['not_applied'])}")
    lines.append(f"report: {report['report']}")
    return "\n".join(lines)
