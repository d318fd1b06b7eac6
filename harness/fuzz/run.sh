#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for FUZZ_SECONDS each (default 30) and prints a table
# of executions and crashes. Installs cargo-fuzz if it is missing; builds with the stable
# toolchain (RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo fuzz needs).
#
#   harness/fuzz/run.sh                       # all targets, 30 s each
#   FUZZ_SECONDS=300 harness/fuzz/run.sh bootlog multipart
#
# Exit status: 0 no crash, 1 a target crashed (its input is under artifacts/<target>/),
# 3 cargo-fuzz could not be installed or the targets could not be built.
# Logs: artifacts/logs/<target>.log. Corpora: corpus/<target>/ (seeded by seed.sh, git-ignored).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
seconds=${FUZZ_SECONDS:-30}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install --locked cargo-fuzz || {
        echo "cargo-fuzz could not be installed" >&2
        exit 3
    }
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building ${#targets[@]} targets"
start=$(date +%s)
cargo fuzz build || {
    echo "the fuzz targets do not build" >&2
    exit 3
}
echo "built in $(($(date +%s) - start)) s"

./seed.sh
mkdir -p artifacts/logs
# Longer inputs where the interesting cases are long: lines past the boot-log parser's 4096-byte
# line limit, part headers near the multipart parser's 8 KiB limit.
extra_opts() {
    case $1 in
        bootlog | multipart) echo "-max_len=20000 -len_control=0" ;;
        sim_loader) echo "-max_len=8192" ;;
    esac
}

crashed=()
rows=()
for t in "${targets[@]}"; do
    echo "==> $t for ${seconds} s"
    log=artifacts/logs/$t.log
    # -timeout: one input taking longer is a hang; -rss_limit_mb: more memory is a leak or an
    # unbounded allocation. -print_final_stats gives the execution count.
    # shellcheck disable=SC2046
    cargo fuzz run "$t" -- -max_total_time="$seconds" -print_final_stats=1 -timeout=20 \
        -rss_limit_mb=2048 $(extra_opts "$t") >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        crashed+=("$t")
        grep -m1 -E "panicked at|ERROR: libFuzzer|SUMMARY|==ERROR" "$log" | sed 's/^/    /'
        rows+=("$(printf '%-22s %12s %9s  CRASH %s' "$t" "${execs:-?}" "${rate:-?}" "${artifact:-(see $log)}")")
    else
        rows+=("$(printf '%-22s %12s %9s  ok' "$t" "${execs:-?}" "${rate:-?}")")
    fi
done

echo
printf '%-22s %12s %9s  %s\n' target executions exec/s result
printf '%s\n' "${rows[@]}"
if [ ${#crashed[@]} -gt 0 ]; then
    echo "crashed: ${crashed[*]} (reproduce: cargo fuzz run <target> <artifact>)"
    exit 1
fi
