# Sourced by the resumable scripts (imagenet.sh, remake_results.sh): one step of a long job.
# step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists, saying which on stderr.
step() {
  local name=$1 output=$2
  shift 2
  if [ -e "$output" ]; then echo "== $name: $output exists, skipped" >&2; return; fi
  echo "== $name: $*" >&2
  "$@"
}
