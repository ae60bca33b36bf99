"""`scedit prepare --output-format webdataset`: a finished dataset folder packed into tar shards.

Each sample becomes `KEY.<ext>` (the image, bytes unchanged), `KEY.txt` (the caption),
`KEY.<column>.png` per condition column and `KEY.json` (caption and other fields): the
layout `shards.py` reads. Shards hold `shard_size` samples in metadata order and are
each written under a temporary name then renamed; the loose images/ and conditions/
files are removed only once every shard is in place. The folder run's journal is
kept, so a killed run resumes as a folder run and packs at its end; a rerun after
packing finds the shards recorded and leaves them.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from ..errors import SceditError
from ..fsutil import atomic_path, write_json_atomic
from .runner import STATE_DIR
from .summary import PrepareSummary

OUTPUT_FORMATS = ("folder", "webdataset")
DONE = "webdataset.json"


def check_output_format(output_format: str, shard_size: int) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise SceditError(f"--output-format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if shard_size < 1:
        raise SceditError(f"--shard-size must be >= 1 (samples per shard), got {shard_size}")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def pack_shards(out: Path, shard_size: int) -> dict:
    """Pack `out`'s metadata.jsonl rows into `out/shard-NNNNNN.tar`; returns {"shards", "samples"}."""
    out = Path(out)
    done = out / STATE_DIR / DONE
    meta = out / "metadata.jsonl"
    if done.is_file():  # packed before: a rerun only re-merged the journal into metadata.jsonl
        meta.unlink(missing_ok=True)
        (out / "metadata.parquet").unlink(missing_ok=True)
        shutil.rmtree(out / "images", ignore_errors=True)
        shutil.rmtree(out / "conditions", ignore_errors=True)
        return json.loads(done.read_text())
    rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    shards = []
    for s in range(0, len(rows), shard_size):
        path = out / f"shard-{s // shard_size:06d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            for row in rows[s: s + shard_size]:
                image = Path(row["image"])
                key = image.stem
                _add(tar, f"{key}{image.suffix.lower()}", (out / image).read_bytes())
                _add(tar, f"{key}.txt", str(row.get("text") or "").encode("utf-8"))
                fields = {"caption": row.get("text") or ""}
                for col, value in row.items():
                    if col in ("image", "text"):
                        continue
                    if isinstance(value, str) and value.startswith("conditions/"):
                        _add(tar, f"{key}.{col}.png", (out / value).read_bytes())
                    else:
                        fields[col] = value
                _add(tar, f"{key}.json", json.dumps(fields, ensure_ascii=False).encode("utf-8"))
        shards.append(path.name)
    result = {"shards": shards, "samples": len(rows), "shard_size": shard_size}
    write_json_atomic(done, result)
    for p in (meta, out / "metadata.parquet"):
        p.unlink(missing_ok=True)
    shutil.rmtree(out / "images", ignore_errors=True)
    shutil.rmtree(out / "conditions", ignore_errors=True)
    return result


def prepare_to(cfg, output_format: str = "folder", shard_size: int = 1000) -> PrepareSummary:
    """`runner.run_prepare(cfg)`, then with output_format "webdataset" the finished dataset packed into
    shards (once every --shard i/n is done), in the summary's `webdataset`."""
    from .runner import run_prepare

    check_output_format(output_format, shard_size)
    if output_format == "folder" and (Path(cfg.output) / STATE_DIR / DONE).is_file():
        # its loose files are gone: a folder rerun would write a metadata.jsonl naming deleted images
        raise SceditError(f"--output {cfg.output}: this folder was packed into webdataset shards (shard-*.tar); "
                          "rerun with --output-format webdataset, or prepare into another --output")
    summary = run_prepare(cfg)
    if output_format == "webdataset" and summary.metadata:
        summary.webdataset = pack_shards(Path(cfg.output), shard_size)
        summary.metadata = None
    return summary
