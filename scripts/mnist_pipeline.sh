#!/usr/bin/env bash
# The issue-3 acceptance pipeline on MNIST test images, every variant, through real pipes:
#   apudae-tf attack --dataset mnist --method pgd --n N | apudae-tf purify --variant V | apudae-tf classify
# and the same for the clean images (--method none). Purification settings are those chosen on
# the validation split (`apudae-tf tune mnist`).
# Usage: scripts/mnist_pipeline.sh [N] [MODELS] [OUT]
#   defaults: 500 saved_models/mnist results/mnist/pipeline_pgd.json
set -euo pipefail
n=${1:-500}
models=${2:-saved_models/mnist}
out=${3:-results/mnist/pipeline_pgd.json}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
apudae-tf attack --dataset mnist --method pgd --n "$n" --models "$models" -o "$tmp/pgd.npz"
apudae-tf attack --dataset mnist --method none --n "$n" --models "$models" -o "$tmp/clean.npz"
acc() { apudae-tf classify --json --models "$models" | python -c "import json,sys; print(json.load(sys.stdin)['accuracy'])"; }
{
  printf '{"command": "scripts/mnist_pipeline.sh %s %s %s", "n": %s, "split": "test", "models": "%s",\n' \
    "$n" "$models" "$out" "$n" "$models"
  printf ' "attack": "pgd: eps 0.3, 40 steps of 0.01, random start; white box on the classifier, blind to the defence",\n'
  printf ' "rows": {"none": {"clean": %s, "pgd": %s}' "$(acc < "$tmp/clean.npz")" "$(acc < "$tmp/pgd.npz")"
  for v in direct A B C D E F G; do
    printf ',\n  "%s": {"clean": %s, "pgd": %s}' "$v" \
      "$(apudae-tf purify --variant "$v" --models "$models" -i "$tmp/clean.npz" | acc)" \
      "$(apudae-tf purify --variant "$v" --models "$models" -i "$tmp/pgd.npz" | acc)"
  done
  printf '},\n "purify_settings": %s}\n' "$(cat "$models/purify_settings.json")"
} > "$tmp/out.json"
mkdir -p "$(dirname "$out")"
python -c "import json,sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], 'w'), indent=2)" "$tmp/out.json" "$out"
python - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"MNIST test, n={d['n']}; {d['attack']}")
print("| defence | clean | PGD |\n|---|---:|---:|")
for k, v in d["rows"].items():
    print(f"| {k} | {v['clean']:.3f} | {v['pgd']:.3f} |")
PY
