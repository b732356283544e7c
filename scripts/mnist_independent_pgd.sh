#!/usr/bin/env bash
# Purify PGD examples made by foolbox (scripts/independent_pgd.py; `pip install foolbox` first) with
# every variant through `apudae-tf purify | apudae-tf classify`. Writes results/mnist/independent_pgd.json.
# Usage: scripts/mnist_independent_pgd.sh [N]
set -euo pipefail
n=${1:-500}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python scripts/independent_pgd.py --n "$n" -o "$tmp/adv.npz" > "$tmp/attack.json"
acc() { apudae-tf classify --json | python -c "import json,sys; print(json.load(sys.stdin)['accuracy'])"; }
{
  printf '{"command": "scripts/mnist_independent_pgd.sh %s", "n": %s, "split": "test",\n' "$n" "$n"
  printf ' "attack": "foolbox 3 LinfPGD: eps 0.3, 40 steps of 0.01, random start; white box on the classifier, blind to the defence",\n'
  printf ' "pgd_accuracy": {"none": %s' "$(acc < "$tmp/adv.npz")"
  for v in direct A B C D E F G; do
    printf ', "%s": %s' "$v" "$(apudae-tf purify --variant "$v" -i "$tmp/adv.npz" | acc)"
  done
  printf '}}\n'
} > "$tmp/out.json"
python -c "import json,sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], 'w'), indent=2)" \
  "$tmp/out.json" results/mnist/independent_pgd.json
cat results/mnist/independent_pgd.json
