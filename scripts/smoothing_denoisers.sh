#!/usr/bin/env bash
# The denoisers of randomized smoothing shipped in saved_models/{mnist,cifar10}/smoothing/ (docs/certify.md §2):
# for each sigma, an MSE denoiser, then its stability fine-tune in front of the shipped classifier (frozen),
# with the profile's epochs, in bfloat16 on a CPU (float16 on a GPU; saved in float32). Each command resumes
# an interrupted stage and keeps finished ones, so the script can be re-run after an interruption.
# Cost on 2 CPU cores: ~40 min a sigma for MNIST, ~70 min for CIFAR-10.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${APUDAE_DATA_DIR:=../shared/data}"
export APUDAE_DATA_DIR
for job in "mnist 0.5" "cifar10 0.25" "mnist 1" "cifar10 0.5" "mnist 0.25" "cifar10 1"; do
  set -- $job
  apudae-tf train "$1" --what smoothing-dae --sigma "$2" --mixed-precision --resume \
    --out "apudae-runs/$1/smoothing-models" > /dev/null
done
# then, on purpose: cp apudae-runs/DATASET/smoothing-models/smoothing/{*.keras,denoisers.json} saved_models/DATASET/smoothing/
