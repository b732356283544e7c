#!/usr/bin/env bash
# MNIST, every step that made saved_models/mnist{,-paper}/ and results/mnist{,-paper}/ (docs/results-mnist.md,
# docs/evaluation.md, docs/certify.md). Resumable: a step whose output exists is skipped; trainings resume from
# their per-epoch checkpoints and reports from their caches. Models are trained into apudae-runs/mnist/ and
# shipped only by the explicit copies below, never over files already there.
#
#   bash scripts/mnist.sh            # MNIST is inside the package: no data folder, no network
#
# Hours on 2 CPU cores: the models ~1.5 h, the table ~20 min, the adaptive report (1000 images) ~10 h, the
# Defense-GAN report ~1 h, the smoothing denoisers ~2.5 h, the certificates (scripts/certify.sh) ~6 h.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/steps.sh
runs=apudae-runs/mnist
ship=saved_models/mnist

ship_files() {  # ship FROM TO FILE...: copy files into a shipped folder, never over a different file
  local from=$1 to=$2
  shift 2
  for f in "$@"; do
    if [ ! -e "$to/$f" ]; then mkdir -p "$(dirname "$to/$f")"; cp "$from/$f" "$to/$f.tmp" && mv "$to/$f.tmp" "$to/$f"; fi
    cmp -s "$from/$f" "$to/$f" || echo "note: $to/$f differs from $from/$f (kept; re-trained models differ run to run)" >&2
  done
}

# the models: the CNN, the adv-dae DAE (PGD examples of that CNN), the adversarial-training baseline, Defense-GAN
step "classifier" "$runs/models/classifier.keras" apudae-tf train mnist --what classifier --epochs 6 --out "$runs/models"
step "DAE (adv-dae)" "$runs/models/dae.keras" \
  apudae-tf train mnist --what dae --recipe adv-dae --epochs 4 --out "$runs/models" --resume
step "adversarial training" "$runs/models/adv_classifier.keras" \
  apudae-tf train mnist --what adv-classifier --epochs 3 --out "$runs/models" --resume
step "Defense-GAN generator" "$runs/models/generator.keras" \
  apudae-tf train mnist --what gan --out "$runs/models" --resume
step "tune" "$runs/models/purify_settings.json" \
  apudae-tf tune mnist --models "$runs/models" --n-val 300 --seed 0 --out "$runs/models" --report "$runs/tune.json"
step "tune Defense-GAN" "$runs/models/tune_gan.json" \
  apudae-tf tune mnist --models "$runs/models" --defense-gan --n-val 200 --seed 0 --out "$runs/models"
ship_files "$runs/models" "$ship" classifier.keras dae.keras dae_stats.json adv_classifier.keras adv_classifier.json \
  generator.keras generator.json purify_settings.json
# the paper's recipe beside it: the same classifier, a DAE on Gaussian noise only
step "DAE (paper recipe)" "$runs/paper/dae.keras" \
  bash -c "mkdir -p $runs/paper && cp $ship/classifier.keras $runs/paper/ && apudae-tf train mnist --what dae --epochs 5 --out $runs/paper --force"
step "tune (paper recipe)" "$runs/paper/purify_settings.json" \
  apudae-tf tune mnist --models "$runs/paper" --n-val 300 --seed 0 --out "$runs/paper" --report "$runs/tune-paper.json"
ship_files "$runs/paper" saved_models/mnist-paper classifier.keras dae.keras dae_stats.json purify_settings.json

# the reports
step "facts" results/mnist/info.json bash -c "apudae-tf info mnist --json > results/mnist/info.json"
step "Table 2" results/mnist/table.json apudae-tf evaluate mnist --out results/mnist
step "adaptive report" results/mnist/adaptive.json apudae-tf evaluate mnist --adaptive --n 1000 --out results/mnist
step "Defense-GAN table" results/mnist/defensegan/table.json \
  apudae-tf evaluate mnist --n 1000 --cw-l2-n 0 --defense-gan --out results/mnist/defensegan
step "Defense-GAN adaptive report" results/mnist/defensegan/adaptive.json \
  apudae-tf evaluate mnist --adaptive --n 200 --defense-gan --no-adv-training --out results/mnist/defensegan

# the certified defence: the smoothing denoisers, shipped, then the certificates and the L2 adaptive report
bash scripts/smoothing_denoisers.sh mnist
ship_files "$runs/smoothing-models" "$ship" smoothing/denoisers.json \
  $(cd "$runs/smoothing-models" && ls smoothing/*.keras)
bash scripts/certify.sh mnist
