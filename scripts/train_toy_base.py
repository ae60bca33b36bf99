#!/usr/bin/env python
"""Train the toy base model shipped in `src/scedit_cli/assets/toy-base/` from scratch.

Reproducible: everything is seeded and driven by step counts (not wall time),
so the same command on the same software gives the same weights (up to CPU
floating-point non-determinism across machines/thread counts).

    python scripts/train_toy_base.py --out src/scedit_cli/assets/toy-base

Phases:
 1. VAE (AutoencoderKL, 32x32x3 -> 8x8x4) on rendered toy images, MSE + tiny KL;
 2. text encoder (tiny CLIPTextModel, word-level tokenizer) and U-Net
    (UNet2DConditionModel with cross-attention down/up blocks) jointly, on the
    VAE's latents, epsilon prediction, min-SNR-5 loss weighting, 10% empty
    captions (for classifier-free guidance), EMA of the weights;
 3. save a diffusers StableDiffusionPipeline folder in fp16 and score it with
    the analytic scorers (`scedit_cli.toy.score`).

Progress goes to `--work`/train.log (default runs/toy-base).

The shipped weights came from (one NVIDIA H200, 6 min 40 s in all: VAE 59 s,
U-Net + text encoder 7,179 steps in 300 s, evaluation and saving the rest):

    python scripts/train_toy_base.py --device cuda --stop-after 7179

(that run was stopped at step 7,179 of the 10,000-step cosine schedule by a
5-minute guard, `--max-minutes 5`; `--stop-after 7179` replays it exactly, step
for step). Then, if the run was on another machine and exported flat weights
with `--export DIR`, build the folder here with `--assemble DIR`. On 2 idle
CPU cores the same recipe takes roughly 3 hours (VAE ~0.6 s/step, U-Net
~1.1 s/step at batch 128); GPU and CPU results match in distribution, not bit
for bit.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scedit_cli.fsutil import atomic_dir, atomic_path, write_json_atomic
from scedit_cli.toy.score import score_images
from scedit_cli.toy.tokenizer import MAX_LENGTH, save_tokenizer
from scedit_cli.toy.world import GRID, TRIGGER, ToyWorld, render_array

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=GRID,
    mid_block_add_attention=False,
)
UNET_CONFIG = dict(
    sample_size=GRID // 4,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
    projection_dim=64,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def log(msg: str, fh=None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


def make_images(world: ToyWorld, n: int, seed: int):
    scenes = world.scenes(n, seed)
    arr = np.stack([render_array(s) for s in scenes])  # n,32,32,3 uint8
    return scenes, torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_unit(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_vae(args, world, fh):
    from diffusers import AutoencoderKL

    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG).to(dev)
    _, train = make_images(world, args.n_train, args.seed)
    val_scenes, val = make_images(world, 256, args.seed + 1)
    train, val = train.to(dev), val.to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 2)
    t0 = time.time()
    vae.train()
    for step in range(1, args.vae_steps + 1):
        lr = args.vae_lr * min(1.0, step / 100) * (0.5 * (1 + math.cos(math.pi * step / args.vae_steps)) * 0.9 + 0.1)
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, len(train), (args.vae_batch,), generator=g).to(dev)
        x = to_unit(train[idx])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(dev)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + args.vae_kl * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.vae_steps:
            msg = f"vae step {step}/{args.vae_steps} loss {loss.item():.4f} lr {lr:.2e} {time.time() - t0:.0f}s"
            if step % (args.log_every * 5) == 0 or step == args.vae_steps:
                vae.eval()
                with torch.no_grad():
                    r = vae.decode(vae.encode(to_unit(val)).latent_dist.mean).sample
                vae.train()
                s = score_images(list(to_uint8(r.cpu())), val_scenes)
                msg += " | recon " + " ".join(f"{k} {v:.3f}" for k, v in s.items() if k != "n")
            log(msg, fh)
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(to_unit(train[i : i + 512])).latent_dist.mean for i in range(0, 2048, 512)])
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    vae.to("cpu")
    log(f"vae done in {time.time() - t0:.0f}s; scaling_factor {vae.config.scaling_factor:.4f}", fh)
    return vae


def build_pipeline(vae, text_encoder, tokenizer, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, out: Path) -> None:
    """Save `pipe` in fp16 safetensors, atomically."""
    import copy as _copy

    half = _copy.deepcopy(pipe)
    half.to(torch.float16)
    with atomic_dir(out) as tmp:
        half.save_pretrained(str(tmp), safe_serialization=True)
        # transformers 5 loads with dtype="auto" (the config's dtype) by default while
        # diffusers loads fp32: say float32 so a plain from_pretrained() runs on CPU.
        te_cfg = tmp / "text_encoder" / "config.json"
        cfg = json.loads(te_cfg.read_text())
        cfg["dtype"] = "float32"
        te_cfg.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for q in [tmp, *tmp.rglob("*")]:  # mkdtemp/mkstemp make owner-only files; ship readable ones
            q.chmod(0o755 if q.is_dir() else 0o644)


@torch.no_grad()
def evaluate(
    pipe, world: ToyWorld, n: int, seed: int, steps: int, guidance: float, batch: int = 32, style: str | None = None
) -> dict:
    """Sample `n` prompts of `world` and score them analytically.

    With `style`, prompts carry the `<sce>` trigger and the style score is that style's.
    """
    scenes = world.scenes(n, seed, style or "solid")
    trigger = TRIGGER if style else None
    images = []
    for i in range(0, n, batch):
        chunk = scenes[i : i + batch]
        g = torch.Generator().manual_seed(seed + i)
        out = pipe(
            [world.caption(s, trigger=trigger) for s in chunk],
            height=GRID,
            width=GRID,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=g,
            output_type="np",
        ).images
        images.extend(list((out * 255).round().astype(np.uint8)))
    return score_images(images, scenes)


def export_weights(folder: Path, vae, text_encoder, unet, extra_files=()) -> None:
    """Flat fp16 weights (vae/text_encoder/unet .safetensors) for `--assemble`."""
    import shutil

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, m in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in m.state_dict().items()}
        with atomic_path(folder / f"{name}.safetensors") as tmp:
            save_file(sd, str(tmp))
    if "scaling_factor" in vae.config:
        write_json_atomic(folder / "vae_scaling.json", {"scaling_factor": vae.config.scaling_factor})
    for f in extra_files:
        if Path(f).exists():
            shutil.copyfile(f, folder / Path(f).name)


def assemble(weights: Path, work: Path):
    """Build the pipeline from flat weights written by `export_weights` (no training)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = save_tokenizer(work / "tokenizer")
    vae = AutoencoderKL(**VAE_CONFIG)
    vae.register_to_config(**json.loads((weights / "vae_scaling.json").read_text()))
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    for name, m in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        sd = {k: v.float() for k, v in load_file(str(weights / f"{name}.safetensors")).items()}
        m.load_state_dict(sd, strict=True)
        m.eval()
    return build_pipeline(vae, text_encoder, tokenizer, unet)


def final_eval(pipe, world, args, fh) -> dict:
    results = {}
    for cfg in args.eval_guidance:
        s = evaluate(pipe, world, args.eval_n, 2024, args.eval_steps, cfg, style=getattr(args, "eval_style", None))
        results[str(cfg)] = s
        log(f"final eval ({args.eval_n} samples, style {getattr(args, 'eval_style', None) or 'solid'}, {args.eval_steps} DDIM steps, cfg {cfg}): {json.dumps(s)}", fh)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="src/scedit_cli/assets/toy-base")
    p.add_argument("--work", default="runs/toy-base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--export", default=None, help="also write flat fp16 weights + log here at every save")
    p.add_argument("--assemble", default=None, help="skip training: build --out from flat weights in this folder")
    p.add_argument("--evaluate", default=None, help="skip training: score this pipeline folder (e.g. the shipped one)")
    p.add_argument("--eval-style", default=None, choices=["outline", "striped"],
                   help="with --evaluate: prompt with the <sce> trigger and also report this style's score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch", type=int, default=64)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-kl", type=float, default=1e-6)
    p.add_argument("--vae", default=None, help="reuse a trained VAE folder instead of phase 1")
    p.add_argument("--vae-only", action="store_true", help="stop after phase 1 (the VAE goes to --work/vae)")
    p.add_argument("--unet-steps", type=int, default=10000)
    p.add_argument("--unet-batch", type=int, default=128)
    p.add_argument("--unet-lr", type=float, default=6e-4)
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--snr-gamma", type=float, default=5.0)
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="end phase 2 after this step (0: at --unet-steps); the LR schedule still spans --unet-steps",
    )
    p.add_argument("--max-minutes", type=float, default=0.0, help="safety stop for phase 2 (0: none); logged if hit")
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-n", type=int, default=128)
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--eval-guidance", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.5])
    p.add_argument("--guidance", type=float, default=4.0, help="CFG of the evaluations during training")
    args = p.parse_args(argv)

    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fh = open(work / "train.log", "a", encoding="utf-8")
    log(f"args {vars(args)}", fh)
    world = ToyWorld()
    t_start = time.time()

    if args.evaluate:
        pipe = StableDiffusionPipeline.from_pretrained(args.evaluate, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        res = final_eval(pipe, world, args, fh)
        print(json.dumps(res, indent=2))
        return 0

    if args.assemble:
        pipe = assemble(Path(args.assemble), work)
        save_pipeline(pipe, Path(args.out))
        log(f"assembled {args.out} from {args.assemble}", fh)
        reloaded = StableDiffusionPipeline.from_pretrained(args.out, dtype=torch.float32)
        reloaded.set_progress_bar_config(disable=True)
        write_json_atomic(work / "final_scores.json", final_eval(reloaded, world, args, fh))
        return 0

    dev = torch.device(args.device)
    # Phase 1: VAE
    if args.vae:
        vae = AutoencoderKL.from_pretrained(args.vae, dtype=torch.float32)
    else:
        vae = train_vae(args, world, fh)
        with atomic_dir(work / "vae") as tmp:
            vae.save_pretrained(str(tmp), safe_serialization=True)
    vae.requires_grad_(False).eval().to(dev)
    if args.vae_only:
        return 0

    # Phase 2: text encoder + U-Net
    tokenizer = save_tokenizer(work / "tokenizer")
    torch.manual_seed(args.seed + 10)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder.to(dev).train()
    unet.to(dev).train()
    ema_te, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    alphas_cum = noise_sched.alphas_cumprod
    snr = alphas_cum / (1 - alphas_cum)
    sqrt_a, sqrt_1a = alphas_cum.sqrt().to(dev), (1 - alphas_cum).sqrt().to(dev)

    scenes, images = make_images(world, args.n_train, args.seed + 3)
    captions = [world.caption(s) for s in scenes]
    ids = tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids.to(dev)
    empty_ids = tokenizer([""], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids.to(dev)
    with torch.no_grad():
        post = [vae.encode(to_unit(images[i : i + 500].to(dev))).latent_dist for i in range(0, len(images), 500)]
    lat_mean = torch.cat([d.mean for d in post])
    lat_std = torch.cat([d.std for d in post])
    sf = vae.config.scaling_factor
    log(f"latents {tuple(lat_mean.shape)} std {(lat_mean * sf).std():.3f}; tokenizer {len(tokenizer)} tokens", fh)

    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    n_unet = sum(p.numel() for p in unet.parameters())
    n_te = sum(p.numel() for p in text_encoder.parameters())
    log(f"unet {n_unet / 1e6:.2f}M params, text encoder {n_te / 1e6:.2f}M, device {dev}", fh)
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed + 4)
    t0 = time.time()
    last = args.unet_steps
    for step in range(1, args.unet_steps + 1):
        lr = args.unet_lr * min(1.0, step / 200) * (0.5 * (1 + math.cos(math.pi * step / args.unet_steps)) * 0.9 + 0.1)
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, len(images), (args.unet_batch,), generator=g)
        eps_lat = torch.randn((args.unet_batch, *lat_mean.shape[1:]), generator=g)
        drop = torch.rand(args.unet_batch, generator=g) < args.cfg_drop
        noise = torch.randn((args.unet_batch, *lat_mean.shape[1:]), generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (args.unet_batch,), generator=g)
        w = (torch.clamp(snr[t], max=args.snr_gamma) / snr[t]).to(dev)
        idx_d, t_d, noise, drop = idx.to(dev), t.to(dev), noise.to(dev), drop.to(dev)
        z = (lat_mean[idx_d] + lat_std[idx_d] * eps_lat.to(dev)) * sf
        tok = torch.where(drop[:, None], empty_ids, ids[idx_d])
        zt = sqrt_a[t_d].view(-1, 1, 1, 1) * z + sqrt_1a[t_d].view(-1, 1, 1, 1) * noise
        enc = text_encoder(tok).last_hidden_state
        pred = unet(zt, t_d, enc).sample
        loss = (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        over = bool(args.max_minutes) and (time.time() - t0) > 60 * args.max_minutes
        stop = over or step == args.stop_after
        if step % args.log_every == 0:
            el = time.time() - t0
            log(f"unet step {step}/{args.unet_steps} loss {loss.item():.4f} lr {lr:.2e} {el:.0f}s ({el / step:.3f}s/step)", fh)
        if step % args.save_every == 0 or step == args.unet_steps or stop:
            pipe = build_pipeline(vae, ema_te, tokenizer, ema_unet)
            pipe.set_progress_bar_config(disable=True)
            s = evaluate(pipe, world, 32, 1234, args.eval_steps, args.guidance)
            log(f"eval step {step} (ema, 32 samples, cfg {args.guidance}): " + " ".join(f"{k} {v:.3f}" for k, v in s.items()), fh)
            if args.export:
                export_weights(Path(args.export), vae, ema_te, ema_unet, [work / "train.log"])
        if stop:
            why = f"--max-minutes {args.max_minutes} reached" if over else "--stop-after"
            log(f"STOPPED at step {step} of {args.unet_steps}: {why}", fh)
            last = step
            break
    log(f"phase 2 done: {last} steps in {time.time() - t0:.0f}s", fh)

    pipe = build_pipeline(vae, ema_te, tokenizer, ema_unet).to("cpu")
    save_pipeline(pipe, Path(args.out))
    log(f"saved {args.out}; total {time.time() - t_start:.0f}s", fh)
    reloaded = StableDiffusionPipeline.from_pretrained(args.out, dtype=torch.float32).to(dev)
    reloaded.set_progress_bar_config(disable=True)
    res = final_eval(reloaded, world, args, fh)
    write_json_atomic(work / "final_scores.json", res)
    if args.export:
        export_weights(Path(args.export), vae, ema_te, ema_unet, [work / "train.log", work / "final_scores.json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
