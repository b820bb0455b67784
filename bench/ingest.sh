#!/usr/bin/env bash
# bench/ingest.sh - C-STORE ingest throughput of ctglipd against two peers.
#
#   make bench-ingest        (or: CTG_BUILD=build bash bench/ingest.sh)
#
# Sends the same set of 512x512 16-bit CT instances over loopback with
# DCMTK's storescu, once on 1 association and once on 8 parallel
# associations, to three receivers in the same run on the same machine:
#
#   ctglipd   this project: temp file, fsync, rename, fsync(dir), SQLite
#             commit with synchronous=FULL, then the C-STORE response.
#   storescp  DCMTK's reference SCP: writes each file and answers, no fsync
#             (its numbers are an upper bound for "receive and write").
#   Orthanc   Debian's orthanc package: fsyncs its storage area
#             (SyncStorageArea, default true) and indexes in SQLite.
#
# Every run starts a fresh receiver on empty storage, is timed by wall clock
# from the first storescu start to the last storescu exit, and is checked
# afterwards: the receiver must hold every instance sent, or the script
# fails.  Everything lives in one temp folder under the build folder that is
# removed at the end (BENCH_KEEP=1 keeps it).  All traffic goes over
# loopback; storescp, Orthanc 1.10 (and ctglipd) listen on the wildcard
# address, since the first two have no bind-address option, so they are
# reachable from outside for the few minutes of the run (Orthanc's REST API
# refuses remote clients: RemoteAccessAllowed false; ctglipd admits only
# 127.0.0.0/8 by default).
#
# Knobs (environment):
#   BENCH_GROUPS=32      studies of 20 slices each (32 -> 640 instances)
#   BENCH_TCP_NODELAY=1  (default) exports TCP_NODELAY=1 to storescu,
#                        storescp and Orthanc: DCMTK reads that variable and
#                        disables Nagle's algorithm on its sockets.  Debian's
#                        DCMTK leaves Nagle on otherwise, and a receiver with
#                        Nagle on its socket stalls each C-STORE response
#                        behind the peer's delayed ACK (~40 ms an instance on
#                        loopback), which would measure a socket flag instead
#                        of the storage path; ctglipd sets TCP_NODELAY itself.
#                        On the storescu side it helps every receiver alike.
#                        0: DCMTK's defaults everywhere (out-of-the-box peers).
#   BENCH_REPEAT=3       runs of each case; the table shows the median
#   BENCH_KEEP=1         keep the work folder (logs, configs, files).
#   BENCH_RECEIVERS="ctglipd storescp orthanc"  the receivers to run (a
#                        subset for experiments; the ratios need all three)
#   BENCH_PRELOAD=LIB    LD_PRELOAD for ctglipd only, for experiments (e.g. a
#                        library whose fsync() returns at once shows what the
#                        durable writes cost; never a number to report).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$(cd "${CTG_BUILD:-$ROOT/build}" && pwd)
NGROUPS=${BENCH_GROUPS:-32}
NASSOC=8                     # parallel associations of the second case
REPEAT=${BENCH_REPEAT:-3}    # runs of every case; the table shows the median
UIDROOT=2.25.231932228033936708469927392542703984207
SCU_AET=BENCHSCU             # all 8 storescu call with one AE title, like
                             # one busy modality or router would

for tool in storescu storescp echoscu dcmodify dcmdump gdcmconv sqlite3 curl ss Orthanc; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (make bench-ingest installs it)" >&2; exit 1; }
done
[ -x "$B/ctglipd" ] || { echo "bench: $B/ctglipd not built" >&2; exit 1; }
# at least one study per association, or a storescu would have nothing to send
[ "$NGROUPS" -ge "$NASSOC" ] && [ "$REPEAT" -ge 1 ] ||
    { echo "bench: needs BENCH_GROUPS >= $NASSOC and BENCH_REPEAT >= 1" >&2; exit 1; }

# DCMTK (storescu, storescp and the DCMTK inside Orthanc) reads TCP_NODELAY
# from the environment when it opens or accepts a connection; set it or
# clear it explicitly, never inherit a stray one.
case "${BENCH_TCP_NODELAY:-1}" in
    1) export TCP_NODELAY=1 ;;
    0) unset TCP_NODELAY ;;
    *) echo "bench: BENCH_TCP_NODELAY must be 0 or 1" >&2; exit 1 ;;
esac

W=$(mktemp -d "$B/bench-ingest.XXXXXX")
mkdir -p "$W/store" "$W/done"
# Each run's storage is a new folder under $W/store.  The Orlov "top
# directory" flag spreads such folders over the file system's block groups
# (best effort: ignored where chattr or the flag is not supported), away
# from inodes that other work on this disk deleted in the last minutes;
# see retire() for why that matters.
chattr +T "$W/store" 2>/dev/null || true
PIDS=()                      # every process started in the background

cleanup() {
    local rc=$? p
    for p in "${PIDS[@]}"; do stop "$p"; done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: work folder kept: $W" >&2
    elif [ "$rc" != 0 ]; then
        # keep logs and configs to look at, not the bulk data (hundreds of MB)
        rm -rf "$W/in" "$W/store" "$W/done"
        echo "bench: logs and configs kept in $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench: FAIL: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

# A free TCP port on loopback.  Like free_port in tests/lib.sh (a range that
# depends on our PID, so parallel test scripts rarely probe the same ports),
# but it also skips the ports this script already handed out, since a port
# picked here is not bound until its server starts.  free_port VAR sets VAR
# (not $(free_port): a subshell would forget the port it handed out).
USED_PORTS=" "
free_port() {
    local p
    for p in $(seq $((20000 + ($$ * 11) % 20000)) 65000); do
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        if ! ss -Hltn "sport = :$p" | grep -q .; then
            USED_PORTS="$USED_PORTS$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free TCP port"
}

# wait_echo NAME PID AET PORT : until the server answers C-ECHO (30 s).
wait_echo() {
    local name=$1 pid=$2 aet=$3 port=$4 i
    for i in $(seq 1 300); do
        if echoscu -to 2 -aet "$SCU_AET" -aec "$aet" 127.0.0.1 "$port" >/dev/null 2>&1; then return 0; fi
        kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (see $W/$name.log)"
        sleep 0.1
    done
    die "$name did not answer C-ECHO on port $port"
}

# stop PID : SIGTERM and wait, so the next server does not share the CPUs
# with one still shutting down; forgets the PID so the EXIT trap never
# signals a number the system may since have given to someone else.
stop() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}
forget() {
    local i rest=()
    for i in "${PIDS[@]}"; do [ "$i" = "$1" ] || rest+=("$i"); done
    PIDS=(${rest[@]+"${rest[@]}"})
}

# --------------------------------------------------------------------------
# Input: NGROUPS copies of the 20 real slices, each a study of its own with
# new Study/Series/SOP Instance UIDs.  A per-run arc keeps UIDs of repeated
# runs apart; the longest UID stays well under 64 characters.
# Group g goes to folder g % 8, so each of the 8 associations carries whole
# studies, as 8 modalities would; with 32 groups every folder gets 4.
say "preparing $((NGROUPS * 20)) instances in $W/in"
sh "$ROOT/tests/fixture.sh" "$W/fixture" >/dev/null
mapfile -t SLICES < <(ls "$W/fixture"/*.dcm)
[ "${#SLICES[@]}" = 20 ] || die "tests/fixture.sh made ${#SLICES[@]} slices, not 20"
RUN=$(( $$ % 100000 ))
for a in $(seq 0 $((NASSOC - 1))); do mkdir -p "$W/in/$a"; done
: > "$W/modify.list"
for g in $(seq 1 "$NGROUPS"); do
    dir="$W/in/$(( (g - 1) % NASSOC ))"
    study=$UIDROOT.7.$RUN.$g
    series=$study.0
    for i in $(seq 1 20); do
        sop=$study.$i
        cp "${SLICES[$((i - 1))]}" "$dir/$sop.dcm"
        # dcmodify also rewrites the meta header's Media Storage SOP
        # Instance UID to match (no -nmu)
        printf '%s\t%s\t%s\t%s\n' "$dir/$sop.dcm" "$sop" "$study" "$series" >> "$W/modify.list"
    done
done
# one dcmodify per file, spread over the cores (about 15 ms each)
tr '\t' '\n' < "$W/modify.list" | xargs -d '\n' -n 4 -P "$(nproc)" \
    sh -c 'dcmodify -q -nb -m "(0008,0018)=$1" -m "(0020,000d)=$2" -m "(0020,000e)=$3" "$0"'
N=$(find "$W/in" -name '*.dcm' | wc -l)
BYTES=$(find "$W/in" -name '*.dcm' -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')
# spot check: the last file carries its new UIDs
last_sop=$UIDROOT.7.$RUN.$NGROUPS.20
[ "$(dcmdump -q +P 0008,0018 "$W/in/$(( (NGROUPS - 1) % NASSOC ))/$last_sop.dcm" | sed -n 's/.*\[\(.*\)\].*/\1/p')" = "$last_sop" ] \
    || die "dcmodify did not set the SOP Instance UID"
say "$N instances, $BYTES bytes"

# --------------------------------------------------------------------------
# Receivers.  Each start_* starts a fresh server on empty storage under
# $W/store/NAME and sets SPID, SPORT, SAET; each count_* prints how many
# instances it holds.  All accept PDUs of 131072 bytes (ctglipd's default;
# storescp and Orthanc default to 16384, which would make storescu cut every
# data set into 8 times more PDUs for them only).

start_ctglipd() {
    local d=$W/store/ctglipd
    mkdir -p "$d"
    free_port SPORT; SAET=CTGLIP
    # workers = 0 and a day of study_stable_seconds: no job may run during
    # the measurement; 16 associations per AE so 8 storescu calling with one
    # title are all admitted; a small free-space reserve so a nearly full
    # build disk does not answer 0xA700.
    cat > "$d/ctglipd.conf" <<CONF
[dicom]
ae_title = $SAET
port = $SPORT
max_pdu = 131072
max_associations = 32
max_associations_per_ae = 16
[store]
spool = $d/spool
index = $d/index.db
free_space_reserve_mb = 16
[queue]
study_stable_seconds = 86400
workers = 0
[daemon]
log_level = info
shutdown_grace_seconds = 5
CONF
    LD_PRELOAD=${BENCH_PRELOAD:-} "$B/ctglipd" -c "$d/ctglipd.conf" >> "$W/ctglipd.log" 2>&1 &
    SPID=$!; PIDS+=("$SPID")
    wait_echo ctglipd "$SPID" "$SAET" "$SPORT"
}
count_ctglipd() { sqlite3 -readonly "$W/store/ctglipd/index.db" 'SELECT count(*) FROM instances'; }

start_storescp() {
    local d=$W/store/storescp
    mkdir -p "$d/files"
    free_port SPORT; SAET=STORESCP
    # Its default presentation contexts already accept CT Image Storage in
    # explicit/implicit little endian.  --fork: one process per association,
    # otherwise it serves the 8 associations one after the other.
    storescp --fork -pdu 131072 -aet "$SAET" -od "$d/files" "$SPORT" >> "$W/storescp.log" 2>&1 &
    SPID=$!; PIDS+=("$SPID")
    wait_echo storescp "$SPID" "$SAET" "$SPORT"
}
count_storescp() { find "$W/store/storescp/files" -type f | wc -l; }

ORTHANC_HTTP=
start_orthanc() {
    local d=$W/store/orthanc
    mkdir -p "$d/db"
    free_port SPORT; SAET=ORTHANC
    free_port ORTHANC_HTTP
    # Only what differs from Orthanc 1.10's defaults (Orthanc --config=FILE
    # prints them) plus what the benchmark relies on:
    #  - own storage/index, ports picked here, HTTP for localhost only and
    #    without authentication (the count is read over REST);
    #  - any calling AE may store, the called AE is not checked;
    #  - DicomThreadsCount 8: the default 4 would queue half of the 8
    #    associations; MaximumPduLength as for the other receivers;
    #  - no plugins, Lua, WebDAV, explorer or saved jobs: nothing but ingest;
    #  - SyncStorageArea stays true (default): Orthanc fsyncs, like ctglipd.
    cat > "$d/orthanc.json" <<JSON
{
  "Name" : "ctglip-bench",
  "StorageDirectory" : "$d/db",
  "IndexDirectory" : "$d/db",
  "Plugins" : [ ],
  "LuaScripts" : [ ],
  "HttpServerEnabled" : true,
  "HttpPort" : $ORTHANC_HTTP,
  "RemoteAccessAllowed" : false,
  "AuthenticationEnabled" : false,
  "OrthancExplorerEnabled" : false,
  "WebDavEnabled" : false,
  "DicomServerEnabled" : true,
  "DicomAet" : "$SAET",
  "DicomPort" : $SPORT,
  "DicomCheckCalledAet" : false,
  "DicomAlwaysAllowEcho" : true,
  "DicomAlwaysAllowStore" : true,
  "DicomThreadsCount" : 8,
  "MaximumPduLength" : 131072,
  "SyncStorageArea" : true,
  "SaveJobs" : false
}
JSON
    Orthanc "$d/orthanc.json" >> "$W/orthanc.log" 2>&1 &
    SPID=$!; PIDS+=("$SPID")
    wait_echo orthanc "$SPID" "$SAET" "$SPORT"
    local i
    for i in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$ORTHANC_HTTP/system" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "Orthanc's REST API did not answer on port $ORTHANC_HTTP"
}
count_orthanc() {
    curl -sf "http://127.0.0.1:$ORTHANC_HTTP/statistics" |
        tr -d ' \n' | sed -n 's/.*"CountInstances":\([0-9]*\).*/\1/p'
}

# --------------------------------------------------------------------------
# One measurement: fresh receiver, send, time, verify, stop, wipe.

declare -A RUNS SECS         # RUNS[recv,nassoc]: every run's seconds
declare -A CPUS CPU          # CPUS[recv,nassoc]: every run's busy CPU ms/instance

# Busy CPU time of the whole machine so far, in ms (user, nice, system, irq
# and softirq from /proc/stat; idle, iowait and steal left out).  Over a run
# it counts the receiver and the storescu senders together: the senders'
# share is the same for every receiver, so the difference between two
# receivers is theirs.  It varies less than wall time on a shared VM, where
# a run can also wait on a slow disk or a busy host.
busy_ms() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.0f", ($2 + $3 + $4 + $7 + $8) * 1000 / hz}' /proc/stat
}
RECEIVERS=(${BENCH_RECEIVERS:-ctglipd storescp orthanc})

run_case() {
    local recv=$1 nassoc=$2 log=$W/storescu.$1.$2 t0 t1 t rc=0 got a
    # storage of the previous run gone and its dirty pages written back, so
    # no earlier write-back (storescp's in particular) lands in this run
    rm -rf "$W/store/$recv"
    sync
    "start_$recv"
    # common storescu arguments: calling/called AE, no per-file output
    local scu=(storescu -aet "$SCU_AET" -aec "$SAET" 127.0.0.1 "$SPORT")
    local pids=()
    c0=$(busy_ms)
    t0=$(date +%s.%N)
    if [ "$nassoc" = 1 ]; then
        # one storescu, one association, all files
        "${scu[@]}" +sd "$W"/in/* > "$log.0" 2>&1 || rc=$?
    else
        for a in $(seq 0 $((nassoc - 1))); do
            "${scu[@]}" +sd "$W/in/$a" > "$log.$a" 2>&1 &
            pids+=($!); PIDS+=($!)
        done
        for a in "${pids[@]}"; do wait "$a" || rc=$?; forget "$a"; done
    fi
    t1=$(date +%s.%N)
    c1=$(busy_ms)
    [ "$rc" = 0 ] || die "storescu to $recv ($nassoc assoc.) exited $rc: $(cat "$log".* | tail -n 20)"
    got=$("count_$recv") || got=?
    stop "$SPID"
    [ "$got" = "$N" ] || die "$recv holds $got instances after the $nassoc-association run, $N were sent (logs: $W)"
    # storescu says nothing on success without -v; any line is a warning
    if grep -q . "$log".*; then say "storescu to $recv ($nassoc assoc.) said:"; cat "$log".* | head -n 10 >&2; fi
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
    RUNS[$recv,$nassoc]="${RUNS[$recv,$nassoc]:-}${RUNS[$recv,$nassoc]:+ }$t"
    CPUS[$recv,$nassoc]="${CPUS[$recv,$nassoc]:-}${CPUS[$recv,$nassoc]:+ }$(awk -v c=$((c1 - c0)) -v n="$N" 'BEGIN {printf "%.2f", c / n}')"
    say "run $rep/$REPEAT: $recv, $nassoc association(s): $N instances in $t s, all stored"
    retire "$W/store/$recv" "$recv.$nassoc.$rep"
}

# retire DIR NAME : a finished run's storage leaves the way of the next run.
# Deleting it at once would make the next run slower than its receiver is:
# on ext4 without a journal (the project's VMs) the inode allocator steps
# over every inode deleted in the last minutes one by one (ext4's
# recently_deleted()), so the run after a delete of ~1300 files and
# folders paid 10-40 % more CPU in perf profiles, for whichever receiver
# came next (Orthanc spreads its files over hundreds of folders, so the
# run after Orthanc's suffered most).  Kept, its page cache still has to
# go, or the next run writes into memory the VM has not touched yet (much
# slower).  So: written back, dropped from the cache, and deleted with the
# work folder at the end.  Without room for all runs (KEEP_BYTES) it is
# deleted at once, as before, and the report says so.
RETIRE_DELETES=0
retire() {
    local dir=$1 name=$2
    if [ "$RETIRE_DELETES" = 1 ]; then rm -rf "$dir"; return; fi
    mv "$dir" "$W/done/$name"
    sync
    find "$W/done/$name" -type f -exec dd if={} iflag=nocache count=0 status=none \;
}

# Room to keep every run's storage (with 10 % and 1 GiB to spare)?
KEEP_BYTES=$(( REPEAT * 2 * ${#RECEIVERS[@]} * BYTES * 11 / 10 + (1 << 30) ))
if [ "$(df -P -B1 "$W" | awk 'NR == 2 {print $4}')" -lt "$KEEP_BYTES" ]; then
    RETIRE_DELETES=1
    say "less than $((KEEP_BYTES >> 20)) MiB free under $W: each run's storage is deleted right after it"
fi
say "TCP_NODELAY=${TCP_NODELAY:-unset} in storescu, storescp and Orthanc (BENCH_TCP_NODELAY)"
# Runs of a few seconds on a small shared machine are noisy: every case runs
# REPEAT times, interleaved (so a slow minute hits all receivers alike), and
# the table shows the median.
# The order of the receivers turns by one each repetition, so that none is
# always the one that runs right after another's clean-up.
for rep in $(seq 1 "$REPEAT"); do
    k=$(( (rep - 1) % ${#RECEIVERS[@]} ))
    ORDER=("${RECEIVERS[@]:k}" "${RECEIVERS[@]:0:k}")
    for nassoc in 1 "$NASSOC"; do
        for recv in "${ORDER[@]}"; do
            run_case "$recv" "$nassoc"
        done
    done
done
median() { tr ' ' '\n' <<< "$1" | sort -g |
    awk '{v[NR] = $1} END {printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for k in "${!RUNS[@]}"; do
    SECS[$k]=$(median "${RUNS[$k]}")
    CPU[$k]=$(median "${CPUS[$k]}")
done

# --------------------------------------------------------------------------
# Report (stdout).  MB = 10^6 bytes of the Part 10 files sent.

echo
echo "ctglip ingest benchmark: $N CT instances (512x512, 16 bit), $(awk -v b="$BYTES" 'BEGIN {printf "%.1f", b / 1e6}') MB, storescu over loopback"
echo "machine: $(nproc) CPU(s), $(uname -r); work folder on $(df -P "$W" | awk 'NR == 2 {print $1}')"
echo "seconds: median of $REPEAT runs (all runs in the last column)"
echo
printf '%-10s %6s %10s %9s %12s %9s %9s   %s\n' receiver assoc instances seconds instances/s MB/s cpu-ms/i runs
for nassoc in 1 "$NASSOC"; do
    for recv in "${RECEIVERS[@]}"; do
        awk -v r="$recv" -v a="$nassoc" -v n="$N" -v s="${SECS[$recv,$nassoc]}" -v b="$BYTES" \
            -v c="${CPU[$recv,$nassoc]}" -v all="${RUNS[$recv,$nassoc]}" \
            'BEGIN {printf "%-10s %6d %10d %9.2f %12.1f %9.1f %9.2f   %s\n", r, a, n, s, n / s, b / 1e6 / s, c, all}'
    done
done
echo "cpu-ms/i: busy CPU of the whole machine per instance (receiver and storescu"
echo "senders together; the senders' share is the same for every receiver), median."
echo
echo "throughput ratios (higher = ctglipd faster):"
for nassoc in 1 "$NASSOC"; do
    # a receiver left out (BENCH_RECEIVERS) has no ratio
    awk -v a="$nassoc" -v c="${SECS[ctglipd,$nassoc]:-}" -v s="${SECS[storescp,$nassoc]:-}" \
        -v o="${SECS[orthanc,$nassoc]:-}" \
        'function r(x) { return (x != "" && c != "") ? sprintf("%.2fx", x / c) : "-" }
         BEGIN {printf "  %d assoc: ctglipd/storescp %s   ctglipd/Orthanc %s\n", a, r(s), r(o)}'
done
echo
echo "goal: on $NASSOC associations ctglipd >= 1.0x storescp and >= 2x Orthanc."
echo "notes:"
echo "  - ctglipd fsyncs every file and its directory and commits its SQLite index"
echo "    (synchronous=FULL) before each C-STORE response; storescp writes files"
echo "    WITHOUT fsync (page cache only); Orthanc fsyncs (SyncStorageArea=true)."
if [ "$RETIRE_DELETES" = 1 ]; then
    echo "  - each run's storage was deleted right after it (too little free space to keep"
    echo "    them): on ext4 without a journal the next run then pays for stepping over"
    echo "    the deleted inodes (see retire() in bench/ingest.sh)."
fi
echo "  - all receivers accept 131072-byte PDUs; storescp runs with --fork and"
echo "    Orthanc with DicomThreadsCount=8 so all $NASSOC associations run at once."
if [ -n "${TCP_NODELAY:-}" ]; then
    echo "  - TCP_NODELAY=1 exported to storescu, storescp and Orthanc (DCMTK reads it):"
    echo "    Nagle off on every socket, as ctglipd does on its own.  BENCH_TCP_NODELAY=0"
    echo "    runs DCMTK's defaults instead (Nagle on: ~40 ms stall per instance for"
    echo "    storescp and Orthanc, which do not set TCP_NODELAY themselves)."
else
    echo "  - BENCH_TCP_NODELAY=0: DCMTK's defaults, Nagle on in storescu, storescp and"
    echo "    Orthanc; ctglipd sets TCP_NODELAY on its accepted sockets, the peers do"
    echo "    not, and pay ~40 ms (delayed ACK) per instance on each association."
fi
