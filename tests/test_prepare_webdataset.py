"""`scedit prepare` reads webdataset shards and writes them (--output-format webdataset); train reads the result."""

from __future__ import annotations

import json
import tarfile

import pytest

from train_helpers import make_shards
from scedit_cli.cli import main
from scedit_cli.data import load_training_data
from scedit_cli.recipes import DataSection


def test_shards_in_canny_shards_out_then_training_reads_them(tmp_path, capsys):
    shards = make_shards(tmp_path / "in", n=5, per_shard=2, conditions=())
    before = {p.name: p.read_bytes() for p in shards}
    out = tmp_path / "out"
    args = ["prepare", "--condition", "canny", "--input", f"{tmp_path}/in/shard-*.tar", "--output", str(out),
            "--output-format", "webdataset", "--shard-size", "3", "--json"]
    main(args)
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_out"] == 5 and summary["webdataset"]["shards"] == ["shard-000000.tar", "shard-000001.tar"]
    assert {p.name: p.read_bytes() for p in shards} == before  # input untouched
    assert not (out / "images").exists() and not (out / "metadata.jsonl").exists()
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    assert names[:4] == ["000000.png", "000000.txt", "000000.canny.png", "000000.json"] and len(names) == 12
    cfg = DataSection(source=str(out), resolution=32, cache_dir=str(tmp_path / "cache"))
    data = load_training_data(cfg, ["canny"])
    assert sorted(data.row(i)["text"] for i in range(len(data))) == [f"red circle {i}" for i in range(5)]
    item = data[(0, 0)]
    assert item["conditions"][0].shape == (3, 32, 32) and item["conditions"][0].max() > 0.5
    # a rerun finds the shards packed and leaves them
    main(args)
    assert json.loads(capsys.readouterr().out)["webdataset"]["samples"] == 5
    assert not (out / "metadata.jsonl").exists() and len(load_training_data(cfg, ["canny"])) == 5
    # a folder rerun of a packed folder would list deleted files: refused in one line, nothing changed
    packed = sorted((p.name, p.read_bytes()) for p in out.glob("shard-*.tar"))
    with pytest.raises(SystemExit) as e:
        main(args[:-5] + ["--output-format", "folder"])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output ") and "packed into webdataset shards" in err and "\n" not in err
    assert sorted((p.name, p.read_bytes()) for p in out.glob("shard-*.tar")) == packed
    assert not (out / "metadata.jsonl").exists()


def test_bad_output_format_is_one_line_error(tmp_path, capsys):
    make_shards(tmp_path / "in", n=2, per_shard=2, conditions=())
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--condition", "canny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
              "--output-format", "zip"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --output-format must be one of folder, webdataset, got 'zip'"
    assert not (tmp_path / "o").exists()
