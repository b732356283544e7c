#!/usr/bin/env bash
# Purify PGD examples made by foolbox (scripts/independent_pgd.py; `pip install foolbox` first) with
# every variant through `apudae-tf purify | apudae-tf classify`.
# Usage: scripts/mnist_independent_pgd.sh [N] [MODELS] [OUT]
#   defaults: 500 saved_models/mnist results/mnist/independent_pgd.json
set -euo pipefail
n=${1:-500}
models=${2:-saved_models/mnist}
out=${3:-results/mnist/independent_pgd.json}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python scripts/independent_pgd.py --n "$n" --models "$models" -o "$tmp/adv.npz" > "$tmp/attack.json"
acc() { apudae-tf classify --json --models "$models" | python -c "import json,sys; print(json.load(sys.stdin)['accuracy'])"; }
{
  printf '{"command": "scripts/mnist_independent_pgd.sh %s %s %s", "n": %s, "split": "test", "models": "%s",\n' \
    "$n" "$models" "$out" "$n" "$models"
  printf ' "attack": "foolbox 3 LinfPGD: eps 0.3, 40 steps of 0.01, random start; white box on the classifier, blind to the defence",\n'
  printf ' "pgd_accuracy": {"none": %s' "$(acc < "$tmp/adv.npz")"
  for v in direct A B C D E F G; do
    printf ', "%s": %s' "$v" "$(apudae-tf purify --variant "$v" --models "$models" -i "$tmp/adv.npz" | acc)"
  done
  printf '}}\n'
} > "$tmp/out.json"
python -c "import json,sys; from apudae_tf.store import write_json; write_json(sys.argv[2], json.load(open(sys.argv[1])))" \
  "$tmp/out.json" "$out"
cat "$out"
