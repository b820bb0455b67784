# tests/lib.sh - helpers for the integration tests in tests/it/.  Source it
# first thing.  The runner gives each script CTG_ROOT, CTG_BUILD and an
# empty CTG_TMP (the working directory); every process a script starts is
# killed with the script's process group when it ends.
set -euo pipefail

ROOT=${CTG_ROOT:?run through the test runner}
B=${CTG_BUILD:?}
T=${CTG_TMP:?}
AET=CTGLIP
DPID=

fail() { echo "FAIL: $*" >&2; [ -f "$T/daemon.log" ] && { echo "--- daemon.log (tail)"; tail -n 40 "$T/daemon.log"; } >&2; exit 1; }
note() { echo "== $*"; }
check() { "$@" || fail "check failed: $*"; }
expect_eq() { [ "$1" = "$2" ] || fail "${3:-value}: expected '$2', got '$1'"; }

# A free TCP port on loopback (from a per-process range to avoid clashes).
free_port() {
    local p
    for p in $(seq $((20000 + ($$ * 7) % 20000)) 65000); do
        if ! ss -Hltn "sport = :$p" | grep -q .; then echo "$p"; return 0; fi
    done
    return 1
}

# write_conf [EXTRA-INI] : $T/ctglipd.conf with a fresh port, the spool and
# index under $T, a short stable time, no model unless MODEL names one (jobs
# then only build the volume); EXTRA is appended (more sections; a key given
# again overrides).
write_conf() {
    PORT=${PORT:-$(free_port)}
    cat > "$T/ctglipd.conf" <<CONF
[dicom]
ae_title = $AET
port = $PORT
acse_timeout = 5
idle_timeout = 30
[store]
spool = $T/spool
index = $T/index.db
free_space_reserve_mb = ${RESERVE_MB:-16}
[queue]
study_stable_seconds = ${STABLE:-2}
workers = ${WORKERS:-1}
retry_base_seconds = 1
[daemon]
log_level = ${LOG_LEVEL:-info}
shutdown_grace_seconds = 5
[model]
path = ${MODEL:-}
findings = $ROOT/etc/findings.conf
vocab = $ROOT/models/glove100.vocab
reports = $T/reports
CONF
    if [ $# -gt 0 ]; then printf '%s\n' "$1" >> "$T/ctglipd.conf"; fi
}

# start_daemon : runs ctglipd on $T/ctglipd.conf, waits until C-ECHO works.
start_daemon() {
    "$B/ctglipd" -c "$T/ctglipd.conf" >> "$T/daemon.log" 2>&1 &
    DPID=$!
    local i
    for i in $(seq 1 100); do
        if echoscu -to 2 -aec "$AET" 127.0.0.1 "$PORT" >/dev/null 2>&1; then return 0; fi
        kill -0 "$DPID" 2>/dev/null || fail "ctglipd exited during start-up"
        sleep 0.1
    done
    fail "ctglipd did not answer C-ECHO on port $PORT"
}

# stop_daemon : SIGTERM, and the daemon must exit 0.
stop_daemon() {
    kill -TERM "$DPID"
    local rc=0
    wait "$DPID" || rc=$?
    DPID=
    [ "$rc" = 0 ] || fail "ctglipd exited with status $rc after SIGTERM"
}

alive() { kill -0 "$DPID" 2>/dev/null; }

# sql QUERY : runs a query on the index (read-only).
sql() { sqlite3 -readonly "$T/index.db" "$1"; }

# wait_for SECONDS 'SHELL CODE' : evaluates the code every 0.2 s until it
# succeeds (quote it, so command substitutions run on every try).
wait_for() {
    local limit=$1; shift
    local end=$(( $(date +%s) + limit ))
    while [ "$(date +%s)" -le "$end" ]; do
        if eval "$*" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}

# fixture DIR [STUDY SERIES] : the 20 real slices, ready to send (cached).
fixture() {
    local out=$1 study=${2:-} series=${3:-}
    local key=${study:-default}
    local cache="$B/fixture-cache/$key"
    if [ ! -d "$cache" ]; then
        sh "$ROOT/tests/fixture.sh" "$cache.tmp" $study $series
        mv "$cache.tmp" "$cache"
    fi
    mkdir -p "$out"
    cp "$cache"/*.dcm "$out"/
}

# dataset_sha FILE : SHA-256 of a Part 10 file's data set bytes (what
# follows the file meta header), to compare files whose meta headers differ.
dataset_sha() {
    local glen
    glen=$(od -An -tu4 -j 140 -N 4 "$1" | tr -d ' ')
    tail -c +$((132 + 12 + glen + 1)) "$1" | sha256sum | cut -d' ' -f1
}

cleanup_lib() {
    if [ -n "${DPID:-}" ]; then kill -9 "$DPID" 2>/dev/null || true; fi
}
trap cleanup_lib EXIT

# many_instances OUT N UIDROOT [STUDY SERIES] : N instances of one series in
# OUT, copies of the fixture slices, each with SOP Instance UID UIDROOT.i.
many_instances() {
    local out=$1 n=$2 root=$3 i=0 f uid
    local base="$T/.many-base"
    rm -rf "$base"
    fixture "$base" ${4:-} ${5:-}
    mkdir -p "$out"
    while [ "$i" -lt "$n" ]; do
        for f in "$base"/*.dcm; do
            [ "$i" -lt "$n" ] || break
            i=$((i + 1))
            uid=$root.$i
            cp "$f" "$out/$uid.dcm"
            dcmodify -q -nb -m "(0008,0018)=$uid" "$out/$uid.dcm" || fail "dcmodify $uid"
        done
    done
    rm -rf "$base"
}

# indexed_data_sha SOP [VERSION] : SHA-256 of the data set bytes of an
# indexed instance, read from its file at the data_offset the index records.
indexed_data_sha() {
    local row
    row=$(sql "SELECT path || '|' || data_offset FROM instances WHERE sop_uid='$1' AND version=${2:-1}")
    [ -n "$row" ] || { echo "no index row"; return 0; }
    tail -c +$(( ${row#*|} + 1 )) "$T/spool/${row%|*}" | sha256sum | cut -d' ' -f1
}

# has_part : the daemon holds a temp file, i.e. is inside a C-STORE whose
# data set it has not received in full.
has_part() { compgen -G "$T/spool/.tmp/*.part" > /dev/null; }

# freeze_in_cstore PID : stops the sender PID (SIGSTOP) while the daemon is
# inside one of its C-STOREs.  Waits for a temp file, stops the sender, and
# keeps it stopped only if the temp file is still there after 50 ms (the
# daemon then waits for the rest of a data set); else lets it go on and
# tries again, up to 100 times within 60 s.  FROZE_AT: the try that caught it.
freeze_in_cstore() {
    local pid=$1 limit=$((SECONDS + 60)) try
    for try in $(seq 1 100); do
        until has_part; do
            kill -0 "$pid" 2>/dev/null || fail "the sender ended before it was caught inside a C-STORE"
            [ "$SECONDS" -le "$limit" ] || fail "no C-STORE in progress for 60 s"
        done
        kill -STOP "$pid" 2>/dev/null || fail "the sender ended before it was caught inside a C-STORE"
        sleep 0.05
        if has_part; then
            FROZE_AT=$try
            return 0
        fi
        kill -CONT "$pid" 2>/dev/null || true
    done
    fail "never caught the daemon inside a C-STORE"
}
