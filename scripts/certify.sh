#!/usr/bin/env bash
# The committed certification results (docs/certify.md): results/DATASET/certify/certify.{json,md,png} and the L2
# adaptive report beside them (adaptive_l2.{json,md}). Every command resumes from what certify.json (or the
# report's cache) already holds, so the script can be re-run after an interruption.
#   scripts/certify.sh mnist cifar10 imagenet
# DENOISERS: the model folder whose smoothing/ holds the denoisers (default: the shipped models).
# Cost on 2 CPU cores at N = 10,000 with the denoisers in bfloat16: ~10 s an image and row for MNIST, ~15 s for
# CIFAR-10 (certify.json records each image's seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${APUDAE_DATA_DIR:=../shared/data}"
export APUDAE_DATA_DIR
datasets=("$@")
[ ${#datasets[@]} -gt 0 ] || datasets=(mnist cifar10)
for dataset in "${datasets[@]}"; do
  from=(--denoisers-from "${DENOISERS:-saved_models/$dataset}")
  out=results/$dataset/certify
  certify=(apudae-tf certify "$dataset" --every 20 --N 10000 --alpha 0.001 --mixed-precision --out "$out" "${from[@]}")
  case "$dataset" in
    mnist)
      # the rows that meet the targets: 500 images; the comparison rows: the first 100 of the same images
      "${certify[@]}" --sigma 0.5,1 --denoisers stability --n 500
      "${certify[@]}" --sigma 0.25 --denoisers stability --n 100
      "${certify[@]}" --sigma 0.25,0.5,1 --denoisers none,mse --n 100
      # the experiment: the APuDAE loop (D, 20 steps) after the MSE denoiser inside the smoothing, beside the
      # denoisers alone at the same N = 1,000 (the loop costs ~60 DAE passes a draw)
      "${certify[@]}" --sigma 0.5 --denoisers mse,stability,purify --n 100 --N 1000
      ;;
    cifar10)
      "${certify[@]}" --sigma 0.25,0.5,1 --denoisers stability --n 500
      "${certify[@]}" --sigma 0.25,0.5,1 --denoisers none,mse --n 100
      # the classifier fine-tuned on purified images (cifar10-adapted), behind the same MSE denoisers
      "${certify[@]}" --sigma 0.25,0.5 --denoisers none,mse --n 100 --models saved_models/cifar10-adapted
      "${certify[@]}" --sigma 0.25 --denoisers mse,stability,purify --n 100 --N 1000
      ;;
    imagenet)
      # 100 of the 1300 validation images (every 13th), N = 1,000: a draw through the 224-px U-Net and
      # EfficientNet-Lite0 costs ~6 GFLOP on 2 CPU cores (the report says which N: the largest radius is 2.5 σ)
      "${certify[@]}" --sigma 0.25,0.5 --denoisers stability,none --n 100 --every 13 --N 1000
      "${certify[@]}" --sigma 0.25,0.5 --denoisers mse --n 50 --every 13 --N 1000
      continue  # no L2 adaptive report for ImageNet (each attack through the smoothing costs minutes an image)
      ;;
    *) echo "usage: $0 [mnist] [cifar10] [imagenet]" >&2; exit 2 ;;
  esac
  apudae-tf evaluate "$dataset" --adaptive --norm l2 --n 100 --every 20 --mixed-precision "${from[@]}" \
    --certify-report "$out/certify.json" --out "$out"
done
