#!/usr/bin/env bash
# Fills corpus/<target>/ with starting inputs: the repository's fixtures (boot logs, images,
# scenario and rig files) and a few hand-made protocol messages. Run before fuzzing (run.sh does);
# corpus/ is git-ignored, and libFuzzer adds what it finds next to these files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
corpus="$here/corpus"

copy() { # target, files...
    local t=$1
    shift
    mkdir -p "$corpus/$t"
    local f
    for f in "$@"; do
        [ -f "$f" ] && cp "$f" "$corpus/$t/seed-$(basename "$f")"
    done
}

put() { # target, name, printf format (the bytes)
    mkdir -p "$corpus/$1"
    # shellcheck disable=SC2059
    printf "$3" >"$corpus/$1/seed-$2"
}

# shellcheck disable=SC2059
lp() { # bias, printf formats: each as a length byte (length - bias) and its bytes
    local bias=$1 s n
    shift
    for s in "$@"; do
        n=$(printf "$s" | wc -c)
        printf '\\x%02x%s' $((n - bias)) "$s"
    done
}

# bootlog: the first two bytes seed the chunk sizes; a log's first two bytes serve as well.
copy bootlog "$root"/fixtures/corpus/*.log "$root"/fixtures/seed/*.log
# A line longer than the parser's 4096-byte line limit, between two boots.
banner=' ets Jan  8 2013,rst cause:2, boot mode:(3,6)\r\n'
{
    printf '\x03\x00%b' "$banner"
    head -c 6000 /dev/zero | tr '\0' '\376'
    printf '\r\nets Jan  8 2013,rst cause:4, boot mode:(3,6)\r\nwdt reset\r\n'
} >"$corpus/bootlog/seed-long-line"
copy image "$root"/fixtures/images/*.bin
copy scenario "$root"/scenarios/*.toml
copy rig "$root"/scenarios/rigs/*.toml

# SLIP frames: a knob byte, then the wire. SYNC request, its ROM response, FLASH_BEGIN.
sync='\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20'$(printf '\\x55%.0s' $(seq 32))'\xc0'
put flash_slip sync "\x05${sync}"
put flash_slip response '\x05\xc0\x01\x08\x02\x00\x07\x07\x12\x20\x00\x00\xc0'
put flash_slip escapes '\x85\xc0\x00\x03\x04\x00\x00\x00\x00\x00\xdb\xdc\xdb\xdd\xc0\xc0'
flash_begin='\xc0\x00\x02\x10\x00\x00\x00\x00\x00\x00\x10\x00\x00\x01\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\xc0'
# sim_loader: a knob byte (board, start, baud), then length-prefixed reads.
put sim_loader rom-sync "\x00$(lp 1 "$sync")"
put sim_loader rom-flash-begin "\x02$(lp 1 "$flash_begin")"
put sim_loader stub-flash-begin "\x04$(lp 1 "$flash_begin")"
put sim_loader legacy-flash-begin "\x06$(lp 1 "$flash_begin")"
md5=0123456789abcdef0123456789abcdef
# ota_invite: length-prefixed datagrams.
put ota_invite invitation "$(lp 0 "0 41234 345678 $md5\n")"
put ota_invite auth "$(lp 0 "0 41234 345678 $md5\n" "200 $md5 $md5\n")"
put ota_invite replies "$(lp 0 OK "AUTH $md5" "ERR: ERROR[4]: Not Enough Space\n")"
put ota_invite transfer "$(lp 0 1460 2920OK "ERROR[10]: Magic byte is wrong\n")"
# multipart: a knob byte (boundary 1 = ----HilFormBoundaryAbC123), then the body.
b=----HilFormBoundaryAbC123
put multipart upload "\x01--$b\r\nContent-Disposition: form-data; name=\"firmware\"; filename=\"fw.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\xe9\x01\x02\x03\r\n--$b--\r\n"
put multipart two-parts "\x31preamble\r\n--$b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--$b  \r\nContent-Disposition: form-data; name=\"b\"; filename=\"b\"\r\n\r\n\r\n--$b--epilogue"
mkdir -p "$corpus/multipart_roundtrip"
echo "seeded $(find "$corpus" -type f -name 'seed-*' | wc -l) files into $corpus"
