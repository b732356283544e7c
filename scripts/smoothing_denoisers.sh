#!/usr/bin/env bash
# The denoisers of randomized smoothing shipped in saved_models/DATASET/smoothing/ (docs/certify.md §3): for each
# sigma, an MSE denoiser, then its stability fine-tune in front of the shipped classifier (frozen), with the
# profile's epochs, in bfloat16 on a CPU (float16 on a GPU; saved in float32). Each command resumes an interrupted
# stage and keeps finished ones, so the script can be re-run after an interruption.
#   scripts/smoothing_denoisers.sh mnist cifar10 imagenet
# Cost on 2 CPU cores: ~45 min a sigma for MNIST, ~100 min for CIFAR-10, ~45 min for ImageNet.
# Then, on purpose, ship them:
#   python scripts/ship_denoisers.py apudae-runs/DATASET/smoothing-models/smoothing saved_models/DATASET/smoothing
set -euo pipefail
cd "$(dirname "$0")/.."
: "${APUDAE_DATA_DIR:=../shared/data}"
export APUDAE_DATA_DIR
datasets=("$@")
[ ${#datasets[@]} -gt 0 ] || datasets=(mnist cifar10)
for dataset in "${datasets[@]}"; do
  case "$dataset" in
    mnist) sigmas="0.5 1 0.25" ;;
    cifar10) sigmas="0.25 0.5 1" ;;
    imagenet) sigmas="0.25 0.5" ;;  # the 800 training images of train-sample at 224 px, 32 a batch
    *) echo "usage: $0 [mnist] [cifar10] [imagenet]" >&2; exit 2 ;;
  esac
  batch=128
  [ "$dataset" = imagenet ] && batch=32
  for sigma in $sigmas; do
    apudae-tf train "$dataset" --what smoothing-dae --sigma "$sigma" --mixed-precision --resume \
      --batch-size "$batch" --out "apudae-runs/$dataset/smoothing-models" > /dev/null
  done
done
