#!/usr/bin/env bash
# Fuzzing: every target in fuzz/ for a bounded, repeatable run (fixed seed, fixed
# run count), seeded from the sample payloads, the docs and the example config.
# A crash fails CI; libFuzzer prints the input and cargo-fuzz saves it under
# fuzz/artifacts/<target>/ (reproduce with `cargo fuzz run <target> <file>`).
#
#   bash ci/fuzz.sh            # every target, FUZZ_RUNS runs each (default 20000)
#   FUZZ_RUNS=1000000 bash ci/fuzz.sh markdown
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
RUNS="${FUZZ_RUNS:-20000}"
TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/microclaw-fuzz-target}"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "cargo-fuzz: installing $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# cargo-fuzz builds with the sanitizer and coverage flags of a nightly compiler;
# this machine has only the stable one, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1

cargo fmt --manifest-path fuzz/Cargo.toml --check

corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT

# inbound: the first byte picks the channel, in the order of fuzz_targets/channels.rs.
mkdir -p "$corpus/inbound" "$corpus/signatures" "$corpus/markdown" "$corpus/config"
i=0
for sample in standard_webhooks.json slack.json whatsapp.json telegram.json \
    twilio_sms.form discord.json imessage_bluebubbles.json teams.json; do
    { printf "\\$(printf '%03o' "$i")"; cat "tests/fixtures/$sample"; } > "$corpus/inbound/$sample"
    printf "\\$(printf '%03o' "$i")v1,forged\n1767225661\n" > "$corpus/signatures/$sample"
    i=$((i + 1))
done
# The markdown target takes inputs up to 8 KiB.
for doc in README.md BENCHMARKS.md RELIABILITY.md docs/*.md; do
    { printf '\x40'; head -c 6000 "$doc"; } > "$corpus/markdown/$(basename "$doc")"
done
cp microclaw.example.toml "$corpus/config/"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(inbound signatures markdown config)
fi
cd fuzz
for target in "${targets[@]}"; do
    echo "fuzz: $target ($RUNS runs)"
    log="$corpus/$target.log"
    status=0
    cargo fuzz run -O --target-dir "$TARGET_DIR" "$target" "$corpus/$target" -- \
        -seed=1 -runs="$RUNS" -max_len=16384 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -80 "$log"
        exit "$status"
    fi
done
