#!/usr/bin/env bash
# Issue 5's honesty check: BPDA + EOT made by foolbox (scripts/independent_bpda_eot.py; `pip install
# foolbox` first), scored through `apudae-tf purify --variant V | apudae-tf classify`.
# Usage: scripts/mnist_independent_bpda_eot.sh [VARIANT] [N] [EOT] [OUT]
#   defaults: F 200 8 results/mnist/independent_bpda_eot.json
set -euo pipefail
variant=${1:-F}
n=${2:-200}
eot=${3:-8}
out=${4:-results/mnist/independent_bpda_eot.json}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
python scripts/independent_bpda_eot.py --variant "$variant" --n "$n" --eot "$eot" -o "$tmp/adv.npz" > /dev/null
acc=$(apudae-tf purify --variant "$variant" -i "$tmp/adv.npz" | apudae-tf classify --json |
      python -c "import json,sys; print(json.load(sys.stdin)['accuracy'])")
python - "$out" "$variant" "$n" "$eot" "$acc" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
from apudae_tf.store import write_json
out, variant, n, eot, acc, secs = sys.argv[1:]
write_json(out, {"command": f"scripts/mnist_independent_bpda_eot.sh {variant} {n} {eot} {out}", "split": "test",
                 "n": int(n), "variant": variant, "accuracy": float(acc), "seconds": int(secs),
                 "attack": f"foolbox 3 LinfPGD (eps 0.3, 40 steps of 0.01, random start) on its "
                           f"ExpectationOverTransformationWrapper ({eot} draws), BPDA (identity backward) "
                           f"through the defence; scored by apudae-tf purify | classify", "saw_defence": True})
print(open(out).read())
PY
