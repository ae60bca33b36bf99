"""`scedit prepare style`: clean style words out of captions and insert a trigger.

Paper sec. 4.2: "to prevent style leakage, we perform a cleansing of
style-related words from the original prompts and incorporated specific trigger
words <sce> during training". The built-in lists cover the paper's six styles
(3D, anime, flat illustration, oil painting, sketch, watercolor); user phrases
come from a file. Matching ignores case, accepts plurals (paintings,
watercolors), and any run of spaces/hyphens/underscores inside a phrase
("oil-painting", "water colour"). Phrases around the style word that only
carried the style ("in watercolor style", "a sketch of") go with it, and the
punctuation left behind is tidied. Every changed caption is written to a JSONL
report (before, after, removed words) so the cleaning can be reviewed.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SceditError
from ..fsutil import atomic_dir, atomic_path, check_output_location, read_jsonl, write_text_atomic
from .inputs import TEXT_COLUMNS, pick_column

# Longer phrases are matched first, so "oil painting" wins over "painting".
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "3d": ("3d", "3-d", "3d render", "3d rendering", "3d model", "3d art", "3d illustration", "three dimensional", "render",
           "rendering", "cgi", "blender", "octane render", "unreal engine", "cinema 4d", "c4d", "pixar"),
    "anime": ("anime", "manga", "anime style", "cel shading", "cel shaded", "chibi", "studio ghibli", "ghibli",
              "japanese animation", "makoto shinkai", "kyoto animation"),
    "flat-illustration": ("flat illustration", "flat design", "flat style", "flat vector", "flat art", "flat colors",
                          "vector illustration", "vector art", "vector graphic", "vector", "illustration", "clipart", "clip art"),
    "oil-painting": ("oil painting", "oil on canvas", "oil paint", "oil-based painting", "painting", "impasto", "canvas print"),
    "sketch": ("sketch", "pencil sketch", "pencil drawing", "charcoal drawing", "line drawing", "line art", "lineart",
               "drawing", "hand drawn", "doodle", "graphite", "charcoal", "ink drawing", "crosshatching"),
    "watercolor": ("watercolor", "watercolour", "water color", "water colour", "watercolor painting", "aquarelle", "gouache", "wet on wet"),
}
_STYLE_ALIASES = {re.sub(r"[\s_-]+", "", k): k for k in STYLE_WORDS}


def resolve_styles(names: tuple[str, ...] | list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        key = re.sub(r"[\s_-]+", "", name.lower())
        if key == "all":
            out.extend(STYLE_WORDS)
        elif key in _STYLE_ALIASES:
            out.append(_STYLE_ALIASES[key])
        else:
            raise SceditError(f"unknown style {name!r}; built-in styles: {', '.join(STYLE_WORDS)}, or all (add your own with --words-file)")
    return list(dict.fromkeys(out))


def read_words_file(path: Path) -> list[str]:
    if not Path(path).is_file():
        raise SceditError(f"--words-file {path} does not exist; give a text file with one style word or phrase per line")
    words = [line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w]
    if not words:
        raise SceditError(f"--words-file {path} has no words (one word or phrase per line, # starts a comment)")
    return words


def _phrase_regex(phrase: str) -> str:
    parts = [re.escape(p) for p in re.split(r"[\s_-]+", phrase.strip()) if p]
    return r"[\s_-]*".join(parts) + r"(?:e?s)?"  # plural on the last word


@dataclass(frozen=True)
class StyleConfig:
    styles: tuple[str, ...] = ()
    words_file: Path | None = None
    extra_words: tuple[str, ...] = ()
    trigger: str = "<sce>"
    position: str = "start"  # "start" | "end"


class StyleCleaner:
    def __init__(self, cfg: StyleConfig):
        if cfg.position not in ("start", "end"):
            raise SceditError(f"--position must be start or end, got {cfg.position!r}")
        words = [w for s in resolve_styles(cfg.styles) for w in STYLE_WORDS[s]]
        if cfg.words_file:
            words += read_words_file(cfg.words_file)
        words += list(cfg.extra_words)
        if not words:
            raise SceditError("no style words: pass --style (3d, anime, flat-illustration, oil-painting, sketch, watercolor, all) and/or --words-file")
        words = sorted(set(w.lower() for w in words), key=len, reverse=True)
        style = "(?:" + "|".join(_phrase_regex(w) for w in words) + ")"
        word = r"(?<![\w])" + style + r"(?:[\s_-]*(?:styled?|art(?:work)?s?|look|aesthetic))?(?![\w])"
        # "in (a|the) watercolor style", "in watercolor", "as a sketch", "a watercolor of": the carrier words go too
        self._carrier = re.compile(r"(?<![\w])(?:(?:in\s+the\s+style\s+of|in|with|as)\s+(?:an?\s+|the\s+)?)" + word, re.I)
        self._of = re.compile(r"(?<![\w])(?:an?|the)\s+(?:" + word[len(r"(?<![\w])"):] + r")(?:\s+(?:" + word[len(r"(?<![\w])"):] + r"))*\s+of\s+", re.I)
        self._word = re.compile(word, re.I)
        self.trigger = cfg.trigger
        self.position = cfg.position

    def clean(self, caption: str) -> tuple[str, list[str]]:
        """(cleaned caption with trigger, removed phrases)."""
        removed: list[str] = []

        def take(m: re.Match) -> str:
            removed.append(" ".join(m.group(0).split()))
            return " "

        text = self._of.sub(lambda m: (take(m), " ")[1], caption)
        text = self._carrier.sub(take, text)
        text = self._word.sub(take, text)
        if removed:
            text = _tidy(text)
        has_trigger = re.search(r"(?<!\S)" + re.escape(self.trigger) + r"(?!\S)", text) is not None
        if not has_trigger:
            text = text.strip()
            if not text:
                text = self.trigger
            elif self.position == "start":
                text = f"{self.trigger} {text}"
            else:
                text = f"{text} {self.trigger}"
        return text, removed


def _tidy(text: str) -> str:
    t = re.sub(r"\(\s*\)|\[\s*\]", " ", text)
    t = re.sub(r"(?<![\w])(?:an?|the)\s+(?=of\b)", " ", t, flags=re.I)  # "a  of a fox" -> "of a fox"
    t = re.sub(r"^\s*of\s+", "", t, flags=re.I)
    t = re.sub(r"(?<![\w])(?:an?|the|in|with|as|of|by|and)\s*(?=[,.;:!?]|$)", "", t, flags=re.I)
    t = re.sub(r"\s+([,.;:!?])", r"\1", t)
    t = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", t)
    t = re.sub(r"\s{2,}", " ", t).strip()
    t = re.sub(r"^[,;:.\s-]+|[,;:\s-]+$", "", t)
    return t


# --- datasets -----------------------------------------------------------------
def _clean_rows(rows: list[dict], col: str, cleaner: StyleCleaner, changes: list[dict], where: str) -> None:
    for i, row in enumerate(rows):
        before = row.get(col)
        before = "" if before is None else str(before)
        after, removed = cleaner.clean(before)
        if after != before:
            changes.append({"source": where, "row": i, "before": before, "after": after, "removed": removed})
        row[col] = after


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path, "fix or remove that line")]


def _jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def clean_style_dataset(input: Path, output: Path, cfg: StyleConfig, text_column: str | None = None, report_path: Path | None = None) -> dict[str, Any]:
    """Write a copy of `input` with cleaned captions to `output`; never modifies `input`."""
    cleaner = StyleCleaner(cfg)
    input, output = Path(input), Path(output)
    if not input.exists():
        raise SceditError(f"--input {input} does not exist")
    check_output_location(output, "--output", folder=input.is_dir())
    ri, ro = input.resolve(), output.resolve()
    if ri == ro or ri in ro.parents or (input.is_dir() and ro in ri.parents):
        raise SceditError(f"--output {output} overlaps the input {input}; the input is never modified: choose another output")
    changes: list[dict] = []
    captions = 0
    if input.is_dir():
        meta = input / "metadata.jsonl"
        with atomic_dir(output) as tmp:
            shutil.copytree(input, tmp, dirs_exist_ok=True, symlinks=True)
            if meta.is_file():
                rows = _read_jsonl(meta)
                if not rows:
                    raise SceditError(f"{meta} has no rows")
                col = pick_column(list(dict.fromkeys(k for r in rows for k in r)), text_column, TEXT_COLUMNS, "text", str(meta))
                _clean_rows(rows, col, cleaner, changes, "metadata.jsonl")
                (tmp / "metadata.jsonl").write_text(_jsonl_text(rows), encoding="utf-8")
                captions = len(rows)
            else:
                txts = sorted(p for p in tmp.rglob("*.txt") if not any(q.startswith(".") for q in p.relative_to(tmp).parts))
                if not txts:
                    raise SceditError(f"{input} has neither metadata.jsonl nor .txt caption files; nothing to clean")
                for p in txts:
                    rows = [{"text": p.read_text(encoding="utf-8").strip()}]
                    _clean_rows(rows, "text", cleaner, changes, p.relative_to(tmp).as_posix())
                    p.write_text(rows[0]["text"] + "\n", encoding="utf-8")
                captions = len(txts)
        default_report = output / "style-report.jsonl"
    else:
        suffix = input.suffix.lower()
        if suffix == ".jsonl":
            rows = _read_jsonl(input)
            col = pick_column(list(dict.fromkeys(k for r in rows for k in r)), text_column, TEXT_COLUMNS, "text", str(input))
            _clean_rows(rows, col, cleaner, changes, input.name)
            write_text_atomic(output, _jsonl_text(rows))
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pq.read_table(input)
            col = pick_column(table.column_names, text_column, TEXT_COLUMNS, "text", str(input))
            rows = [{col: v} for v in table.column(col).to_pylist()]
            _clean_rows(rows, col, cleaner, changes, input.name)
            table = table.set_column(table.column_names.index(col), col, pa.array([r[col] for r in rows], type=pa.string()))
            with atomic_path(output) as tmp:
                pq.write_table(table, tmp)
        elif suffix == ".csv":
            with input.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fields = reader.fieldnames or []
            col = pick_column(list(fields), text_column, TEXT_COLUMNS, "text", str(input))
            _clean_rows(rows, col, cleaner, changes, input.name)
            with atomic_path(output) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
        else:
            raise SceditError(f"--input {input}: use a folder (metadata.jsonl or .txt captions) or a .jsonl, .parquet or .csv file")
        captions = len(rows)
        default_report = output.with_name(output.name + ".style-report.jsonl")
    report = Path(report_path) if report_path else default_report
    write_text_atomic(report, _jsonl_text(changes))
    removed_counts = Counter(w.lower() for c in changes for w in c["removed"])
    return {
        "input": str(input),
        "output": str(output),
        "captions": captions,
        "captions_changed": len(changes),
        "captions_with_style_words": sum(1 for c in changes if c["removed"]),
        "removed_words": dict(removed_counts.most_common()),
        "trigger": cfg.trigger,
        "position": cfg.position,
        "report": str(report),
    }
