"""LAION filtering on a synthetic parquet whose violators are known row by row."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from PIL import Image

from scedit_cli.cli import main
from scedit_cli.errors import SceditError
from scedit_cli.prepare.laion import LaionFilterConfig, NearDuplicateIndex, caption_problem, filter_laion

GOOD = dict(WIDTH=768, HEIGHT=640, aesthetic=6.2, pwatermark=0.1, punsafe=0.01)


def _rows():
    """(row, expected first failing rule or None)."""
    cases = [
        (dict(URL="u/1", TEXT="a red fox in the snow"), None),
        (dict(URL="u/2", TEXT="一只在雪地里的红狐狸"), None),  # CJK caption: letters, kept
        (dict(URL="u/3", TEXT="Лиса в снегу на закате"), None),
        (dict(URL="u/4", TEXT="small image", WIDTH=300), "min_size"),
        (dict(URL="u/5", TEXT="tall but narrow", HEIGHT=500), "min_size"),
        (dict(URL="u/6", TEXT="ugly picture", aesthetic=4.0), "aesthetic"),
        (dict(URL="u/7", TEXT="unscored picture", aesthetic=None), "aesthetic"),
        (dict(URL="u/7n", TEXT="picture scored NaN", aesthetic=float("nan")), "aesthetic"),  # missing, not passing
        (dict(URL="u/8", TEXT="stock photo", pwatermark=0.9), "watermark"),
        (dict(URL="u/9", TEXT="bad content", punsafe=0.8), "unsafe"),
        (dict(URL="u/10", TEXT="hi"), "caption_length"),
        (dict(URL="u/11", TEXT="x" * 1200), "caption_length"),
        (dict(URL="u/12", TEXT="1234 5678 90"), "caption_junk"),
        (dict(URL="u/13", TEXT="IMG_20190412"), "caption_junk"),
        (dict(URL="u/14", TEXT="https://example.com/a.jpg"), "caption_junk"),
        (dict(URL="u/15", TEXT="holiday_photo.JPG"), "caption_junk"),
        (dict(URL="u/16", TEXT="nice <b>bold</b> mug"), "caption_junk"),
        (dict(URL="u/17", TEXT="sale sale sale sale shoes"), "caption_junk"),
        (dict(URL="u/18", TEXT="wow!!!!!!!!!!!!"), "caption_junk"),
        (dict(URL="u/1", TEXT="the same url again"), "duplicate_url"),
        (dict(URL="u/19", TEXT="A red   FOX in the snow"), "duplicate_caption_size"),  # same caption + size as row 0
        (dict(URL="u/20", TEXT="a red fox in the snow", WIDTH=1024), None),  # same caption, other size: kept
        (dict(URL="u/21", TEXT="small and ugly", WIDTH=10, aesthetic=1.0), "min_size"),  # fails two: first counts
    ]
    return [({**GOOD, **r}, want) for r, want in cases]


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_removes_exactly_the_violators_and_counts_match(tmp_path):
    cases = _rows()
    src = tmp_path / "laion.parquet"
    _write(src, [r for r, _ in cases])
    before = src.read_bytes()
    report = filter_laion(src, tmp_path / "out.parquet", LaionFilterConfig())
    kept = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["URL"] for r in kept] == [r["URL"] for r, want in cases if want is None]
    expected = {}
    for _, want in cases:
        if want:
            expected[want] = expected.get(want, 0) + 1
    assert {k: v for k, v in report["removed"].items() if v} == expected
    assert report["rows_in"] == len(cases) and report["rows_out"] == len(kept)
    assert report["failing"]["aesthetic"] == 4  # the min_size row with aesthetic 1.0 also fails it
    assert set(report["not_applied"]) == {"image_unreadable", "near_duplicate_image"}
    saved = json.loads((tmp_path / "out.parquet.report.json").read_text())
    assert saved["removed"] == report["removed"] and saved["rows_out"] == report["rows_out"]
    assert src.read_bytes() == before


def _jpeg(arr, quality=90):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_near_duplicate_images_by_phash(tmp_path):
    astro, coffee = skimage.data.astronaut(), skimage.data.coffee()
    rows = [
        {**GOOD, "URL": "a", "TEXT": "an astronaut portrait", "jpg": _jpeg(astro)},
        {**GOOD, "URL": "b", "TEXT": "a cup of coffee on a table", "jpg": _jpeg(coffee)},
        {**GOOD, "URL": "c", "TEXT": "astronaut, recompressed", "jpg": _jpeg(astro, quality=40)},  # near duplicate of a
        {**GOOD, "URL": "d", "TEXT": "astronaut, slightly brighter", "jpg": _jpeg(np.clip(astro.astype(int) + 12, 0, 255).astype(np.uint8))},
        {**GOOD, "URL": "e", "TEXT": "a broken download", "jpg": b"\xff\xd8 not really"},
        {**GOOD, "URL": "f", "TEXT": "the coffee, mirrored", "jpg": _jpeg(coffee[:, ::-1].copy())},  # a different image to pHash
    ]
    _write(tmp_path / "imgs.parquet", rows)
    report = filter_laion(tmp_path / "imgs.parquet", tmp_path / "out.parquet", LaionFilterConfig(min_aesthetic=None))
    kept = [r["URL"] for r in pq.read_table(tmp_path / "out.parquet").to_pylist()]
    assert kept == ["a", "b", "f"]
    assert report["removed"]["near_duplicate_image"] == 2 and report["removed"]["image_unreadable"] == 1
    assert "aesthetic" in report["not_applied"]


def test_near_duplicate_index_is_exact():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(0, 2**63, size=300, dtype=np.int64)]
    idx = NearDuplicateIndex(4)
    for h in hashes[:150]:
        idx.add(h)
    for h in hashes[150:]:
        brute = any((h ^ o).bit_count() <= 4 for o in hashes[:150])
        assert (idx.find(h) is not None) == brute
    flipped = hashes[0] ^ 0b10010001 ^ (1 << 60)  # 4 bits away
    assert idx.find(flipped) == hashes[0]
    lone = NearDuplicateIndex(4)
    lone.add(0)
    assert lone.find(0b11111) is None and lone.find(0b1111) == 0  # 5 bits away: not a duplicate; 4: is


def test_caption_rules_are_language_agnostic():
    cfg = LaionFilterConfig()
    for ok in ["Ein Fuchs im Schnee", "雪の中のキツネ", "ثعلب في الثلج", "a 3D render of a fox, 4k"]:
        assert caption_problem(ok, cfg) is None, ok
    for junk in ["----------", "DSC_0042", "%20%20fox", "&amp; fox and friends", "....???,,,"]:
        assert caption_problem(junk, cfg) == "caption_junk", junk


def test_cli_laion_report_and_errors(tmp_path, capsys):
    cases = _rows()
    _write(tmp_path / "l.parquet", [r for r, _ in cases])
    main(["prepare", "laion", "-i", str(tmp_path / "l.parquet"), "-o", str(tmp_path / "f.parquet"), "--json", "--min-aesthetic", "-1"])
    report = json.loads(capsys.readouterr().out)
    assert "aesthetic" not in report["removed"] and report["rows_in"] == len(cases)
    main(["prepare", "laion", "-i", str(tmp_path / "l.parquet"), "-o", str(tmp_path / "g.parquet")])
    err = capsys.readouterr().err
    assert "rows in" in err and "duplicate_url" in err and "rows out" in err
    with pytest.raises(SceditError, match="is the input file"):
        filter_laion(tmp_path / "l.parquet", tmp_path / "l.parquet")
    with pytest.raises(SceditError, match="does not exist"):
        filter_laion(tmp_path / "nope.parquet", tmp_path / "x.parquet")


@pytest.mark.parametrize("option, value, column", [
    ("--min-aesthetic", "6", "aesthetic or aesthetic_score"),
    ("--max-watermark", "0.3", "pwatermark or watermark"),
    ("--max-unsafe", "0.3", "punsafe or nsfw_prob"),
    ("--min-width", "256", "width"),
    ("--phash-distance", "2", "image or jpg or png"),
])
def test_an_explicit_rule_without_its_column_is_refused(option, value, column, tmp_path, capsys):
    rows = [dict(URL=f"u/{i}", TEXT=f"a red fox number {i}") for i in range(3)]
    _write(tmp_path / "bare.parquet", rows)  # no size, score or image columns
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as e:
        main(["prepare", "laion", "-i", str(tmp_path / "bare.parquet"), "-o", str(tmp_path / "f.parquet"), option, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"{option} was given, but {tmp_path / 'bare.parquet'} has no {column} column" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"
    # the same rules at their defaults, or turned off, are skipped with the note
    off = ["--min-aesthetic", "-1"] if option == "--min-aesthetic" else ["--phash-distance", "-1"] \
        if option == "--phash-distance" else []
    main(["prepare", "laion", "-i", str(tmp_path / "bare.parquet"), "-o", str(tmp_path / "f.parquet"), "--json", *off])
    report = json.loads(capsys.readouterr().out)
    assert report["rows_out"] == 3 and {"min_size", "aesthetic", "near_duplicate_image"} <= set(report["not_applied"])
