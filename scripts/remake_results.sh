#!/usr/bin/env bash
# Re-make the committed results with the current code, into a scratch folder (never over results/), and
# compare each with the committed one cell by cell (scripts/compare_reports.py). Resumable: a step whose
# output exists is skipped, and the evaluations resume from their caches. The outcome is docs/remake.md.
#
#   APUDAE_DATA_DIR=../shared/data bash scripts/remake_results.sh [OUT [PART...]]
#
# OUT defaults to apudae-runs/remake; PARTs (default all, in this order): tables tunes pipelines export
# defensegan checks, so that a session can re-make the part it has the hours for.
#
# Hours on 2 CPU cores (the three tables ~1 h, the tuning runs ~1 h, the pipelines and the export check
# ~30 min). The adaptive reports are re-made in place by their own commands (results/*/adaptive.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-apudae-runs/remake}
shift $(( $# > 0 ? 1 : 0 ))
parts=" ${*:-tables tunes pipelines export defensegan checks} "
for part in $parts; do
  case $part in tables|tunes|pipelines|export|defensegan|checks) ;;
    *) echo "error: PART '$part' is not one of: tables tunes pipelines export defensegan checks" >&2; exit 2;;
  esac
done
want() { [[ $parts == *" $1 "* ]]; }
mkdir -p "$out/compare"
source scripts/steps.sh
compare() {  # compare NAME COMMITTED REMADE
  python scripts/compare_reports.py "$2" "$3" --json "$out/compare/$1.json" | tee "$out/compare/$1.txt"
}

if want tables; then
  step "MNIST table" "$out/mnist/table.json" apudae-tf evaluate mnist --out "$out/mnist"
  compare mnist-table results/mnist/table.json "$out/mnist/table.json"
  step "CIFAR-10 table" "$out/cifar10/table.json" \
    apudae-tf evaluate cifar10 --variants all --n 2000 --out "$out/cifar10"
  compare cifar10-table results/cifar10/table.json "$out/cifar10/table.json"
  step "CIFAR-10 adapted table" "$out/cifar10-adapted/table.json" \
    apudae-tf evaluate cifar10 --models saved_models/cifar10-adapted --variants all --n 2000 --no-adv-training \
    --out "$out/cifar10-adapted"
  compare cifar10-adapted-table results/cifar10-adapted/table.json "$out/cifar10-adapted/table.json"
fi

if want tunes; then
  all=direct,A,B,C,D,E,F,G
  step "MNIST tune" "$out/tune-mnist/tune.json" \
    apudae-tf tune mnist --variants $all --n-val 300 --seed 0 --out "$out/tune-mnist"
  compare mnist-tune results/mnist/tune.json "$out/tune-mnist/tune.json"
  step "MNIST (paper recipe) tune" "$out/tune-mnist-paper/tune.json" \
    apudae-tf tune mnist --models saved_models/mnist-paper --variants $all --n-val 300 --seed 0 \
    --out "$out/tune-mnist-paper"
  compare mnist-paper-tune results/mnist-paper/tune.json "$out/tune-mnist-paper/tune.json"
  step "CIFAR-10 tune" "$out/tune-cifar10/tune.json" \
    apudae-tf tune cifar10 --variants $all --n-val 500 --seed 0 --out "$out/tune-cifar10"
  compare cifar10-tune results/cifar10/tune.json "$out/tune-cifar10/tune.json"
fi

if want pipelines; then
  step "MNIST pipeline" "$out/mnist/pipeline_pgd.json" \
    bash scripts/mnist_pipeline.sh 500 saved_models/mnist "$out/mnist/pipeline_pgd.json"
  step "MNIST (paper recipe) pipeline" "$out/mnist-paper/pipeline_pgd.json" \
    bash scripts/mnist_pipeline.sh 500 saved_models/mnist-paper "$out/mnist-paper/pipeline_pgd.json"
  python - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
for name in ("mnist", "mnist-paper"):
    old = json.load(open(f"results/{name}/pipeline_pgd.json"))["rows"]
    new = json.load(open(f"{out}/{name}/pipeline_pgd.json"))["rows"]
    diff = {f"{v} {c}": [old[v][c], new[v][c]] for v in old for c in old[v] if old[v][c] != new.get(v, {}).get(c)}
    print(f"{name} pipeline: {sum(len(r) for r in old.values())} cells, differ: {diff or 'none'}")
EOF
fi

if want export; then
  step "export check" "$out/mnist-paper/export.json" \
    python scripts/export_check.py --n 10000 --models saved_models/mnist-paper --out "$out/mnist-paper/export.json"
  python - "$out" <<'EOF2'
import json, sys
old = json.load(open("results/mnist-paper/export.json"))["variants"]
new = json.load(open(f"{sys.argv[1]}/mnist-paper/export.json"))["variants"]
diff = {f"{v} {k}": [old[v][k], new[v].get(k)] for v in old for k in old[v] if old[v][k] != new[v].get(k)}
print(f"mnist-paper export: differ: {diff or 'none'}")
EOF2
fi

# -- the rest of results/: the Defense-GAN table and tune, the validation sweeps, the independent checks --
if want defensegan; then
  step "MNIST Defense-GAN table" "$out/mnist-defensegan/table.json" \
    apudae-tf evaluate mnist --n 1000 --cw-l2-n 0 --defense-gan --out "$out/mnist-defensegan"
  compare mnist-defensegan-table results/mnist/defensegan/table.json "$out/mnist-defensegan/table.json"
  step "MNIST Defense-GAN tune" "$out/tune-gan/tune_gan.json" \
    apudae-tf tune mnist --defense-gan --n-val 200 --seed 0 --out "$out/tune-gan"
  compare mnist-tune-gan results/mnist/tune_gan.json "$out/tune-gan/tune_gan.json"
  step "MNIST validation attacks" "$out/mnist/val_attacks.json" \
    python scripts/mnist_val_attacks.py 500 --sweep-d --out "$out/mnist/val_attacks.json"
  compare mnist-val-attacks results/mnist/val_attacks.json "$out/mnist/val_attacks.json"
fi

if want checks; then
  if python -c "import foolbox" 2>/dev/null; then  # the independent checks use another library's attacks
    for name in mnist mnist-paper; do
      step "$name foolbox PGD" "$out/$name/independent_pgd.json" \
        bash scripts/mnist_independent_pgd.sh 500 "saved_models/$name" "$out/$name/independent_pgd.json"
      compare "$name-independent-pgd" "results/$name/independent_pgd.json" "$out/$name/independent_pgd.json"
    done
    step "MNIST foolbox BPDA+EOT" "$out/mnist/independent_bpda_eot.json" \
      bash scripts/mnist_independent_bpda_eot.sh D 500 1 "$out/mnist/independent_bpda_eot.json"
    compare mnist-independent-bpda-eot results/mnist/independent_bpda_eot.json "$out/mnist/independent_bpda_eot.json"
  else
    echo "== the foolbox checks: skipped (pip install foolbox)" >&2
  fi
  if python -c "import art" 2>/dev/null; then
    step "ART APGD cross-check" "$out/mnist/cross_check_apgd.json" \
      python scripts/cross_check_apgd.py --out "$out/mnist/cross_check_apgd.json"
    compare mnist-cross-check-apgd results/mnist/cross_check_apgd.json "$out/mnist/cross_check_apgd.json"
  else
    echo "== the ART cross-check: skipped (pip install adversarial-robustness-toolbox==1.20.1)" >&2
  fi
fi
