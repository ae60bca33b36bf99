"""Fréchet Inception Distance with pytorch-fid's InceptionV3 (2048-d pool features).

The network is pytorch-fid's own `InceptionV3` (the TF-FID port), but its
weights are never downloaded at run time: they are read, with
`weights_only=True`, from the file pytorch-fid would have cached
(`pt_inception-2015-12-05-6726825d.pth` under `torch.hub.get_dir()/checkpoints`)
or from `--inception-weights PATH`. Reference statistics are cached as `.npz`
files keyed by a hash of the reference files (names and contents), the feature
size and the weights file, so a reference set is read through Inception once.

The distance itself is computed with symmetric eigendecompositions
(`tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))`), which stays exact when the
covariances are singular (fewer images than feature dimensions), where
`scipy.linalg.sqrtm` loses accuracy.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SceditError
from ..fsutil import atomic_path, file_sha256, read_jsonl, read_torch_weights

INCEPTION_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILENAME}"
IMAGE_EXTENSIONS = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}
FEATURE_DIMS = (64, 192, 768, 2048)  # pytorch-fid's InceptionV3.BLOCK_INDEX_BY_DIM
INCEPTION_SIZE = 299
STATS_VERSION = 1


def default_inception_path() -> Path:
    """Where pytorch-fid caches its Inception weights (torch hub checkpoints folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def default_stats_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scedit" / "fid-stats"


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file to use, or a one-line error saying where it must go."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SceditError(
                f"--inception-weights {p}: no such file; pass the path of pytorch-fid's {INCEPTION_FILENAME} "
                f"(download: {INCEPTION_URL})"
            )
        return p
    p = default_inception_path()
    if not p.is_file():
        raise SceditError(
            f"FID needs pytorch-fid's Inception weights {INCEPTION_FILENAME}, not found at {p} (this machine is "
            f"offline, nothing is downloaded): fetch {INCEPTION_URL} elsewhere and copy it to {p}, "
            "or pass --inception-weights PATH"
        )
    return p


def load_inception(weights: str | os.PathLike | None = None, dims: int = 2048,
                   device: str | torch.device = "cpu") -> torch.nn.Module:
    """pytorch-fid's `InceptionV3` returning the `dims`-d features, weights from a local file.

    pytorch-fid's `fid_inception_v3()` builds the network and then calls
    `load_state_dict_from_url`; we hand it the state dict read from disk instead,
    so the architecture (and the strict key check) is exactly pytorch-fid's.
    """
    from pytorch_fid import inception as pf

    if dims not in FEATURE_DIMS:
        raise SceditError(f"--dims {dims}: Inception features come in {', '.join(map(str, FEATURE_DIMS))} dimensions")
    path = resolve_inception_weights(weights)
    try:
        state = read_torch_weights(path)
    except ValueError as e:
        raise SceditError(f"cannot read Inception weights {path}: {e}; re-download {INCEPTION_URL}") from None
    if not isinstance(state, dict):
        raise SceditError(f"Inception weights {path} hold a {type(state).__name__}, not a state dict; "
                          f"re-download {INCEPTION_URL}")

    def _from_file(url, *args, **kwargs):
        return state

    try:
        with mock.patch.object(pf, "load_state_dict_from_url", _from_file):
            model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[dims]], resize_input=True,
                                   normalize_input=True, use_fid_inception=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise SceditError(
            f"Inception weights {path} do not fit pytorch-fid's FID Inception "
            f"({first[1].strip() if len(first) > 1 else first[0]}); use {INCEPTION_FILENAME} from {INCEPTION_URL}"
        ) from None
    return model.eval().to(device)


# --- which images a folder or dataset holds -------------------------------------------------

def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _manifest_images(folder: Path) -> list[Path] | None:
    """Images a `prepare` dataset lists in its manifest, if the folder is one."""
    for name in ("manifest.jsonl", "metadata.jsonl"):
        m = folder / name
        if not m.is_file():
            continue
        files = []
        for n, row in read_jsonl(m, "fix or regenerate the dataset"):
            key = next((k for k in ("image", "file_name", "file", "path") if k in row), None)
            if key is None:
                raise SceditError(f"{m}:{n}: no 'image' key; regenerate the dataset with `scedit prepare`")
            files.append(folder / row[key])
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise SceditError(f"{m} lists {len(missing)} image(s) that do not exist, e.g. {missing[0]}; "
                              "regenerate the dataset")
        return files
    return None


def list_images(path: str | os.PathLike) -> list[Path]:
    """The images of a set: a folder's image files (top level, sorted), a dataset's manifest
    entries, or a dataset's `images/` folder."""
    folder = Path(path)
    if not folder.exists():
        raise SceditError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise SceditError(f"{folder}: expected a folder of images (or a dataset folder, or a .npz of FID statistics)")
    files = _manifest_images(folder)
    if files is None:
        files = sorted(p for p in folder.iterdir() if _is_image(p))
        if not files and (folder / "images").is_dir():
            files = sorted(p for p in (folder / "images").iterdir() if _is_image(p))
    if len(files) < 2:
        raise SceditError(
            f"{folder}: {len(files)} image(s) found ({', '.join(sorted(IMAGE_EXTENSIONS))}); FID needs at least 2 "
            "(and thousands for a meaningful figure)"
        )
    return files


def content_key(files: list[Path], root: Path, dims: int, weights_sha: str) -> str:
    """A hash of the reference set: relative names and contents, feature size and Inception weights."""
    h = hashlib.sha256()
    h.update(f"scedit-fid-stats v{STATS_VERSION} dims={dims} weights={weights_sha}\n".encode())
    for f in files:
        try:
            rel = f.relative_to(root).as_posix()
        except ValueError:
            rel = f.name
        h.update(f"{rel}\0{f.stat().st_size}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


# --- features and statistics -----------------------------------------------------------------

class _ImageFiles(torch.utils.data.Dataset):
    """RGB in [0, 1], resized to 299x299 the way pytorch-fid's InceptionV3 resizes a batch
    (bilinear, align_corners=False), so sets of mixed image sizes can be batched."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        from ..images import to_rgb8

        try:
            with Image.open(self.files[i]) as im:
                arr = np.asarray(to_rgb8(im), dtype=np.float32) / 255.0
        except Exception as e:  # noqa: BLE001
            raise SceditError(f"{self.files[i]}: cannot read image ({type(e).__name__}: {e})") from None
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return x[0]


@torch.no_grad()
def inception_features(files: list[Path], model: torch.nn.Module, batch_size: int = 50, num_workers: int = 0,
                       device: str | torch.device = "cpu",
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, dims) Inception features of `files`, in order."""
    if batch_size < 1:
        raise SceditError(f"--batch-size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise SceditError(f"--workers must be >= 0, got {num_workers}")
    loader = torch.utils.data.DataLoader(_ImageFiles(files), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers, drop_last=False)
    out = []
    for batch in loader:
        pred = model(batch.to(device))[0]
        if pred.shape[2:] != (1, 1):
            pred = F.adaptive_avg_pool2d(pred, (1, 1))
        out.append(pred.squeeze(3).squeeze(2).double().cpu().numpy())
        if on_batch is not None:
            on_batch(len(batch))
    return np.concatenate(out, axis=0)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues that are rounding noise (|w| below n * eps * max), keep the rest."""
    tol = max(float(np.abs(w).max(initial=0.0)), 0.0) * w.size * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), for symmetric PSD covariances.

    With S1 = V W V^T (rank r), the non-zero eigenvalues of S1 S2 are those of the
    r x r matrix W^1/2 V_r^T S2 V_r W^1/2, so one symmetric eigendecomposition of
    S1 and one of an r x r matrix give the trace exactly, even for singular S1, S2.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise SceditError(f"FID statistics do not match: means {mu1.shape} vs {mu2.shape}, "
                          f"covariances {s1.shape} vs {s2.shape} (were they computed with the same --dims?)")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    w = _clip_eigenvalues(w)
    keep = w > 0
    vr = v[:, keep] * np.sqrt(w[keep])  # d x r, vr @ vr.T == S1
    m = vr.T @ ((s2 + s2.T) / 2) @ vr
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(_clip_eigenvalues(ev)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


@dataclass
class SetStats:
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    source: str  # the folder or .npz it came from
    cached: bool = False  # read from the statistics cache
    cache_file: str | None = None


def load_stats_npz(path: str | os.PathLike) -> SetStats:
    p = Path(path)
    try:
        with np.load(p) as d:
            mu, sigma = d["mu"], d["sigma"]
            count = int(d["count"]) if "count" in d.files else -1
    except KeyError as e:
        raise SceditError(f"{p}: FID statistics need arrays 'mu' and 'sigma' (missing {e}); "
                          "write them with `scedit eval --fid --save-stats` or pytorch-fid --save-stats") from None
    except Exception as e:  # noqa: BLE001
        raise SceditError(f"{p}: cannot read FID statistics ({type(e).__name__}: {e})") from None
    return SetStats(mu=mu, sigma=sigma, count=count, source=str(p))


def save_stats_npz(path: str | os.PathLike, stats: SetStats, key: str | None = None) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=np.int64(stats.count), key=np.str_(key or ""))


class FIDScorer:
    """Inception once, then statistics of any number of image sets (reference sets cached)."""

    def __init__(self, weights: str | os.PathLike | None = None, dims: int = 2048, batch_size: int = 50,
                 num_workers: int = 0, device: str | torch.device = "cpu",
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 progress_factory: Callable | None = None):
        self.weights = resolve_inception_weights(weights)
        self.dims, self.batch_size, self.num_workers, self.device = dims, batch_size, num_workers, device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_stats_cache()
        self.use_cache = use_cache
        self.progress_factory = progress_factory
        self._model: torch.nn.Module | None = None
        self._weights_sha: str | None = None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = load_inception(self.weights, self.dims, self.device)
        return self._model

    @property
    def weights_sha(self) -> str:
        if self._weights_sha is None:
            self._weights_sha = file_sha256(self.weights)
        return self._weights_sha

    def _features(self, files: list[Path], label: str) -> np.ndarray:
        if self.progress_factory is None:
            return inception_features(files, self.model, self.batch_size, self.num_workers, self.device)
        with self.progress_factory() as bar:
            task = bar.add_task(f"Inception: {label}", total=len(files))
            return inception_features(files, self.model, self.batch_size, self.num_workers, self.device,
                                      on_batch=lambda n: bar.advance(task, n))

    def stats(self, source: str | os.PathLike, cache: bool = False) -> SetStats:
        """Statistics of a folder / dataset (cached when `cache`), or read from a `.npz`."""
        p = Path(source)
        if p.suffix == ".npz":
            if not p.is_file():
                raise SceditError(f"{p}: no such statistics file")
            return load_stats_npz(p)
        files = list_images(p)
        cache_file = None
        if cache and self.use_cache:
            key = content_key(files, p, self.dims, self.weights_sha)
            cache_file = self.cache_dir / f"{key[:32]}.npz"
            if cache_file.is_file():
                s = load_stats_npz(cache_file)
                if s.mu.shape == (self.dims,):
                    s.source, s.cached, s.cache_file = str(p), True, str(cache_file)
                    return s
        feats = self._features(files, p.name or str(p))
        mu, sigma = feature_statistics(feats)
        s = SetStats(mu=mu, sigma=sigma, count=len(files), source=str(p), cache_file=str(cache_file) if cache_file else None)
        if cache_file is not None:
            save_stats_npz(cache_file, s, key)
        return s


@dataclass
class FIDResult:
    fid: float
    generated: str
    reference: str
    generated_count: int
    reference_count: int
    dims: int
    reference_cached: bool
    reference_cache_file: str | None
    inception_weights: str
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def few_images_warning(counts: dict[str, int], dims: int) -> str | None:
    """What is wrong with a FID over no more images than feature dimensions, and what to do instead."""
    known = {name: n for name, n in counts.items() if n >= 0}  # -1: a .npz that does not say
    if not known or min(known.values()) > dims:
        return None
    name, n = min(known.items(), key=lambda kv: kv[1])
    text = (f"only {n} {name} image(s) for {dims}-d Inception features: with no more images than dimensions the "
            f"covariance is singular and the FID biased, not comparable to published figures; use more than {dims} "
            "images (50k is standard)")
    smaller = [d for d in sorted(FEATURE_DIMS, reverse=True) if d < dims]
    fits = [d for d in smaller if d < n]
    return text + (f", or --dims {fits[0]} (a smaller pytorch-fid feature layer; FIDs of other --dims do not compare)"
                   if fits else f", or a smaller pytorch-fid feature layer, --dims {'/'.join(map(str, smaller))}, "
                   "with more images than its dimensions" if smaller else "")


def compute_fid(generated: str | os.PathLike, reference: str | os.PathLike, *, weights=None, dims: int = 2048,
                batch_size: int = 50, num_workers: int = 0, device: str | torch.device = "cpu",
                cache_dir=None, use_cache: bool = True, progress_factory: Callable | None = None) -> FIDResult:
    """FID between a folder of generated images and a reference folder / dataset / `.npz`."""
    scorer = FIDScorer(weights, dims, batch_size, num_workers, device, cache_dir, use_cache, progress_factory)
    ref = scorer.stats(reference, cache=True)
    gen = scorer.stats(generated, cache=False)
    warning = few_images_warning({"generated": gen.count, "reference": ref.count}, dims)
    return FIDResult(
        fid=frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma),
        generated=str(generated), reference=str(reference),
        generated_count=gen.count, reference_count=ref.count, dims=dims,
        reference_cached=ref.cached, reference_cache_file=ref.cache_file,
        inception_weights=str(scorer.weights), warnings=[warning] if warning else [],
    )
