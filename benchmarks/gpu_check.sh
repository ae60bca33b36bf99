#!/usr/bin/env bash
# One prepared GPU session: the efficiency tables at the paper's batch, the sampling overhead at 50
# steps, the fp16 training path, and the CUDA-only tests. Writes under $OUT: gpu.log (everything
# printed), tableN/tableN.json|png,
# probe.json, sampling.json, quickstart.json, train-fp16.json (train needs quickstart's data:
# /tmp/scedit-qs)
# Usage, from the repository root: OUT=results bash benchmarks/gpu_check.sh (scedit from src/ unless
# installed; on a machine without diffusers, first benchmarks/device_wheels.sh here, then carry .whl and
# .whl-peers)
# STAGES picks a subset: tests table1 table2 table5 probe profile sampling edit quickstart train peers
#   (default: all but table5 and probe)
#   (probe: probe.json, where SCEdit's and LoRA's memory peaks fall and what is held when the forward
#   ends; benchmarks/peak_probe.py)
#   (profile: profile[-nolean|-cudnnbench].json|png, benchmarks/step_profile.py: where SCEdit's and LoRA's
#    step time goes, by phase and operator category; train.lean on, off, and with cuDNN's autotuning)
#   (edit: skip-edit-gpu-512.json, benchmarks/bench_skip_edit.py: the sampling skip edit alone)
#   (peers: peers-gpu-512.json|png, ours vs ms-swift's SCETuning; needs PEER_PYTHON, the Python of an
#    environment with ms-swift installed as benchmarks/README.md says)
set -u
STAGES=" ${STAGES:-tests table1 table2 profile sampling edit quickstart train peers} "
want() { [[ "$STAGES" == *" $1 "* ]]; }
OUT=${OUT:?set OUT to a folder}
mkdir -p "$OUT"
LOG="$OUT/gpu.log"
S="python3 -m scedit_cli.cli"
stage() { echo "=== $(date -u +%T) $*" | tee -a "$LOG"; }
run() { "$@" >>"$LOG" 2>&1; rc=$?; echo "--- rc=$rc" | tee -a "$LOG"; }

# Wheels the machine's image lacks (benchmarks/device_wheels.sh, carried as .whl and .whl-peers): scedit's
# into /tmp/site; ms-swift's into /tmp/peers-site, run by a python3 that also sees it (PEER_PYTHON).
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
if [ -d .whl ]; then
  pipi /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import scedit_cli" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl-peers ] && [ -z "${PEER_PYTHON:-}" ] && pipi /tmp/peers-site .whl-peers/*.whl; then
  printf '#!/bin/sh\nPYTHONPATH="/tmp/peers-site${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$@"\n' >/tmp/peer-python
  chmod +x /tmp/peer-python && export PEER_PYTHON=/tmp/peer-python
fi

stage machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$LOG" 2>&1
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" >>"$LOG" 2>&1

if want tests; then
stage "tests needing a GPU (lean autograd under fp16 autocast, the stacked sampling edit in fp16)"
run python3 -m pytest -q -p no:cacheprovider tests/test_lean.py tests/test_lean_feedforward.py tests/test_tuners.py tests/test_sampling_edit.py
fi

for t in table1 table2 table5; do
  want $t || continue
  stage "$t: batch 32 (the paper's: 32 for Tables 1/5, 64 for 2), 512 px, AMP fp16"
  run $S bench $t --device cuda --resolution 512 --batch 32 --steps 8 --warmup 3 --out "$OUT/$t"
done

if want probe; then
stage "probe: where the memory peak falls, SCEdit and LoRA r=64 (batch 32, 512 px)"
run python3 benchmarks/peak_probe.py --methods "SCEdit,LoRA r=64" --batch 32 --out "$OUT/probe.json"
fi

if want profile; then
stage "profile: where SCEdit's and LoRA r=64's step time goes (batch 32, 512 px, AMP fp16), lean on and off"
run python3 benchmarks/step_profile.py --methods "SCEdit,LoRA r=64" --batch 32 --out "$OUT/profile"
run python3 benchmarks/step_profile.py --methods "SCEdit,LoRA r=64" --batch 32 --lean false --out "$OUT/profile-nolean"
run python3 benchmarks/step_profile.py --methods "SCEdit,LoRA r=64" --batch 32 --cudnn-benchmark --out "$OUT/profile-cudnnbench"
fi

if want sampling; then
stage "sampling: SD 1.5, 512 px, 50 DDIM steps, CFG 7.5, fp16"
$S bench sampling --device cuda --resolution 512 --steps 50 --repeats 3 --json >"$OUT/sampling.json" 2>>"$LOG"
echo "--- rc=$?" | tee -a "$LOG"
fi

if want edit; then
stage "skip edit alone: stacked / per skip / the tuners' autograd path, SD 1.5 skips at 512 px, batch 2, fp16"
run python3 benchmarks/bench_skip_edit.py --device cuda --dtype fp16 --resolution 512 --repeats 50 \
  --out "$OUT/skip-edit-gpu-512.json"
fi

want quickstart && {
stage "quickstart on the GPU (fp32 recipes)"
QS=/tmp/scedit-qs
$S quickstart --output "$QS" --json >"$OUT/quickstart.json" 2>>"$LOG"
echo "--- rc=$?" | tee -a "$LOG"
}

want train && {
stage "fp16 training: the quickstart's style (SC) and canny (CSC) recipes with train.mixed_precision=fp16"
R=src/scedit_cli/assets/quickstart
{
  echo '{"style":'
  $S train $R/style.toml --set data.source=$QS/data/style --set train.output_dir=/tmp/fp16-style \
    --set train.mixed_precision=fp16 --json 2>>"$LOG" || echo null
  echo ',"canny":'
  $S train $R/canny.toml --set data.source=$QS/data/control --set train.output_dir=/tmp/fp16-canny \
    --set train.mixed_precision=fp16 --json 2>>"$LOG" || echo null
  echo '}'
} >"$OUT/train-fp16.json"
echo "--- rc=$?" | tee -a "$LOG"
}
if want peers; then
stage "peers: SC-Tuner (train.lean on and off) vs ms-swift SCETuning, SD 1.5, 512 px, batch 32, AMP fp16"
if [ -x "${PEER_PYTHON:-}" ]; then
  run python3 benchmarks/bench_peers.py --peer-python "$PEER_PYTHON" --device cuda --resolution 512 --batch 32 \
    --rounds 3 --steps 4 --warmup 2 --out "$OUT/peers-gpu-512"
else
  echo "--- skipped: set PEER_PYTHON to the Python of the ms-swift environment" | tee -a "$LOG"
fi
fi

stage done
