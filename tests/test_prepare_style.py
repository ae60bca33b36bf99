"""Style-word cleaning: case, punctuation, plurals, multi-word styles, trigger position, datasets."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scedit_cli.cli import main
from scedit_cli.errors import SceditError
from scedit_cli.prepare.style import StyleCleaner, StyleConfig, clean_style_dataset

CASES = [
    # (styles, caption, expected)
    (("watercolor",), "A Watercolor painting of a fox.", "<sce> a fox."),
    (("watercolor",), "a fox, WATERCOLOUR, 4k", "<sce> a fox, 4k"),
    (("watercolor",), "Water-colors of boats at dawn", "<sce> boats at dawn"),
    (("oil painting",), "Oil-Paintings of ships in a storm", "<sce> ships in a storm"),
    (("oil-painting",), "portrait of a woman, oil on canvas; dramatic light", "<sce> portrait of a woman, dramatic light"),
    (("anime",), "a girl in anime style, smiling!", "<sce> a girl, smiling!"),
    (("anime",), "Anime-style boy (manga)", "<sce> boy"),
    (("flat illustration",), "Flat Illustration of a city skyline", "<sce> a city skyline"),
    (("flat-illustration",), "a city, flat-illustrations, vector art", "<sce> a city"),
    (("sketch",), "pencil sketches of cats and dogs", "<sce> cats and dogs"),
    (("sketch",), "Sketch: a house by the lake", "<sce> a house by the lake"),
    (("3D",), "a 3D render of a robot", "<sce> a robot"),
    (("3d",), "robot, octane render, unreal engine", "<sce> robot"),
    (("watercolor",), "in the style of watercolor, a bird", "<sce> a bird"),
    (("watercolor",), "a cat sitting on a mat", "<sce> a cat sitting on a mat"),  # nothing to remove
    (("sketch",), "sketchbook cover, sketchy lines", "<sce> sketchbook cover, sketchy lines"),  # whole words only
]


@pytest.mark.parametrize("styles,caption,expected", CASES)
def test_clean(styles, caption, expected):
    assert StyleCleaner(StyleConfig(styles=styles)).clean(caption)[0] == expected


def test_removed_words_trigger_position_and_no_double_trigger(tmp_path):
    c = StyleCleaner(StyleConfig(styles=("oil-painting",), trigger="<sce>", position="end"))
    text, removed = c.clean("Oil paintings of a harbour, impasto")
    assert text == "a harbour <sce>" and removed == ["Oil paintings", "impasto"]
    assert c.clean("<sce> a harbour")[0] == "<sce> a harbour"
    assert c.clean("oil painting")[0] == "<sce>"
    words = tmp_path / "words.txt"
    words.write_text("# my styles\nlow poly\nisometric  # comment\n\n")
    c2 = StyleCleaner(StyleConfig(words_file=words, trigger="sks"))
    assert c2.clean("Low-Poly isometric fox")[0] == "sks fox"


def test_errors(tmp_path):
    with pytest.raises(SceditError, match="unknown style 'pixelart'"):
        StyleCleaner(StyleConfig(styles=("pixelart",)))
    with pytest.raises(SceditError, match="no style words"):
        StyleCleaner(StyleConfig())
    with pytest.raises(SceditError, match="--position must be start or end"):
        StyleCleaner(StyleConfig(styles=("anime",), position="middle"))
    with pytest.raises(SceditError, match="does not exist"):
        StyleCleaner(StyleConfig(words_file=tmp_path / "missing.txt"))


def test_datasets_folder_jsonl_parquet_csv(tmp_path):
    src = tmp_path / "style"
    src.mkdir()
    (src / "a.png").write_bytes(b"png bytes stay as they are")
    rows = [{"file_name": "a.png", "text": "A watercolor of a fox"}, {"file_name": "b.png", "text": "a quiet lake"}]
    (src / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = (src / "metadata.jsonl").read_text()
    out = tmp_path / "clean"
    summary = clean_style_dataset(src, out, StyleConfig(styles=("watercolor",)))
    assert (src / "metadata.jsonl").read_text() == before  # input untouched
    got = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in got] == ["<sce> a fox", "<sce> a quiet lake"] and got[0]["file_name"] == "a.png"
    assert (out / "a.png").read_bytes() == b"png bytes stay as they are"
    report = [json.loads(line) for line in (out / "style-report.jsonl").read_text().splitlines()]
    assert [r["before"] for r in report] == ["A watercolor of a fox", "a quiet lake"] and report[0]["removed"] and not report[1]["removed"]
    assert summary["captions"] == 2 and summary["captions_with_style_words"] == 1 and summary["captions_changed"] == 2

    pq.write_table(pa.table({"caption": ["Anime girl", "a dog"], "n": [1, 2]}), tmp_path / "c.parquet")
    clean_style_dataset(tmp_path / "c.parquet", tmp_path / "d.parquet", StyleConfig(styles=("anime",), position="end"))
    assert pq.read_table(tmp_path / "d.parquet").to_pylist() == [{"caption": "girl <sce>", "n": 1}, {"caption": "a dog <sce>", "n": 2}]
    assert (tmp_path / "d.parquet.style-report.jsonl").exists()

    with (tmp_path / "e.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["image", "prompt"], ["x.png", "3d render, a chair"]])
    clean_style_dataset(tmp_path / "e.csv", tmp_path / "f.csv", StyleConfig(styles=("3d",)))
    assert list(csv.DictReader((tmp_path / "f.csv").open())) == [{"image": "x.png", "prompt": "<sce> a chair"}]

    sidecar = tmp_path / "side"
    sidecar.mkdir()
    (sidecar / "1.txt").write_text("a Sketch of a tree\n")
    clean_style_dataset(sidecar, tmp_path / "side_out", StyleConfig(styles=("sketch",)))
    assert (tmp_path / "side_out" / "1.txt").read_text() == "<sce> a tree\n"
    with pytest.raises(SceditError, match="overlaps the input"):
        clean_style_dataset(src, src / "out", StyleConfig(styles=("anime",)))


def test_cli_style(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "text": "Oil painting, a boat"}) + "\n")
    main(["prepare", "style", "-i", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "n.jsonl"), "-s", "oil painting", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["removed_words"] == {"oil painting": 1}
    assert json.loads((tmp_path / "n.jsonl").read_text())["text"] == "<sce> a boat"
