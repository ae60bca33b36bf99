"""Our SC-Tuner against ms-swift's SCETuning, on the same U-Net, inputs, threads and dtype.

Each side runs in its own process (ms-swift in its own Python environment, `--peer-python`; see
benchmarks/README.md for how to make it), so neither shares memory, allocator or imports with the
other and each reports its own peak. The sides take turns: every round starts one process per
side (in a rotated order), each builds the same real-size SD 1.5 U-Net with random weights (same
seed), sets its tuner up as a user would, takes `--warmup` untimed and `--steps` timed training
steps, then one more step with its memory accounted. Machine load (the dev machine's cores are
shared) so falls on all sides alike; the load average is recorded around every process.

The step is the same code for every side: forward on fixed noisy latents / timestep / text
embeddings, MSE to a fixed target, backward, gradient clipping at 1.0 and AdamW (lr 5e-5, weight
decay 0.01: Table 4), zero grads. Memory per side: the bytes autograd saves for backward
(`SavedTensorCounter`, parameters excluded, each storage once), and the peak resident set over the
step on a CPU (`VmHWM`, reset before it) or the CUDA allocator's peak on a GPU.

Sides:
  swift      ms-swift's SCETuning as its README shows for diffusers: `SCETuningConfig(dims=[1280]*5 +
             [640]*3 + [320]*4, target_modules=r'^up_blocks\\.\\d+\\.resnets\\.\\d+$')` (tuner_mode
             'decoder', down_ratio 1.0: hidden width = channels, its defaults) on the bare U-Net; the dims
             are the skips' channels in decoder order, read from the U-Net (so `--unet-config` works too).
  ours       `scedit`'s `sc` method (ratio 1: the same widths) prepared by `prepare_training` as
             `scedit train` does, with the recipe's `train.lean` switch off.
  ours-lean  the same with `train.lean = true` (the exact activation savings of `scedit_cli.lean`).
  ours-lean-stock-conv  ours-lean with `train.prepack = false`: every convolution on PyTorch's stock
             path (on a CPU the others reorder large frozen conv weights once: `scedit_cli.prepack`).

Usage (from the repository root, scedit importable: PYTHONPATH=src):
    python benchmarks/bench_peers.py --peer-python /work/peers-venv/bin/python \\
        --out benchmarks/results/peers-cpu-256
    python benchmarks/bench_peers.py --peer-python PY --device cuda --resolution 512 --batch 32 --out DIR/peers-gpu-512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIDES = ("swift", "ours", "ours-lean", "ours-lean-stock-conv")
MARK = "BENCH_PEERS_RESULT "
SWIFT_TARGETS = r"^up_blocks\.\d+\.resnets\.\d+$"


# --- one side, in its own process ----------------------------------------------------------------

def _inputs(unet, a, device):
    import torch

    g = torch.Generator().manual_seed(a.seed + 1)
    latent = a.resolution // 8
    c = unet.config
    shape = (a.batch, c.in_channels, latent, latent)
    noisy = torch.randn(shape, generator=g)
    target = torch.randn(shape, generator=g)
    ehs = torch.randn(a.batch, 77, c.cross_attention_dim, generator=g)
    t = torch.randint(0, 1000, (a.batch,), generator=g)
    return [x.to(device) for x in (noisy, ehs, target)] + [t.to(device)]


def swift_dims(unet) -> list[int]:
    """The channels of the skip each up-block resnet receives, in the order the resnets run."""
    from scedit_cli.tuners import SkipLayout

    return list(reversed(SkipLayout.from_unet(unet).channels))


def _setup_swift(unet, device, frozen_dtype):
    import torch
    from swift.tuners import SCETuningConfig, Swift

    dims = swift_dims(unet)
    unet.to(device=device, dtype=frozen_dtype)
    model = Swift.prepare_model(unet, SCETuningConfig(dims=dims, target_modules=SWIFT_TARGETS))
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # trainable weights in fp32, as ours (they were made after the cast, so they are)
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
    return model, [unet], params, optimizer


def _setup_ours(unet, device, frozen_dtype, lean: bool, mixed: str, prepack: bool | str = "auto"):
    from scedit_cli.methods import build_method
    from scedit_cli.models import BaseModel
    from scedit_cli.recipes import TrainSection
    from scedit_cli.training.loop import prepare_training

    base = BaseModel.from_unet(unet)
    method = build_method("sc", {})
    method.setup(base)
    cfg = TrainSection(mixed_precision=mixed, lean=lean, prepack=prepack)
    params, optimizer, _, _, _ = prepare_training(method, base, device, frozen_dtype, cfg)
    return unet, [unet, method.tuner], params, optimizer


def worker(a) -> dict:
    import torch
    import torch.nn.functional as F

    from scedit_cli.bench.runner import BaseFactory
    from scedit_cli.bench.specs import BenchSettings
    from scedit_cli.metrics.memory import measure_step_memory, unet_regions
    from scedit_cli.metrics.timing import time_steps
    from scedit_cli.training.loop import optimizer_step

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.precision)
    frozen = autocast or torch.float32
    t0 = time.perf_counter()
    # SD 1.5 or --unet-config, random weights from --seed, as `scedit bench` builds its bases
    unet = BaseFactory("sd15", BenchSettings(device=a.device, seed=a.seed, unet_config=a.unet_config)).build().unet
    unet.requires_grad_(False)
    if a.worker == "swift":
        model, modules, params, optimizer = _setup_swift(unet, device, frozen)
    else:
        model, modules, params, optimizer = _setup_ours(unet, device, frozen, a.worker != "ours",
                                                        a.precision if autocast else "no",
                                                        prepack=False if a.worker == "ours-lean-stock-conv" else "auto")
    scaler = torch.amp.GradScaler(device.type) if autocast == torch.float16 else None
    noisy, ehs, target, t = _inputs(unet, a, device)
    setup_s = time.perf_counter() - t0
    losses = []

    def step():
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            pred = model(noisy, t, encoder_hidden_states=ehs, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), target.float())
        (scaler.scale(loss) if scaler is not None else loss).backward()
        optimizer_step(optimizer, params, scaler, max_grad_norm=1.0)
        losses.append(float(loss.detach()))

    timing = time_steps(step, a.steps, a.warmup, device)
    memory = measure_step_memory(step, modules=modules, trainable=params, optimizer=optimizer, device=device,
                                 regions=unet_regions(unet))
    return {"side": a.worker, "setup_s": setup_s, "times_s": timing.times_s, "losses": losses,
            "trainable_params": sum(p.numel() for p in params), "memory": memory.to_dict(),
            "torch_threads": torch.get_num_threads()}


# --- the driver ------------------------------------------------------------------------------------

def _run_side(side: str, python: str, a, env) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--device", a.device, "--resolution",
           str(a.resolution), "--batch", str(a.batch), "--threads", str(a.threads), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--seed", str(a.seed), "--precision", a.precision,
           *(["--unet-config", a.unet_config] if a.unet_config else [])]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{side}: worker failed (exit {proc.returncode}): {shlex.join(cmd)}")
    out = json.loads(lines[-1][len(MARK):])
    out.update(python=python, wall_s=wall, load_before=load_before, load_after=os.getloadavg())
    return out


def summarize(runs: list[dict]) -> dict:
    times = [x for r in runs for x in r["times_s"]]
    mem = [r["memory"] for r in runs]
    peak_key = "cuda_peak_bytes" if mem[0].get("cuda_peak_bytes") is not None else "peak_rss_bytes"
    return {"median_step_s": statistics.median(times), "min_step_s": min(times), "max_step_s": max(times),
            "steps_timed": len(times), "saved_bytes": statistics.median(m["saved_bytes"] for m in mem),
            "saved_bytes_runs": [m["saved_bytes"] for m in mem],
            "reordered_bytes": statistics.median(m.get("reordered_bytes", 0) for m in mem),
            "peak_bytes": statistics.median(m[peak_key] for m in mem), "peak_source": peak_key,
            "trainable_params": runs[0]["trainable_params"], "first_loss": runs[0]["losses"][0]}


def _machine(device: str) -> dict:
    from scedit_cli.bench.runner import machine_info

    info = machine_info(device)
    info.pop("torch_threads", None)  # the driver's; each side's is in its runs
    info["python"] = platform.python_version()
    return info


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = list(result["sides"])
    s = result["sides"]
    figs = [("median step time (s)", [s[k]["median_step_s"] for k in sides]),
            ("saved activations (MiB)", [s[k]["saved_bytes"] / 2**20 for k in sides]),
            (f"peak ({s[sides[0]]['peak_source'].replace('_bytes', '')}, GiB)",
             [s[k]["peak_bytes"] / 2**30 for k in sides])]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    colors = {"swift": "#a0aec0", "ours": "#2b6cb0", "ours-lean": "#2c7a7b", "ours-lean-stock-conv": "#81a4c9"}
    for ax, (title, vals) in zip(axes, figs):
        bars = ax.bar(sides, vals, color=[colors.get(k, "#718096") for k in sides])
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=9)
    st = result["settings"]
    where = result["machine"].get("gpu") or result["machine"].get("cpu", "")
    unet = f"U-Net of {Path(st['unet_config']).name}" if st.get("unet_config") else "SD 1.5 U-Net"
    fig.suptitle(f"SC-Tuner vs ms-swift SCETuning: {unet} (random weights), {st['resolution']} px, batch "
                 f"{st['batch']}, {st['precision']}, {st['threads']} threads\n{where}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def drive(a) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    sides = [s.strip() for s in a.sides.split(",")]
    bad = [s for s in sides if s not in SIDES]
    if bad:
        raise SystemExit(f"--sides {','.join(bad)}: choose from {', '.join(SIDES)}")
    if "swift" in sides and not a.peer_python:
        raise SystemExit("--peer-python is needed for the swift side (the Python of ms-swift's environment)")
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    t0 = time.perf_counter()
    for r in range(a.rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            res = _run_side(side, a.peer_python if side == "swift" else sys.executable, a, env)
            runs[side].append(res)
            print(f"round {r + 1}/{a.rounds} {side:10s} median {statistics.median(res['times_s']):.2f} s  "
                  f"saved {res['memory']['saved_bytes'] / 2**20:.0f} MiB  load {res['load_before'][0]:.2f}",
                  file=sys.stderr, flush=True)
    summary = {s: summarize(runs[s]) for s in sides}
    ratios = {}
    if "swift" in summary:
        sw = summary["swift"]
        for s in sides:
            if s != "swift":
                # per round (the sides of one round ran back to back): robust to load that drifts between rounds
                per_round = [statistics.median(a_["times_s"]) / statistics.median(b_["times_s"])
                             for a_, b_ in zip(runs[s], runs["swift"])]
                ratios[s] = {"time_vs_swift": summary[s]["median_step_s"] / sw["median_step_s"],
                             "time_vs_swift_per_round": per_round,
                             "time_vs_swift_median_of_rounds": statistics.median(per_round),
                             "saved_vs_swift": summary[s]["saved_bytes"] / sw["saved_bytes"],
                             "peak_vs_swift": summary[s]["peak_bytes"] / sw["peak_bytes"]}
                ratios[s]["goal_met"] = ratios[s]["time_vs_swift"] <= 0.9 and ratios[s]["saved_vs_swift"] <= 0.6
    loads = [x for rs in runs.values() for r in rs for x in (r["load_before"][0], r["load_after"][0])]
    return {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "settings": vars(a) | {"worker": None},
            "machine": _machine(a.device), "load_average_1min": {"min": min(loads), "max": max(loads),
                                                                  "median": statistics.median(loads)},
            "step": "forward + MSE + backward + clip 1.0 + AdamW step (the same code for every side)",
            "goal": "time <= 0.9x swift's and saved activations <= 0.6x swift's",
            "sides": summary, "ratios": ratios, "runs": runs, "seconds": time.perf_counter() - t0}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-python", help="the Python of the environment with ms-swift installed")
    p.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, from {', '.join(SIDES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default=None, help="no | fp16 | bf16 (default: no on a CPU, fp16 on a GPU)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per side and round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unet-config", help="a diffusers U-Net config.json instead of SD 1.5's (random weights)")
    p.add_argument("--out", help="write OUT.json and OUT.png")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.precision is None:
        a.precision = "fp16" if a.device.startswith("cuda") else "no"
    if a.worker:
        print(MARK + json.dumps(worker(a)), flush=True)
        return
    result = drive(a)
    text = json.dumps(result, indent=2)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".json.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out.with_suffix(".json"))
        chart(result, out.with_suffix(".png"))
    for s, v in result["sides"].items():
        r = result["ratios"].get(s, {})
        print(f"{s:10s} {v['median_step_s']:6.2f} s  saved {v['saved_bytes'] / 2**20:6.0f} MiB  peak "
              f"{v['peak_bytes'] / 2**30:5.2f} GiB" + (f"  x{r['time_vs_swift']:.2f} time (median of "
                                                     f"rounds x{r['time_vs_swift_median_of_rounds']:.2f}), "
                                                     f"x{r['saved_vs_swift']:.2f} saved vs swift" if r else ""))


if __name__ == "__main__":
    main()
