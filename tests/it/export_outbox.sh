# The export outbox inside ctglipd, with real storescp peers:
#  - exports that a previous run left in `sending` (as after a crash) go
#    back to the queue at start-up and are delivered, each file once;
#  - a destination with nothing listening retries with back-off (one log
#    line per attempt) and does not hold up the other;
#  - the outbox file is removed only after both destinations confirmed it;
#  - /status, `ctglip status` and `ctglip exports` report the rows;
#  - SIGHUP adds a destination; SIGTERM still exits 0.
# The job worker does not produce reports yet, so the rows are written into
# the index with sqlite3 while the daemon is stopped.  The DICOM files are
# the real CT fixture slices (TotalSegmentator, CC BY 4.0).
source "$CTG_ROOT/tests/lib.sh"

PORT=$(free_port)
pick() { local p; p=$(free_port); while [[ " $* " == *" $p "* ]]; do p=$((p + 1)); done; echo "$p"; }
HTTP=$(pick "$PORT")
PACS_PORT=$(pick "$PORT" "$HTTP")
DOWN_PORT=$(pick "$PORT" "$HTTP" "$PACS_PORT")

conf() {
    WORKERS=0 write_conf "[export]
outbox = $T/outbox
retry_base_seconds = 1
retry_max_seconds = 2
[destination PACS]
ae_title = PACS
host = 127.0.0.1
port = $PACS_PORT
[destination DOWN]
ae_title = DOWN
host = 127.0.0.1
port = $DOWN_PORT
timeout = 5
$1
[http]
port = $HTTP"
}

# start_scp AE PORT DIR : storescp that keeps every received file under a
# unique name; sets SCP_PID.
start_scp() {
    mkdir -p "$3"
    storescp -v -aet "$1" -od "$3" +uf "$2" >> "$3.log" 2>&1 &
    SCP_PID=$!
    wait_for 10 "echoscu -to 2 -aec $1 127.0.0.1 $2" || fail "storescp $1 did not start"
}
count() { find "$1" -maxdepth 1 -type f | wc -l; }
rows() { sql "SELECT count(*) FROM exports WHERE destination='$1' AND state=$2"; }

note "files in the outbox, rows left in 'sending' by an earlier run"
fixture "$T/in"
mkdir -p "$T/outbox"
files=("$T/in"/*.dcm)
conf ""
start_daemon
stop_daemon
expect_eq "$(sql 'PRAGMA user_version')" 3 "schema version"
for f in "${files[@]:0:2}"; do
    uid=$(dcmdump -s +P 0008,0018 "$f" | sed 's/.*\[\(.*\)\].*/\1/')
    cls=$(dcmdump -s +P 0008,0016 "$f" | sed 's/.*\[\(.*\)\].*/\1/')
    cp "$f" "$T/outbox/$uid.dcm"
    for d in PACS DOWN; do
        sql_rw="INSERT INTO exports(job_id, study_uid, path, sop_class, sop_uid, destination,
                state, attempts, next_try, lease_owner, lease_expires, created, updated)
                VALUES(1, '1.2.3', '$T/outbox/$uid.dcm', '$cls', '$uid', '$d', 1, 0, 0,
                'gone/1/x/$d', 1e12, 0, 0)"
        sqlite3 "$T/index.db" "$sql_rw" || fail "insert"
    done
done
expect_eq "$(rows PACS 1)" 2 "PACS rows sending"

note "start: PACS receives at once, DOWN retries"
start_scp PACS "$PACS_PORT" "$T/rx_pacs"
PACS_PID=$SCP_PID
start_daemon
wait_for 15 '[ "$(rows PACS 2)" = 2 ]' || fail "PACS rows not done"
grep -q "export: 4 export(s) that were being sent went back to the queue" "$T/daemon.log" ||
    fail "no start-up recovery line"
expect_eq "$(count "$T/rx_pacs")" 2 "files at PACS"
expect_eq "$(count "$T/outbox")" 2 "outbox files while DOWN has not confirmed"
wait_for 15 '[ "$(grep -c "export DOWN: 2 of 2 file(s) failed" "$T/daemon.log")" -ge 3 ]' ||
    fail "DOWN did not retry"
grep -q "export DOWN: 2 of 2 file(s) failed: association failed: .*attempt 2 of 20; next try at .* (in 2 s)" \
    "$T/daemon.log" || fail "no back-off in the retry lines"
expect_eq "$(count "$T/outbox")" 2 "outbox files while DOWN is down"

st=$(curl -sf "http://127.0.0.1:$HTTP/status") || fail "GET /status"
echo "$st"
echo "$st" | grep -o '"PACS":{[^}]*}' | grep -q '"done":2' || fail "/status: PACS done"
echo "$st" | grep -o '"exports":{"queued":[0-9]*,"sending":[0-9]*,"done":2,"dead":0' >/dev/null ||
    fail "/status: export counts"
"$B/ctglip" -c "$T/ctglipd.conf" exports > "$T/exports.out" || fail "ctglip exports"
cat "$T/exports.out"
expect_eq "$(grep -c ' PACS .* done ' "$T/exports.out")" 2 "PACS done in ctglip exports"
expect_eq "$(grep -c ' DOWN .* queued .*association failed' "$T/exports.out")" 2 \
    "DOWN queued with the reason in ctglip exports"
"$B/ctglip" -c "$T/ctglipd.conf" status | grep -q "^exports .* done 2, dead 0 (2 destination(s)" ||
    fail "ctglip status: exports line"

note "DOWN comes up: each file once, then the outbox is empty"
start_scp DOWN "$DOWN_PORT" "$T/rx_down"
DOWN_PID=$SCP_PID
wait_for 15 '[ "$(rows DOWN 2)" = 2 ]' || fail "DOWN rows not done"
wait_for 5 '[ "$(count "$T/outbox")" = 0 ]' || fail "outbox not emptied"
sleep 0.5
expect_eq "$(count "$T/rx_down")" 2 "files at DOWN"
expect_eq "$(count "$T/rx_pacs")" 2 "files at PACS"

note "SIGHUP adds a destination; SIGTERM exits 0"
THIRD_PORT=$(pick "$PORT" "$HTTP" "$PACS_PORT" "$DOWN_PORT")
conf "[destination THIRD]
ae_title = THIRD
host = 127.0.0.1
port = $THIRD_PORT"
kill -HUP "$DPID"
wait_for 10 'grep -q "export: destination THIRD: THIRD@127.0.0.1:$THIRD_PORT" "$T/daemon.log"' ||
    fail "THIRD not started on reload"
alive || fail "ctglipd died on reload"
stop_daemon
grep -q "server: stopped" "$T/daemon.log" || fail "no clean stop"
kill "$PACS_PID" "$DOWN_PID"
wait "$PACS_PID" "$DOWN_PID" 2>/dev/null || true
