#!/usr/bin/env bash
# CIFAR-10, every step that made saved_models/cifar10{,-adapted}/ and results/cifar10{,-adapted}/
# (docs/results-cifar10.md, docs/evaluation.md, docs/certify.md). Resumable: a step whose output exists is
# skipped; trainings resume from their per-epoch checkpoints and reports from their caches. Models are trained
# into apudae-runs/cifar10/ and shipped only by the explicit copies below, never over files already there.
#
#   APUDAE_DATA_DIR=../shared/data bash scripts/cifar10.sh
#
# Hours on 2 CPU cores: ResNet-20 ~1 h, the DAE 11 min, N-FGSM adversarial training ~45 min, the adapted
# classifier ~30 min, the tables ~1 h, the adaptive reports (1000 images) ~12 h, the smoothing denoisers ~5 h,
# the certificates (scripts/certify.sh) ~9 h.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${APUDAE_DATA_DIR:=../shared/data}"
export APUDAE_DATA_DIR
source scripts/steps.sh
runs=apudae-runs/cifar10
ship=saved_models/cifar10

ship_files() {  # ship FROM TO FILE...: copy files into a shipped folder, never over a different file
  local from=$1 to=$2
  shift 2
  for f in "$@"; do
    if [ ! -e "$to/$f" ]; then mkdir -p "$(dirname "$to/$f")"; cp "$from/$f" "$to/$f.tmp" && mv "$to/$f.tmp" "$to/$f"; fi
    cmp -s "$from/$f" "$to/$f" || echo "note: $to/$f differs from $from/$f (kept; re-trained models differ run to run)" >&2
  done
}

step "ResNet-20" "$runs/models/classifier.keras" apudae-tf train cifar10 --what classifier --out "$runs/models" --resume
step "DAE" "$runs/models/dae.keras" apudae-tf train cifar10 --what dae --out "$runs/models" --resume
step "adversarial training (N-FGSM)" "$runs/models/adv_classifier.keras" \
  apudae-tf train cifar10 --what adv-classifier --out "$runs/models" --resume
step "tune" "$runs/models/purify_settings.json" \
  apudae-tf tune cifar10 --models "$runs/models" --seed 0 --out "$runs/models" --report "$runs/tune.json"
ship_files "$runs/models" "$ship" classifier.keras classifier.json dae.keras dae_stats.json adv_classifier.keras \
  adv_classifier.json purify_settings.json
step "adapted classifier" "$runs/adapted/classifier.keras" \
  apudae-tf train cifar10 --what adapted-classifier --base "$ship" --adapt-to "A,C,B:n=20:alpha=2/255,C:n=20:alpha=4/255" \
  --out "$runs/adapted" --resume
step "tune (adapted)" "$runs/adapted/purify_settings.json" \
  apudae-tf tune cifar10 --models "$runs/adapted" --out "$runs/adapted" --report "$runs/tune-adapted.json"
ship_files "$runs/adapted" saved_models/cifar10-adapted classifier.keras classifier.json dae.keras dae_stats.json \
  purify_settings.json

# the reports
step "Table 3" results/cifar10/table.json apudae-tf evaluate cifar10 --variants all --n 2000 --out results/cifar10
step "Table 3 (adapted)" results/cifar10-adapted/table.json \
  apudae-tf evaluate cifar10 --models saved_models/cifar10-adapted --variants all --n 2000 --no-adv-training \
  --out results/cifar10-adapted
step "adaptive report" results/cifar10/adaptive.json \
  apudae-tf evaluate cifar10 --adaptive --n 1000 --models "$ship" --out results/cifar10
step "adaptive report (adapted)" results/cifar10-adapted/adaptive.json \
  apudae-tf evaluate cifar10 --adaptive --n 1000 --models saved_models/cifar10-adapted --no-adv-training \
  --out results/cifar10-adapted

# the certified defence: the smoothing denoisers, shipped, then the certificates and the L2 adaptive report
bash scripts/smoothing_denoisers.sh cifar10
ship_files "$runs/smoothing-models" "$ship" smoothing/denoisers.json \
  $(cd "$runs/smoothing-models" && ls smoothing/*.keras)
bash scripts/certify.sh cifar10
