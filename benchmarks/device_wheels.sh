#!/usr/bin/env bash
# Run here (package registries reachable), before a GPU session: the wheels the GPU machine's image lacks,
# for its Python 3.12 on x86-64. Its image has torch, transformers, peft, accelerate, typer, rich,
# matplotlib, ... but not diffusers or datasets (the quickstart and train stages read data with it), and
# nothing can be fetched there. `.whl/` gets scedit's, `.whl-peers/` ms-swift's SCETuning for the peers
# stage (the versions benchmarks/README.md installs here). Both are git-ignored: the device call names
# them in `carry` (about 15 MB together), and gpu_check.sh installs what it finds there.
set -euo pipefail
cd "$(dirname "$0")/.."
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${platform[@]}" -d .whl \
  diffusers==0.42.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
python3 -m pip download -q --no-deps "${platform[@]}" -d .whl-peers \
  ms-swift==4.6.0 modelscope==1.34.0 json-repair==0.64.6
ls -l .whl .whl-peers
