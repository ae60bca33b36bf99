"""Cache of what is frozen: VAE latent distributions, text embeddings, condition maps.

With SCEdit the VAE, the text encoder(s) and the U-Net encoder are frozen; the
first two depend only on the data, so they are computed once (`scedit prepare
cache`, or `data.cache = "build"` in a recipe) and read back at every step.

Layout: a folder (default `scedit-cache/` next to the dataset) of safetensors
files, each holding whole entries. An entry is named by a content key:

    image entry  sha256(VAE fingerprint, image bytes' sha256, crop size, crop mode, flipped?)
                 -> moments (the posterior's mean and log-variance, as the VAE returns them;
                    std = exp(logvar / 2)), meta (original h, w, crop top, left)
    text entry   sha256(text-encoder fingerprint, caption) -> embeds (+ pooled for SDXL)
    cond entry   sha256(condition names, their files' sha256, image sha256, crop size, mode)
                 -> one uint8 map per condition (exactly the values the data loader makes)

A fingerprint hashes a model's class, config and every weight byte (and the
dtype it runs in, and the tokenizers' vocabularies): a changed image, caption,
resolution or base model changes the key, so a stale entry is never found, and
only the affected entries are encoded again. A build writes entries in chunks,
each chunk one file written atomically (`fsutil.atomic_path`); an interrupted
build keeps its finished files and the next one encodes only what is missing.
The posterior sample is still drawn at every visit from the sample's seeded
generator, so a cached run draws exactly what an uncached one does.
"""

from .build import BuildStats, CacheSummary, build_cache, prepare_cache
from .plan import CachePlan, RowPlan, check_cacheable, default_cache_dir, make_plan
from .read import MODES, CachedTrainDataset, attach_cache
from .store import CACHE_VERSION, CacheStore, module_fingerprint, text_fingerprint, vae_fingerprint

__all__ = ["CACHE_VERSION", "MODES", "BuildStats", "CachePlan", "CacheStore", "CacheSummary", "CachedTrainDataset", "RowPlan",
           "attach_cache", "build_cache", "check_cacheable", "default_cache_dir", "make_plan",
           "module_fingerprint", "prepare_cache", "text_fingerprint", "vae_fingerprint"]
