"""The `scedit` command line as a whole: commands present, errors as one line."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from PIL import Image


def _scedit(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "scedit_cli.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_every_command():
    proc = _scedit("--help")
    assert proc.returncode == 0
    for name in ("prepare", "train", "sample", "compose", "eval", "bench", "convert", "quickstart"):
        assert name in proc.stdout, name


def _commands(group, path=()):
    import click

    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def test_every_help_renders_every_option_as_written(capsys):
    """`--help` of every command exits 0 and shows each option's text whole: brackets such as
    `user/repo[/sub/folder][@revision]` or `[logging]` are text, not markup (rich markup made
    `scedit sample --help` fail, and silently dropped `[logging], [validation], [checkpoint]`)."""
    import re

    import typer

    from scedit_cli.cli import app, main

    squeeze = re.compile(r"\s+")
    seen = 0
    for path, cmd in _commands(typer.main.get_command(app)):
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        out = capsys.readouterr().out
        assert e.value.code == 0, (path, out)
        shown = squeeze.sub("", out)
        for param in cmd.params:
            if getattr(param, "help", None):
                assert squeeze.sub("", param.help) in shown, (path, param.name, param.help)
                seen += "[" in param.help
    assert seen >= 5  # the texts this is about are among those checked


def test_messages_print_paths_with_brackets_as_written(capsys):
    """Paths and values in a message are text: `[/x]` would be a closing tag to rich, `[logging]` a style."""
    from scedit_cli.console import info

    info("wrote runs/[/x] and [logging]/grid.png")
    info("a note", style="dim")
    long = "cache: not used (" + "x" * 150 + ")"  # one line in a log, however long (off a terminal: 80 columns)
    info(long)
    assert capsys.readouterr().err == f"wrote runs/[/x] and [logging]/grid.png\na note\n{long}\n"


def test_progress_and_eval_table_show_folder_names_as_written(monkeypatch):
    import io

    from rich.console import Console

    import scedit_cli.cli.eval as eval_cli
    import scedit_cli.console as console

    def terminal():
        return Console(file=io.StringIO(), force_terminal=True, width=200, color_system=None)

    monkeypatch.setattr(console, "err_console", terminal())
    with console.progress() as bar:
        bar.add_task("Inception: photos [/x] [b]", total=1)
    assert "Inception: photos [/x] [b]" in console.err_console.file.getvalue()

    monkeypatch.setattr(eval_cli, "out_console", terminal())
    eval_cli._render({"control": {"summary": {}, "not_measured": {"depth": "no weights in [/w]"},
                                  "report": {"json": "out/[run]/report.json"}}})
    shown = eval_cli.out_console.file.getvalue()
    assert "not measured: no weights in [/w]" in shown and "out/[run]/report.json" in shown


def _scedit_noting_torch(*args, cwd=None) -> subprocess.CompletedProcess:
    """`scedit ARGS` in a fresh process whose stdout ends with whether torch was imported by then."""
    code = ("import atexit, sys; atexit.register(lambda: print('torch' in sys.modules)); "
            "from scedit_cli.cli import main; main()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd)


_RECIPE = """[model]
source = "./model"
[data]
source = "./data"
[method]
name = "csc"
conditions = ["canny"]
[train]
output_dir = "out"
"""


@pytest.mark.parametrize("bad, message", [
    ("missing", "r.toml: recipe file not found"), ("syntax", "not valid TOML"),
    ("method setting", "r.toml: method.hint_kernel: must be an odd number"),
    ("missing data", "data: dataset not found; check data.source"),
    ("empty data folder", "data: no metadata.jsonl, *.parquet or *.jsonl in this folder"),
    ("missing model", "model: model file or folder not found"),
    ("another run", "out: holds another run's checkpoints (up to step 10); continue that run with --resume latest"),
    ("resume nothing", "--resume latest: no checkpoint under"),
    ("resume changed", "step-00000010: the recipe differs from the one this checkpoint was trained with"),
])
def test_a_bad_recipe_or_source_is_reported_before_torch_is_imported(tmp_path, bad, message):
    """A wrong path, a TOML typo or a bad setting costs a fraction of a second, not torch's import
    (and diffusers', accelerate's) first."""
    r = tmp_path / "r.toml"
    if bad == "syntax":
        r.write_text("[model\nsource = 'x'\n")
    elif bad != "missing":
        r.write_text(_RECIPE.replace('conditions = ["canny"]', 'conditions = ["canny"]\nhint_kernel = 2')
                     if bad == "method setting" else _RECIPE)
        if bad in ("empty data folder", "missing model"):
            (tmp_path / "data").mkdir()
        if bad == "missing model":
            (tmp_path / "data" / "metadata.jsonl").write_text('{"image": "a.png", "text": "x"}\n')
        if bad in ("another run", "resume changed"):
            (tmp_path / "out" / "checkpoints" / "step-00000010").mkdir(parents=True)
            state = {"step": 10, "recipe": {"method": {"name": "sc"}}} if bad == "resume changed" else {}
            (tmp_path / "out" / "checkpoints" / "step-00000010" / "state.json").write_text(json.dumps(state))
    p = _scedit_noting_torch("train", str(r), *(["--resume", "latest"] if bad.startswith("resume") else []))
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert p.stdout == "False\n"


@pytest.mark.parametrize("command", [["sample"], ["compose", "-t", "t"], ["analyze", "skips"]])
def test_a_mistyped_model_path_is_reported_before_torch_is_imported(tmp_path, command):
    """Not after the 10-15 s of importing torch and diffusers' pipelines."""
    p = _scedit_noting_torch(*command, "-m", str(tmp_path / "no_model"), "-p", "a cat", "-o", str(tmp_path / "o"))
    assert p.returncode == 2 and "no_model: model file or folder not found" in p.stderr, p.stderr
    assert p.stdout == "False\n"


@pytest.mark.parametrize("args, message", [
    (["prepare", "cache", "-m", "./model", "-i", "./missing"], "missing: dataset not found"),
    (["bench", "table1", "--methods", "LoRA r=64,bogus", "--out", "b"], "--methods 'bogus': table1 has no such row"),
    (["bench", "table2", "--batch", "0", "--out", "b"], "--batch must be >= 1"),
    (["quickstart", "--steps-scale", "0", "-o", "q"], "--steps-scale must be a number > 0"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "--steps", "0"], "--steps must be >= 1"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "--size", "30"], "--width 30: must be a positive multiple of 8"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "-t", "./no-tuner"], "./no-tuner: tuner file not found"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "-c", "canny:edges.png"], "edges.png: control image not found"),
    (["compose", "-m", ".", "-t", "./t", "-p", "x", "-o", "o"], "compose needs at least one --control"),
    (["convert", "model.bin", "--arch", "sd15", "-o", "t"], "model.bin: checkpoint not found"),
    (["convert", "model.bin", "-m", "./base", "-o", "t"], "./base: model file or folder not found"),
    (["prepare", "cache", "-m", "./model", "-i", ".", "--shard", "2/2"], "--shard '2/2'"),
    (["eval", "r.toml"], "nothing to evaluate"), (["eval", "r.toml", "--params"], "r.toml: no such recipe file"),
    (["eval", "good.toml", "--params", "--set", "method.ratio=0"], "--set method.ratio: must be > 0"),
    (["analyze", "skips", "-p", "x", "-o", "a", "--mode", "bogus"], "--mode bogus: choose zero and/or mean"),
    (["bench", "sampling", "--resolution", "100"], "--resolution 100: must be a multiple of 64"),
    (["comfyui", "install", "."], "not a ComfyUI checkout"),
    (["eval", "--fid", "--generated", "gen", "--reference", "."], "--generated gen: no such folder"),
    (["eval", "--control", "--generated", "gen"], "--generated gen: no such folder"),
    (["eval", "--fid", "--generated", ".", "--reference", "ref.npz"], "--reference ref.npz: no such folder or file"),
    # which tuner reads which image, from the tuners' config files
    (["sample", "-m", ".", "-p", "x", "-o", "o", "-t", "csc"], "CSC-Tuner csc needs a 'canny' condition image"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "-t", "sc", "-c", "canny:e.png"],
     "--control canny:e.png: no loaded CSC-Tuner was trained for 'canny' (loaded: none)"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "-t", "csc", "-t", "csc2", "-c", "canny:e.png"],
     "several CSC-Tuners are trained for the same condition 'canny'"),
    (["compose", "-m", ".", "-p", "x", "-o", "o", "-t", "csc", "-t", "sc", "-c", "canny:e.png", "--sweep", "3"],
     "--sweep interpolates between exactly two conditions; 1 given"),
    (["compose", "-m", ".", "-p", "x", "-o", "o", "-t", "csc", "-c", "canny:e.png:0"], "compose weights sum to 0"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "-t", "bad.png"], "bad.png: not a readable safetensors file"),
    (["convert", "csc", "--arch", "sd15", "-o", "t"], "csc: already a scedit tuner; use it as it is (--tuner csc)"),
    (["sample", "-m", ".", "-p", "x", "-o", "o", "-t", "csc", "-c", "canny:bad.png"],
     "bad.png: cannot read control image (cannot identify image file"),
])
def test_a_usage_error_is_reported_before_torch_is_imported(tmp_path, args, message):
    (tmp_path / "good.toml").write_text(_RECIPE.replace('name = "csc"\nconditions = ["canny"]', 'name = "sc"'))
    for name, method, condition in (("csc", "csc", "canny"), ("csc2", "csc", "canny"), ("sc", "sc", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tuner.safetensors").write_bytes(b"")  # only the config is read before torch loads
        config = {"format": "scedit-tuner", "method": method, "config": {"condition": condition}}
        (tmp_path / name / "tuner_config.json").write_text(json.dumps(config))
    Image.new("RGB", (8, 8)).save(tmp_path / "e.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    p = _scedit_noting_torch(*args, cwd=tmp_path)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert p.stdout == "False\n"


def test_version_is_the_installed_packages_and_needs_no_torch():
    import importlib.metadata

    import scedit_cli

    p = _scedit_noting_torch("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"scedit {scedit_cli.__version__}\nFalse\n"
    assert importlib.metadata.version("scedit") == scedit_cli.__version__  # pyproject reads it from there


def test_user_error_is_one_line_without_traceback(tmp_path):
    proc = _scedit("train", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "missing.toml" in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = _scedit("--debug", "train", str(tmp_path / "missing.toml"))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def _main(capsys, *args) -> tuple[int, str]:
    from scedit_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, names", [
    (["sample", "--cfg", "abc"], ["'--guidance-scale' / '--cfg'", "abc"]),
    (["sample", "--steps", "abc"], ["'--steps'"]),
    (["sample", "--stesp", "3"], ["No such option: --stesp", "--steps"]),  # and what it may have meant
    (["prepare", "laion", "--min-width", "wide"], ["'--min-width'"]),
    (["train"], ["missing argument 'recipe'"]),
])
def test_option_errors_exit_2_and_name_the_option(args, names, capsys):
    code, err = _main(capsys, *args)
    assert code == 2 and "Traceback" not in err and f"Try 'scedit {args[0]}" in err, err
    for n in names:
        assert n.lower() in err.lower(), err


def _float_options():
    """(command path, first option name) of every float option of every command."""
    import inspect
    import typing

    import typer

    from scedit_cli.cli import app

    def walk(t: typer.Typer, path: list[str]):
        infos = [(path + [c.name], c.callback) for c in t.registered_commands]
        if t.registered_callback is not None and path:
            infos.append((path, t.registered_callback.callback))
        for g in t.registered_groups:
            yield from walk(g.typer_instance, path + [g.name or g.typer_instance.info.name])
        for where, fn in infos:
            hints = typing.get_type_hints(fn)
            for name, p in inspect.signature(fn).parameters.items():
                if hints.get(name) in (float, typing.Optional[float]):
                    yield where, p.default.param_decls[0], p.default.parser

    return list(walk(app, []))


def test_every_float_option_refuses_nan_and_inf(capsys):
    from scedit_cli.values import finite_float

    found = _float_options()
    assert {" ".join(p) for p, _, _ in found} >= {"sample", "compose", "prepare laion", "quickstart", "bench sampling"}
    for path, option, parser in found:
        assert parser is finite_float, (path, option)
        for bad in ("nan", "inf", "-Infinity"):
            code, err = _main(capsys, *path, option, bad)
            assert code == 2 and f"'{option}'" in err and "not a finite number" in err, (path, option, err)


def _unwritable(folder):
    """A folder this process cannot write in, root included (chattr +i); None where that cannot be made."""
    import shutil

    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return folder
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return folder
    return None


def _writable_again(folder):
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_unusable_output_folders_are_one_line_exit_2_before_any_work(tmp_path, capsys):
    from scedit_cli.toy import base_model_path

    toy = str(base_model_path())
    (tmp_path / "file").write_text("x")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(images / "a.png")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nsource = "{toy}"\n[data]\nsource = "{images}"\nresolution = 32\n'
                      f'[method]\nname = "sc"\n[train]\noutput_dir = "{tmp_path / "file" / "run"}"\n')
    cases = [
        (["sample", "-m", toy, "-p", "x", "-o", str(tmp_path / "file")], "--out", "exists and is not a folder"),
        (["sample", "-m", toy, "-p", "x", "-o", str(tmp_path / "file" / "o")], "--out", "is a file, so no folder"),
        (["prepare", "-c", "canny", "-i", str(images), "-o", str(tmp_path / "file")], "--output", "is not a folder"),
        (["train", str(recipe)], "train.output_dir", "is a file, so no folder"),
        (["prepare", "laion", "-i", str(tmp_path / "in.parquet"), "-o", str(images)], "--output", "is not a file"),
    ]
    for args, what, problem in cases:
        code, err = _main(capsys, *args)
        assert code == 2 and err.count("\n") == 1 and what in err and problem in err, (args, err)
    ro = _unwritable(tmp_path / "ro")
    if ro is None:
        pytest.skip("cannot make a folder this process cannot write (root without chattr +i)")
    try:
        code, err = _main(capsys, "sample", "-m", toy, "-p", "x", "-o", str(ro / "out"))
        assert code == 2 and err.count("\n") == 1 and f"no permission to write in {ro}" in err, err
    finally:
        _writable_again(ro)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "images", "r.toml", "ro"]
    assert not any(ro.iterdir())


def test_an_os_error_on_the_way_is_one_line_naming_the_file(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "in" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".scedit-prepare").write_text("a file where the resume state folder goes")
    code, err = _main(capsys, "prepare", "-c", "canny", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
    assert code == 2 and err == f"error: {tmp_path / 'out' / '.scedit-prepare'}: File exists\n", err


def test_sample_prints_no_dependency_warnings(tmp_path):
    from scedit_cli.cli import _DEPENDENCY_LOG_LEVELS
    from scedit_cli.toy import base_model_path

    # as a user's shell has it: none of the settings the CLI makes (or the tests set) beforehand
    env = {k: v for k, v in os.environ.items() if k not in {*_DEPENDENCY_LOG_LEVELS, "PYTHONWARNINGS"}}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    env["COLUMNS"] = "500"  # rich wraps at 80 columns off a terminal; a long tmp path must not split a line
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "scedit_cli.cli", "sample", "-m", str(base_model_path()), "-p",
                           "a red circle", "--steps", "1", "-o", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("sample: 1 image(s) generated"), proc.stderr
    assert lines[1] == f"contact sheet: {out / 'grid.png'}"


def test_quiet_loaders_turns_off_the_data_bars_without_importing_datasets(monkeypatch):
    import datasets

    from scedit_cli.console import quiet_loaders

    bars = importlib.import_module("datasets.utils.tqdm")
    # already imported: turned off at once
    monkeypatch.setattr(bars, "_hf_datasets_progress_bars_disabled", False)
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    quiet_loaders()
    assert datasets.is_progress_bar_enabled() is False
    # not imported yet (a run that reads no data): left unimported, and off when it is imported
    monkeypatch.delitem(sys.modules, "datasets")
    quiet_loaders()
    assert "datasets" not in sys.modules
    assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
