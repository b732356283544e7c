#!/usr/bin/env bash
# A dataset this project never used, run as a new user would (issue 17): scikit-learn's 8x8 handwritten
# digits as npz:PATH. The only flags are the data's threat model (at train) and the epochs a dataset of
# 1437 training images needs; every later command reads the recorded profile and finds the models itself.
#
#   pip install scikit-learn && bash scripts/digits_user_flow.sh [WORKDIR]    -> results/digits/
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work" && cd "$work"
out="$repo/results/digits"
mkdir -p "$out"
python "$repo/scripts/make_digits_npz.py" digits.npz
apudae-tf train npz:digits.npz --recipe adv-dae --eps 0.1 --steps 20 --step 0.01 --sigma-max 0.2 --epochs 40 \
  > "$out/train.json"
apudae-tf train npz:digits.npz --what adv-classifier --epochs 20 > "$out/train_adv.json"
apudae-tf tune npz:digits.npz
chosen=$(python -c "import json; from apudae_tf import table; \
print(table.chosen_variant(json.load(open('apudae-runs/digits/tuned/purify_settings.json'))))")
echo "chosen on validation: $chosen" >&2
apudae-tf attack --dataset npz:digits.npz --method pgd | apudae-tf classify --json > "$out/pipeline_undefended.json"
apudae-tf attack --dataset npz:digits.npz --method pgd | apudae-tf purify --variant "$chosen" \
  | apudae-tf classify --json > "$out/pipeline_purified.json"
apudae-tf evaluate npz:digits.npz
apudae-tf evaluate npz:digits.npz --adaptive
cp apudae-runs/digits/tuned/tune.json apudae-runs/digits/tuned/purify_settings.json apudae-runs/digits/tuned/profile.json \
  "$out/"
cp apudae-runs/digits/evaluate/*.json apudae-runs/digits/evaluate/*.md apudae-runs/digits/evaluate/*.png "$out/"
echo "wrote $out" >&2
