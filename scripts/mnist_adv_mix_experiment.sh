#!/usr/bin/env bash
# Does a DAE that also learned FGSM examples close the FGSM gap of the iterative variants?
# Trains the adv-mix DAE beside the shipped classifier in DIR (default: a temporary folder),
# keeps the shipped purification settings, and runs the validation diagnostic on it.
#   bash scripts/mnist_adv_mix_experiment.sh [DIR] -> results/mnist/val_attacks_adv_mix.json
# Validation split only; compare with results/mnist/val_attacks.json (the shipped adv-dae DAE).
set -euo pipefail
dir="${1:-$(mktemp -d)}"
cp saved_models/mnist/classifier.keras saved_models/mnist/purify_settings.json "$dir"/
[ -f "$dir/dae.keras" ] || apudae-tf train mnist --what dae --recipe adv-mix --epochs 4 --out "$dir"
python scripts/mnist_val_attacks.py 500 --sweep-d --models "$dir" --out results/mnist/val_attacks_adv_mix.json
