#!/usr/bin/env bash
# bench/latency.sh - from the last instance of a study received to its SR
# delivered, on the CPU, with the breakdown of the steps.
#
#   make bench-latency        (or: CTG_BUILD=build bash bench/latency.sh)
#
# A 3 mm chest-abdomen-pelvis phantom (512 x 512, about 230 slices) is sent
# by storescu to ctglipd running the shipped default model, with DCMTK's
# storescp as the export destination.  Latency = the moment storescp has
# the SR, minus the study's last arrival (from the index), minus the stable
# wait (study_stable_seconds), which is configuration, not work.  The
# breakdown comes from the job's log line (load, resample, model, measure,
# score, SEG, SR) and the exporter's (send).  The send step is set against
# the named peer DCMTK storescu sending the same two files to the same
# storescp, in the same run.  BENCH_RUNS (default 3) studies; the median is
# printed.
set -euo pipefail
B=${CTG_BUILD:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "$B" && pwd)
runs=${BENCH_RUNS:-3}
matrix=${BENCH_MATRIX:-512}
W=$(mktemp -d "$B/bench-latency.XXXXXX")
trap 'kill ${DPID:-} ${SPID:-} 2>/dev/null || true; [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$W"' EXIT
free_port() {
    local p
    for p in $(seq $((21000 + ($$ * 13) % 20000)) 65000); do
        ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
    done
}
PORT=$(free_port)
SPORT=$((PORT + 1))
STABLE=2
mkdir -p "$W/recv"
storescp -aet PACS -od "$W/recv" +xa "$SPORT" > "$W/storescp.log" 2>&1 &
SPID=$!
cat > "$W/ctglipd.conf" <<CONF
[dicom]
ae_title = CTGLIP
port = $PORT
[store]
spool = $W/spool
index = $W/index.db
free_space_reserve_mb = 64
[queue]
study_stable_seconds = $STABLE
workers = 1
[model]
path = $ROOT/models/default.ctglip
findings = $ROOT/etc/findings.conf
vocab = $ROOT/models/glove100.vocab
reports = $W/reports
[export]
outbox = $W/outbox
[destination pacs]
ae_title = PACS
host = 127.0.0.1
port = $SPORT
CONF
"$B/ctglipd" -c "$W/ctglipd.conf" > "$W/daemon.log" 2>&1 &
DPID=$!
for i in $(seq 1 100); do
    echoscu -to 2 -aec CTGLIP 127.0.0.1 "$PORT" > /dev/null 2>&1 && break
    sleep 0.1
done
echo "ctglip latency benchmark: $runs run(s), ${matrix}x${matrix} 3 mm chest-abdomen-pelvis phantom, CPU, $(nproc) cores"
"$B/ctglip" phantom --seed 31337 --count "$runs" --matrix "$matrix" --thickness 3 --fov cap \
    --abnormal-rate 1 --out "$W/ph" --quiet
declare -a LAT SEND PEER
for r in $(seq 0 $((runs - 1))); do
    c=$(printf '%s/ph/case_%04d' "$W" "$r")
    study=$(sed -n 's/.*"study_uid":[[:space:]]*"\([0-9.]*\)".*/\1/p' "$c/findings.json" | head -1)
    nimg=$(ls "$c/dicom" | wc -l)
    storescu -aec CTGLIP 127.0.0.1 "$PORT" "$c"/dicom/*.dcm > /dev/null 2>&1
    # Wait for the SR in storescp's folder (SR files are named SR.<uid>).
    for i in $(seq 1 1200); do
        f=$(grep -l "$study" "$W"/recv/SR* 2>/dev/null | head -1 || true)
        [ -n "$f" ] && break
        sleep 0.1
    done
    [ -n "$f" ] || { tail -20 "$W/daemon.log"; echo "no SR for run $r" >&2; exit 1; }
    got=$(stat -c %.Y "$f")
    last=$(sqlite3 -readonly "$W/index.db" "SELECT last_received FROM studies WHERE study_uid='$study'")
    lat=$(echo "$got - $last - $STABLE" | bc -l)
    job=$(sqlite3 -readonly "$W/index.db" "SELECT max(id) FROM jobs WHERE study_uid='$study'")
    sleep 0.5
    line=$(grep "job $job: SR " "$W/daemon.log" | tail -1)
    send=$(grep "export pacs: .* delivered" "$W/daemon.log" | tail -1 | sed 's/.* in \([0-9.]*\) s.*/\1/')
    # The peer: storescu sends the same SEG and SR to the same storescp.
    t0=$(date +%s.%N)
    storescu -R -aec PACS 127.0.0.1 "$SPORT" "$W"/reports/"$study"/"$job"/seg.dcm \
        "$W"/reports/"$study"/"$job"/sr.dcm > /dev/null 2>&1
    peer=$(echo "$(date +%s.%N) - $t0" | bc -l)
    LAT+=("$lat"); SEND+=("$send"); PEER+=("$peer")
    printf 'run %d: %d images, latency %.2f s (last arrival to SR at the PACS, stable wait excluded)\n' \
        "$r" "$nimg" "$lat"
    echo "   breakdown: $(echo "$line" | sed 's/.*; \(load.*\)/\1/'), send ${send} s"
    printf '   send: ctglipd %.3f s, storescu %.3f s for the same SEG + SR\n' "$send" "$peer"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ml=$(median "${LAT[@]}"); ms=$(median "${SEND[@]}"); mp=$(median "${PEER[@]}")
printf 'median latency %.2f s; send ctglipd %.3f s vs storescu %.3f s (ratio %.2fx)\n' \
    "$ml" "$ms" "$mp" "$(echo "$ms / $mp" | bc -l)"
kill -TERM $DPID; wait $DPID || true
