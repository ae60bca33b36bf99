"""FID: the Fréchet distance itself, and the whole pytorch-fid Inception path with a weight file
that has the real keys (random values), offline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from scedit_cli.errors import SceditError
from scedit_cli.metrics import fid


def scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy's matrix square root (as the TF/pytorch-fid reference does)."""
    covmean = linalg.sqrtm(s1 @ s2).real
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def write_inception_weights(path):
    """pytorch-fid's FID Inception layout, He-initialised convs, so features are finite and vary."""
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    sd = net.state_dict()
    for k, v in sd.items():
        if k.endswith("conv.weight"):
            v.normal_(0, math.sqrt(2.0 / v[0].numel()))
    torch.save(sd, path)
    return path


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    return write_inception_weights(tmp_path_factory.mktemp("inception") / fid.INCEPTION_FILENAME)


def write_images(folder, n, seed=0, noise=0.0, size=32):
    """Smooth random colour images (plus optional pixel noise), as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.uniform(0, 255, size=(4, 4, 3))
        img = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float64)
        if noise:
            img = img + np.random.default_rng(1000 + i).normal(0, noise * 255, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_frechet_distance_matches_independent_scipy_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 24))
    b = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)) * 0.3 + 0.5
    mu1, s1 = fid.feature_statistics(a)
    mu2, s2 = fid.feature_statistics(b)
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-7)
    assert ours == pytest.approx(fid.frechet_distance(mu2, s2, mu1, s1), rel=1e-9)  # symmetric
    # Shifting one set's mean by d adds |d|^2 exactly.
    d = np.full(24, 0.25)
    assert fid.frechet_distance(mu1 + d, s1, mu2, s2) - fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        float(d @ d + 2 * d @ (mu1 - mu2)), rel=1e-7)


def test_frechet_distance_is_exact_for_singular_covariances():
    # Fewer samples than dimensions: scipy's sqrtm is inexact here, the eigen form is not.
    rng = np.random.default_rng(1)
    mu, s = fid.feature_statistics(rng.normal(size=(10, 256)))
    assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)


def test_fid_real_inception_path_2048_self_is_zero(tmp_path, inception_weights):
    gen = write_images(tmp_path / "gen", 3, seed=0)
    ref = write_images(tmp_path / "ref", 3, seed=0)
    r = fid.compute_fid(gen, ref, weights=inception_weights, dims=2048, batch_size=2, cache_dir=tmp_path / "cache")
    assert r.dims == 2048 and r.generated_count == 3 and r.reference_count == 3
    assert abs(r.fid) < 1e-6
    with np.load(r.reference_cache_file) as d:
        assert d["mu"].shape == (2048,) and d["sigma"].shape == (2048, 2048)
        assert np.isfinite(d["sigma"]).all() and np.trace(d["sigma"]) > 0


def test_reference_statistics_are_cached_by_content(tmp_path, inception_weights):
    ref = write_images(tmp_path / "ref", 4, seed=0)
    scorer = fid.FIDScorer(inception_weights, dims=64, batch_size=3, cache_dir=tmp_path / "cache")
    s1 = scorer.stats(ref, cache=True)
    assert not s1.cached and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    s2 = scorer.stats(ref, cache=True)
    assert s2.cached and s2.cache_file == s1.cache_file and np.array_equal(s2.sigma, s1.sigma)
    # Change one reference image's content (same name): a new key, recomputed.
    write_images(tmp_path / "other", 4, seed=5)
    (ref / "003.png").write_bytes((tmp_path / "other" / "003.png").read_bytes())
    s3 = scorer.stats(ref, cache=True)
    assert not s3.cached and s3.cache_file != s1.cache_file
    assert not np.allclose(s3.mu, s1.mu)
    # The cached .npz works as a reference by itself.
    s4 = scorer.stats(s3.cache_file)
    assert np.array_equal(s4.mu, s3.mu) and s4.count == 4


def test_fid_grows_with_noise(tmp_path, inception_weights):
    ref = write_images(tmp_path / "ref", 12, seed=0)
    scores = []
    for noise in (0.0, 0.05, 0.3):
        gen = write_images(tmp_path / f"gen{noise}", 12, seed=0, noise=noise)
        scores.append(fid.compute_fid(gen, ref, weights=inception_weights, dims=64, batch_size=6,
                                      cache_dir=tmp_path / "cache").fid)
    assert abs(scores[0]) < 1e-6 * max(1.0, scores[2])
    assert scores[0] < scores[1] < scores[2]


def test_fid_offline_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(SceditError) as e:
        fid.resolve_inception_weights(None)
    msg = str(e.value)
    assert fid.INCEPTION_FILENAME in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "--inception-weights" in msg and "\n" not in msg


def test_fid_rejects_a_file_with_the_wrong_keys(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(SceditError, match="do not fit pytorch-fid's FID Inception"):
        fid.load_inception(bad)


def test_image_sets_need_two_images_and_dataset_manifests_are_read(tmp_path):
    write_images(tmp_path / "one", 1)
    with pytest.raises(SceditError, match="1 image"):
        fid.list_images(tmp_path / "one")
    ds = tmp_path / "ds"
    write_images(ds / "images", 3)
    (ds / "conditions").mkdir()
    (ds / "metadata.jsonl").write_text("".join(f'{{"image": "images/{i:03d}.png", "text": "x"}}\n' for i in (0, 2)))
    assert [p.name for p in fid.list_images(ds)] == ["000.png", "002.png"]
