"""Bad inputs to `scedit train`: one clear line and exit code 2, or a counted skip; never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from train_helpers import make_dataset, make_tiny_pipeline, write_recipe
from scedit_cli.cli import main
from scedit_cli.training import train



@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15")
    make_tiny_pipeline(path, "sd15")
    return path


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(["train", *map(str, args)])
    err = capsys.readouterr().err
    return e.value.code, err


def one_line_error(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_recipe_key(tmp_path, capsys, sd15):
    r = write_recipe(tmp_path / "r.toml", sd15, tmp_path, {"name": "sc"}, tmp_path / "o", train={"lerning_rate": 1.0})
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and str(r) in line and "train.lerning_rate" in line and "learning_rate" in line


def test_wrong_type(tmp_path, capsys, sd15):
    r = write_recipe(tmp_path / "r.toml", sd15, tmp_path, {"name": "sc"}, tmp_path / "o", train={"max_steps": "ten"})
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and "train.max_steps" in line and "integer" in line


def test_set_override_wrong_value_names_the_override(tmp_path, capsys, sd15):
    r = write_recipe(tmp_path / "r.toml", sd15, tmp_path, {"name": "sc"}, tmp_path / "o")
    code, err = run_cli([r, "--set", "train.mixed_precision=fp8"], capsys)
    line = one_line_error(err)
    assert code == 2 and "--set train.mixed_precision" in line and "'fp16'" in line


def test_missing_recipe_file(tmp_path, capsys):
    code, err = run_cli([tmp_path / "nope.toml"], capsys)
    assert code == 2 and "recipe file not found" in one_line_error(err)


def test_missing_dataset(tmp_path, capsys, sd15):
    r = write_recipe(tmp_path / "r.toml", sd15, "./no-such-data", {"name": "sc"}, tmp_path / "o")
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and "no-such-data" in line and "not found" in line


def test_dataset_without_text_column(tmp_path, capsys, sd15):
    data = make_dataset(tmp_path / "d", n=2, text_column="caption")
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "sc"}, tmp_path / "o")
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and "'text'" in line and "caption" in line and "data.text_column" in line


def test_condition_method_without_condition_column(tmp_path, capsys, sd15):
    data = make_dataset(tmp_path / "d", n=2, conditions=())
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "csc", "conditions": ["depth"]}, tmp_path / "o")
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and "'depth'" in line and "compute_conditions" in line and "did you mean" not in line


def test_a_mistyped_condition_gets_the_known_name_suggested(tmp_path, capsys, sd15):
    data = make_dataset(tmp_path / "d", n=2, conditions=())
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "csc", "conditions": ["cany"]}, tmp_path / "o")
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and "no column 'cany' for condition 'cany'" in line and "did you mean 'canny'?" in line


def test_unreadable_image_is_skipped_and_counted(tmp_path, sd15):
    data = make_dataset(tmp_path / "d", n=4)
    (data / "images" / "1.png").write_bytes(b"not a png at all")
    rows = [json.loads(l) for l in (data / "metadata.jsonl").read_text().splitlines()]
    rows.append({"image": "images/missing.png", "text": "red circle", "canny": "conditions/canny/0.png"})
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "sc"}, tmp_path / "o",
                     train={"max_steps": 5, "batch_size": 2})
    result = train(r)
    # 5 steps x 2 = 10 stream positions over 5 rows = each row twice: 2 bad rows -> 4 skips.
    assert result.skipped == 4
    assert any("1.png" in s for s in result.skipped_examples)
    assert any("missing.png" in s and "not found" in s for s in result.skipped_examples)
    assert result.steps == 5 and (tmp_path / "o" / "tuner" / "tuner.safetensors").is_file()
    assert before == {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}, "input data untouched"


def test_cli_error_in_a_real_process(tmp_path, sd15):
    r = write_recipe(tmp_path / "r.toml", sd15, tmp_path, {"name": "nope"}, tmp_path / "o")
    p = subprocess.run([sys.executable, "-m", "scedit_cli.cli", "train", str(r)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "method.name" in p.stderr and "Traceback" not in p.stderr


def test_resume_without_checkpoint(tmp_path, capsys, sd15):
    data = make_dataset(tmp_path / "d", n=2)
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "sc"}, tmp_path / "o")
    code, err = run_cli([r, "--resume", "latest"], capsys)
    assert code == 2 and "no checkpoint" in one_line_error(err)


def test_resolution_not_a_multiple_of_8_is_refused_before_anything_is_written(tmp_path, capsys, sd15):
    data = make_dataset(tmp_path / "d", n=2)
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "sc"}, tmp_path / "o", data={"resolution": 36})
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and str(r) in line and "data.resolution" in line and "multiple of 8" in line
    assert not (tmp_path / "o").exists()


def test_no_usable_row_is_refused_before_anything_is_written(tmp_path, capsys, sd15):
    data = make_dataset(tmp_path / "d", n=3)
    for p in (data / "images").iterdir():
        p.unlink()
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "sc"}, tmp_path / "o")
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and str(data) in line and "3 skipped" in line and "0.png: file not found" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, says", [
    ('{"image": "images/0.png", "text": "a"}\n{"image": "images/1.png", "text": \n', "line 2 is not valid JSON"),
    ("", "is empty"),
    ("\n  \n", "is empty"),
])
def test_bad_metadata_jsonl_names_the_file_and_line(tmp_path, capsys, sd15, content, says):
    data = make_dataset(tmp_path / "d", n=2)
    (data / "metadata.jsonl").write_text(content)
    before = (data / "metadata.jsonl").read_bytes()
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "sc"}, tmp_path / "o")
    code, err = run_cli([r], capsys)
    line = one_line_error(err)
    assert code == 2 and f"{data / 'metadata.jsonl'}" in line and says in line
    assert (data / "metadata.jsonl").read_bytes() == before and not (tmp_path / "o").exists()


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_skip_index_this_unet_lacks_names_the_recipe_key(tmp_path, capsys, sd15, dry_run):
    """Checked against the U-Net at setup (the recipe alone cannot know its skip count), and still
    reported as a recipe error."""
    data = make_dataset(tmp_path / "d", n=2, conditions=())
    r = write_recipe(tmp_path / "r.toml", sd15, data, {"name": "sc", "skips": [0, 99]}, tmp_path / "o")
    code, err = run_cli([r, *(["--dry-run"] if dry_run else [])], capsys)
    line = one_line_error(err)
    assert code == 2 and line.startswith(f"error: {r}: method.skips: index 99 out of range"), line
