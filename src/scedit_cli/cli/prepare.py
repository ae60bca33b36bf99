"""`scedit prepare`: condition datasets, LAION filtering, style-caption cleaning.

A thin Typer wrapper over `scedit_cli.prepare`. `prepare_app` is a group so
other modules can add sub-commands (`@prepare_app.command("cache")`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..console import info, print_json
from ..errors import SceditError
from ..values import finite_float
from . import app, command_group, on_interrupt

prepare_app = command_group(
    name="prepare",
    help="Prepare datasets: condition maps (--condition), `laion` filtering, `style` caption cleaning.",
    invoke_without_command=True,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare_app, name="prepare")


def _parse_params(items: list[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SceditError(f"--param {item!r} must look like KEY=VALUE, e.g. --param low=100")
        params[key.strip()] = value.strip()
    return params


@prepare_app.callback()
def prepare_conditions(
    ctx: typer.Context,
    condition: Optional[str] = typer.Option(None, "--condition", "-c", help="canny, depth, hed, seg, pose, color, inpaint, outpaint."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Image folder, folder with metadata.jsonl, parquet, webdataset .tar shards (file, glob, {000..009}, folder), or a datasets name."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output dataset folder (created; resumed if it exists)."),
    workers: int = typer.Option(1, "--workers", "-w", help="Parallel workers (learned detectors: I/O threads)."),
    pool: str = typer.Option("auto", "--pool", help="How --workers > 1 run: threads, processes, or auto (threads up to 2 "
                             "workers or for short runs, else processes)."),
    shard: str = typer.Option("0/1", "--shard", help="i/n: process the records with index i mod n (0-based)."),
    seed: int = typer.Option(0, "--seed", help="Seed for random training settings (canny thresholds, masks)."),
    param: List[str] = typer.Option([], "--param", "-p", help="Condition setting KEY=VALUE, e.g. low=100, ratio=64, left=0.25."),
    images: str = typer.Option("copy", "--images", help="copy: byte-for-byte copies; symlink: relative links to the input files."),
    parquet: bool = typer.Option(False, "--parquet", help="Also write metadata.parquet."),
    split: str = typer.Option("train", "--split", help="Split, for a datasets name."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Image column of a jsonl/parquet/datasets input."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Caption column of a jsonl/parquet/datasets input."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder with detector weights (else the HF cache)."),
    device: Optional[str] = typer.Option(None, "--device", help="Learned detectors: cpu, cuda, cuda:1 (default: cuda if present)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Learned detectors: images per batch."),
    output_format: str = typer.Option("folder", "--output-format", help="folder (images/, conditions/, metadata.jsonl) or "
                                      "webdataset (tar shards: KEY.jpg, KEY.txt, KEY.json, KEY.<condition>.png)."),
    shard_size: int = typer.Option(1000, "--shard-size", help="Samples per tar shard with --output-format webdataset."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if condition is None or input is None or output is None:
        missing = [n for n, v in (("--condition", condition), ("--input", input), ("--output", output)) if v is None]
        raise SceditError(
            f"scedit prepare needs {', '.join(missing)} (e.g. scedit prepare --condition canny --input imgs/ --output data/), "
            "or a sub-command: laion, style"
        )
    on_interrupt(f"the records finished so far are kept in {output}; run the same command again to resume")
    from ..prepare.runner import PrepareConfig, parse_shard
    from ..prepare.webdataset import prepare_to

    shard_index, shard_count = parse_shard(shard)
    cfg = PrepareConfig(
        condition=condition, input=input, output=output, workers=workers, pool=pool, shard_index=shard_index,
        shard_count=shard_count, seed=seed, params=_parse_params(param), images=images, parquet=parquet, split=split,
        image_column=image_column, text_column=text_column, weights=weights, device=device, batch_size=batch_size,
    )
    summary = prepare_to(cfg, output_format, shard_size)
    if json_out:
        print_json(summary.to_dict())
    else:
        _say_summary(summary, condition, workers, output, shard)
    if summary.rows_out == 0 and summary.skipped and (summary.metadata or summary.webdataset):
        raise SceditError(f"{output}: the dataset has no rows, all {summary.skipped} input records were skipped "
                          f"({_reasons(summary)}); {output / 'prepare-report.json'} gives each one's reason")


def _reasons(summary) -> str:
    """`reason: count, ...` of the skipped records."""
    return ", ".join(f"{k}: {v}" for k, v in summary.skipped_by_reason.items())


def _say_summary(summary, condition: str, workers: int, output: Path, shard: str) -> None:
    info(
        f"{condition}: {summary.rows_out} rows ready, {summary.skipped} skipped "
        f"({_reasons(summary) or 'none'}); "
        f"{summary.written_this_run} written this run, {summary.resumed} resumed, "
        f"{summary.images_per_second} images/s with {workers} worker(s) ({summary.pool})"
    )
    for s in summary.skipped_records[:20]:
        info(f"  skipped {s['source']}: {s['reason']}")
    if summary.webdataset:
        info(f"dataset: {len(summary.webdataset['shards'])} shard(s) in {output}")
    elif summary.metadata:
        info(f"dataset: {summary.metadata}")
    else:
        info(f"shard {shard} done; metadata.jsonl is written when shards {summary.waiting_for_shards} finish")


@prepare_app.command("laion")
def prepare_laion(
    ctx: typer.Context,
    input: Path = typer.Option(..., "--input", "-i", help="LAION-style metadata parquet (file or folder of parts)."),
    output: Path = typer.Option(..., "--output", "-o", help="Filtered parquet to write."),
    report: Optional[Path] = typer.Option(None, "--report", help="Report JSON (default: OUTPUT.report.json)."),
    min_width: int = typer.Option(512, "--min-width"),
    min_height: int = typer.Option(512, "--min-height"),
    min_aesthetic: Optional[float] = typer.Option(5.0, "--min-aesthetic", parser=finite_float,
                                                  help="Minimum aesthetic score; pass -1 to skip the rule."),
    max_watermark: float = typer.Option(0.5, "--max-watermark", parser=finite_float,
                                        help="Maximum watermark probability (pwatermark)."),
    max_unsafe: float = typer.Option(0.5, "--max-unsafe", parser=finite_float, help="Maximum NSFW probability (punsafe)."),
    min_caption_chars: int = typer.Option(5, "--min-caption-chars"),
    max_caption_chars: int = typer.Option(1000, "--max-caption-chars"),
    phash_distance: int = typer.Option(4, "--phash-distance", help="Near-duplicate images: max Hamming distance of 64-bit pHashes; -1 disables."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Column with image bytes/paths for near-duplicate detection."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    on_interrupt(f"nothing was written ({output} is written whole or not at all); run the command again")
    from ..prepare.laion import SETTING_RULES, LaionFilterConfig, filter_laion, format_report

    # A rule whose setting is on the command line must be applied; rules left at their defaults may be skipped.
    explicit = frozenset(s for s in SETTING_RULES if ctx.get_parameter_source(s).name != "DEFAULT")
    cfg = LaionFilterConfig(
        min_width=min_width, min_height=min_height, min_aesthetic=None if min_aesthetic is not None and min_aesthetic < 0 else min_aesthetic,
        max_watermark=max_watermark, max_unsafe=max_unsafe, min_caption_chars=min_caption_chars,
        max_caption_chars=max_caption_chars, phash_distance=None if phash_distance < 0 else phash_distance, image_column=image_column,
        explicit=explicit,
    )
    result = filter_laion(input, output, cfg, report_path=report)
    if json_out:
        print_json(result)
    else:
        info(format_report(result))


@prepare_app.command("style")
def prepare_style(
    input: Path = typer.Option(..., "--input", "-i", help="Folder with metadata.jsonl, or a .jsonl/.parquet/.csv file."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (for a folder input) or file of the same format."),
    style: List[str] = typer.Option([], "--style", "-s", help="Built-in word list(s): 3d, anime, flat-illustration, oil-painting, sketch, watercolor, or all."),
    words_file: Optional[Path] = typer.Option(None, "--words-file", help="Extra style words/phrases, one per line (# comments)."),
    trigger: str = typer.Option("<sce>", "--trigger", help="Trigger word inserted into every caption."),
    position: str = typer.Option("start", "--position", help="Where the trigger goes: start or end."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Caption column (default: text or caption)."),
    report: Optional[Path] = typer.Option(None, "--report", help="JSONL report of changed captions (default beside the output)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    on_interrupt(f"nothing was written ({output} is written whole or not at all); run the command again")
    from ..prepare.style import StyleConfig, clean_style_dataset

    cfg = StyleConfig(styles=tuple(style), words_file=words_file, trigger=trigger, position=position)
    result = clean_style_dataset(input, output, cfg, text_column=text_column, report_path=report)
    if json_out:
        print_json(result)
    else:
        info(
            f"{result['captions']} captions: {result['captions_with_style_words']} had style words removed, "
            f"trigger '{trigger}' added at the {position}; report: {result['report']}; output: {result['output']}"
        )
