#!/usr/bin/env bash
# Coverage-guided fuzzing on stable Rust with AFL++ through cargo-afl.
#   scripts/fuzz.sh TARGET MINUTES     one target (signal, media, stun, sdp, http) for that long
#   scripts/fuzz.sh all SECONDS        every target briefly (what the test command runs)
# Seeds are in fuzz/corpus/TARGET; findings go to ~/.cache/inclubit-fuzz/TARGET. Exits non-zero
# when a target crashed or hung, printing the inputs that did it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
TARGETS=(signal media stun sdp http)
export CARGO_TARGET_DIR="${INCLUBIT_FUZZ_TARGET_DIR:-$HOME/.cache/inclubit-fuzz-target}"
OUT_ROOT="$HOME/.cache/inclubit-fuzz"
# Not a tuned fuzzing box: AFL++ would refuse to run on a stock kernel setting otherwise.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_QUIET=1
# Several fuzzers, or a fuzzer beside the tests, on few cores: do not pin to one.
export AFL_NO_AFFINITY=1

command -v cargo-afl >/dev/null || cargo install --locked cargo-afl@0.18.2
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release --quiet

run() {
  local target=$1 secs=$2 out="$OUT_ROOT/$1"
  rm -rf "$out" && mkdir -p "$out"
  echo "==> fuzz $target for ${secs}s"
  cargo afl fuzz -V "$secs" -i "corpus/$target" -o "$out" "$CARGO_TARGET_DIR/release/$target" \
    > "$out/log" 2>&1 || { tail -20 "$out/log"; return 1; }
  local stats="$out/default/fuzzer_stats"
  local execs crashes hangs edges
  execs=$(awk -F' : ' '/^execs_done/ {print $2}' "$stats")
  crashes=$(awk -F' : ' '/^saved_crashes/ {print $2}' "$stats")
  hangs=$(awk -F' : ' '/^saved_hangs/ {print $2}' "$stats")
  edges=$(awk -F' : ' '/^edges_found/ {print $2}' "$stats")
  echo "    $target: $execs executions, $edges edges, $crashes crashes, $hangs hangs"
  if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    ls "$out"/default/crashes "$out"/default/hangs
    return 1
  fi
}

case "${1:-}" in
  all) for t in "${TARGETS[@]}"; do run "$t" "${2:-10}"; done ;;
  signal|media|stun|sdp|http) run "$1" "$(( ${2:-10} * 60 ))" ;;
  *) echo "usage: $0 {all SECONDS|signal|media|stun|sdp|http MINUTES}" >&2; exit 2 ;;
esac
