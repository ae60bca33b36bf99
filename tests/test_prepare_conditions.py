"""`scedit prepare --condition`: formats, parallel/shard equivalence, skips, errors, input untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from scedit_cli.cli import main
from scedit_cli.conditions import compute_condition, record_rng
from scedit_cli.errors import SceditError
from scedit_cli.images import to_rgb8
from scedit_cli.prepare.pools import PROCESS_MIN_RECORDS_PER_WORKER, choose_pool
from scedit_cli.prepare.runner import PrepareConfig, parse_shard, run_prepare

SOURCES = [skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea, skimage.data.rocket, skimage.data.immunohistochemistry]


def make_images(folder: Path, n: int = 6, size: int | None = 160) -> list[Path]:
    """n distinct real photos (crops of scikit-image samples), JPEG and PNG, some with captions."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = SOURCES[i % len(SOURCES)]()
        if size:
            off = (i // len(SOURCES)) * 13
            img = img[off : off + size, off : off + size + 24]
        p = folder / ("sub" if i % 3 == 0 else "") / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(p)
        if i % 2 == 0:
            p.with_suffix(".txt").write_text(f"caption {i}\n")
        paths.append(p)
    return paths


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root except the resume state and the report (it names the folder), with its hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(".scedit-prepare") and rel != "prepare-report.json":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def test_folder_to_canny_dataset(tmp_path):
    src = tmp_path / "in"
    paths = make_images(src, 4)
    before = tree_digest(src)
    out = tmp_path / "out"
    summary = run_prepare(PrepareConfig("canny", str(src), out, seed=5))
    assert summary.rows_out == 4 and summary.skipped == 0 and summary.metadata == str(out / "metadata.jsonl")
    rows = read_rows(out)
    assert [r["image"] for r in rows] == ["images/img001.png", "images/img002.jpg", "images/sub__img000.jpg", "images/sub__img003.png"]
    by_image = {Path(r["image"]).stem: r for r in rows}
    for p in paths:
        rel = p.relative_to(src).with_suffix("").as_posix().replace("/", "__")
        row = by_image[rel]
        assert set(row) == {"image", "text", "canny"}
        assert (out / row["image"]).read_bytes() == p.read_bytes()  # a byte-for-byte copy
        assert row["text"] == (p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").exists() else "")
        edge = np.asarray(to_rgb8(Image.open(out / row["canny"])))  # stored as a 1-bit PNG
        expected = np.asarray(compute_condition("canny", Image.open(p), rng=record_rng(5, rel)))
        assert np.array_equal(edge, expected)
        assert edge.shape[:2] == np.asarray(Image.open(p)).shape[:2]
    assert tree_digest(src) == before  # input untouched
    assert not list(out.rglob("*.tmp")) and not (out / ".scedit-prepare" / "staging-0-of-1").exists()


def test_workers_and_shards_write_the_same_dataset(tmp_path):
    src = tmp_path / "in"
    make_images(src, 7)
    one = tmp_path / "one"
    run_prepare(PrepareConfig("inpaint", str(src), one, seed=1))
    for pool in ("threads", "processes"):
        two = tmp_path / f"two-{pool}"
        assert run_prepare(PrepareConfig("inpaint", str(src), two, seed=1, workers=2, pool=pool)).pool == pool
        assert tree_digest(one) == tree_digest(two)
    sharded = tmp_path / "sharded"
    first = run_prepare(PrepareConfig("inpaint", str(src), sharded, seed=1, shard_index=1, shard_count=3))
    assert first.metadata is None and first.waiting_for_shards == [0, 2] and first.rows_out == 2
    assert not (sharded / "metadata.jsonl").exists()
    run_prepare(PrepareConfig("inpaint", str(src), sharded, seed=1, shard_index=0, shard_count=3))
    last = run_prepare(PrepareConfig("inpaint", str(src), sharded, seed=1, shard_index=2, shard_count=3))
    assert last.metadata == str(sharded / "metadata.jsonl")
    assert tree_digest(one) == tree_digest(sharded)
    row = read_rows(one)[0]
    assert set(row) == {"image", "text", "inpaint", "inpaint_mask"}
    cut, mask = np.asarray(Image.open(one / row["inpaint"])), np.asarray(Image.open(one / row["inpaint_mask"]))
    img = np.asarray(Image.open(one / row["image"]).convert("RGB"))
    assert np.array_equal(cut, np.where(mask[:, :, None] > 0, 0, img))


def test_corrupt_missing_and_unsupported_files_are_counted_and_skipped(tmp_path):
    src = tmp_path / "in"
    make_images(src, 2)
    (src / "not_image.png").write_bytes(b"definitely not a png")
    good = (src / "img001.png").read_bytes()
    (src / "truncated.png").write_bytes(good[: len(good) // 2])
    (src / "readme.md").write_text("ignored")
    out = tmp_path / "out"
    summary = run_prepare(PrepareConfig("color", str(src), out))
    assert summary.rows_out == 2 and summary.skipped == 2
    assert summary.skipped_by_reason == {"unsupported": 1, "corrupt": 1}
    assert summary.ignored_files == 1
    assert {s["source"] for s in summary.skipped_records} == {str(src / "not_image.png"), str(src / "truncated.png")}
    report = json.loads((out / "prepare-report.json").read_text())
    assert report["rows_out"] == 2 and report["skipped"] == 2 and report["records_in"] == 4
    assert not (out / "images" / "truncated.png").exists() and not (out / "conditions" / "color" / "truncated.png").exists()


def test_jsonl_parquet_and_datasets_inputs(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in"
    paths = make_images(src, 3)
    # metadata.jsonl (HF imagefolder layout), with an extra column passed through
    meta_dir = tmp_path / "meta"
    meta_dir.mkdir()
    lines = []
    for i, p in enumerate(paths):
        (meta_dir / p.name).write_bytes(p.read_bytes())
        lines.append(json.dumps({"file_name": p.name, "text": f"t{i}", "aesthetic": 6.5}))
    (meta_dir / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    run_prepare(PrepareConfig("color", str(meta_dir), tmp_path / "o1"))
    rows = read_rows(tmp_path / "o1")
    assert [r["text"] for r in rows] == ["t0", "t1", "t2"] and rows[0]["aesthetic"] == 6.5
    # parquet with HF-style image structs holding bytes
    table = pa.table({"image": [{"bytes": p.read_bytes(), "path": p.name} for p in paths], "caption": ["a", "b", "c"]})
    pq.write_table(table, tmp_path / "data.parquet")
    run_prepare(PrepareConfig("color", str(tmp_path / "data.parquet"), tmp_path / "o2", parquet=True))
    rows2 = read_rows(tmp_path / "o2")
    assert [r["image"] for r in rows2] == ["images/000000000.jpg", "images/000000001.png", "images/000000002.jpg"]
    assert [r["text"] for r in rows2] == ["a", "b", "c"]
    assert (tmp_path / "o2" / rows2[1]["image"]).read_bytes() == paths[1].read_bytes()
    assert pq.read_table(tmp_path / "o2" / "metadata.parquet").to_pylist() == rows2
    # a datasets folder written by save_to_disk
    ds = datasets.Dataset.from_dict({"image": [str(p) for p in paths], "text": ["x", "y", "z"]}).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    run_prepare(PrepareConfig("color", str(tmp_path / "hf"), tmp_path / "o3"))
    rows3 = read_rows(tmp_path / "o3")
    assert [r["text"] for r in rows3] == ["x", "y", "z"]
    assert tree_digest(tmp_path / "o3")["conditions/color/000000000.png"] == tree_digest(tmp_path / "o2")["conditions/color/000000000.png"]


def test_symlink_images(tmp_path):
    src = tmp_path / "in"
    paths = make_images(src, 2)
    out = tmp_path / "out"
    run_prepare(PrepareConfig("canny", str(src), out, images="symlink", params={"low": 100, "high": 200}))
    link = out / read_rows(out)[0]["image"]
    assert link.is_symlink() and link.read_bytes() == paths[1].read_bytes()


def test_clear_errors(tmp_path):
    src = tmp_path / "in"
    make_images(src, 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceditError, match="contains no images"):
        run_prepare(PrepareConfig("canny", str(tmp_path / "empty"), tmp_path / "o"))
    with pytest.raises(SceditError, match="unknown condition 'sobel'"):
        run_prepare(PrepareConfig("sobel", str(src), tmp_path / "o"))
    with pytest.raises(SceditError, match="overlaps the input"):
        run_prepare(PrepareConfig("canny", str(src), src / "out"))
    with pytest.raises(SceditError, match="has no setting 'ratio'"):
        run_prepare(PrepareConfig("canny", str(src), tmp_path / "o", params={"ratio": 3}))
    with pytest.raises(SceditError, match="does not exist"):
        run_prepare(PrepareConfig("canny", str(tmp_path / "nope.parquet"), tmp_path / "o"))
    with pytest.raises(SceditError, match="must look like i/n"):
        parse_shard("2")
    with pytest.raises(SceditError, match="0 <= i < n"):
        parse_shard("3/3")
    run_prepare(PrepareConfig("canny", str(src), tmp_path / "o", seed=1))
    with pytest.raises(SceditError, match="prepared with seed=1, this run has seed=2"):
        run_prepare(PrepareConfig("canny", str(src), tmp_path / "o", seed=2))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(SceditError, match="is not a `scedit prepare` folder"):
        run_prepare(PrepareConfig("canny", str(src), tmp_path / "full"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.jsonl").write_text('{"file_name": "a.png"}\nnot json\n')
    with pytest.raises(SceditError, match="line 2 is not valid JSON"):
        run_prepare(PrepareConfig("canny", str(bad), tmp_path / "o4"))


def test_cli_prepare_json_and_errors(tmp_path, capsys):
    src = tmp_path / "in"
    make_images(src, 2)
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--condition", "nope", "--input", str(src), "--output", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: unknown condition 'nope'; choose one of: canny, depth, hed, seg, pose, color, inpaint, outpaint"
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--input", str(src)])
    assert e.value.code == 2 and "needs --condition, --output" in capsys.readouterr().err
    main(["prepare", "-c", "outpaint", "-i", str(src), "-o", str(tmp_path / "o"), "-p", "left=0.5", "--json", "--workers", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_out"] == 2 and summary["workers"] == 2 and summary["pool"] == "threads"
    with pytest.raises(SystemExit) as e:
        main(["prepare", "-c", "color", "-i", str(src), "-o", str(tmp_path / "o2"), "--workers", "2", "--pool", "forks"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --pool must be one of auto, threads, processes, got 'forks'"
    row = read_rows(tmp_path / "o")[0]
    mask = np.asarray(Image.open(tmp_path / "o" / row["outpaint_mask"]))
    assert (mask[:, : mask.shape[1] // 2] == 255).all() and (mask[:, mask.shape[1] // 2 + 1 :] == 0).all()


def test_cli_a_dataset_with_no_row_is_an_error_after_its_report(tmp_path, capsys):
    # every input unreadable: the summary and report are written, then one error line and exit 2 (a script
    # that goes on to `scedit train` would fail there, later and less clearly)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"not a png")
    (src / "b.jpg").write_bytes(b"nor a jpeg")
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        main(["prepare", "-c", "canny", "-i", str(src), "-o", str(out), "--json"])
    captured = capsys.readouterr()
    assert e.value.code == 2
    assert json.loads(captured.out)["rows_out"] == 0 and json.loads(captured.out)["skipped"] == 2
    assert captured.err.strip() == (f"error: {out}: the dataset has no rows, all 2 input records were skipped "
                                    f"(unsupported: 2); {out / 'prepare-report.json'} gives each one's reason")
    assert json.loads((out / "prepare-report.json").read_text())["skipped"] == 2
    # one good image is a dataset (the others still skipped and listed): exit 0
    make_images(src, 1)
    main(["prepare", "-c", "canny", "-i", str(src), "-o", str(tmp_path / "o2")])
    assert "1 rows ready, 2 skipped" in capsys.readouterr().err


def test_pool_choice():
    assert choose_pool("auto", 1, 10**6) == "inline" and choose_pool("processes", 1, 10) == "inline"
    assert choose_pool("auto", 2, 10**6) == "threads"  # two threads keep two cores busy, no start-up
    assert choose_pool("auto", 8, 8 * PROCESS_MIN_RECORDS_PER_WORKER - 1) == "threads"  # too short to repay spawning
    assert choose_pool("auto", 8, 8 * PROCESS_MIN_RECORDS_PER_WORKER) == "processes"
    assert choose_pool("threads", 8, 10**6) == "threads" and choose_pool("processes", 2, 10) == "processes"
