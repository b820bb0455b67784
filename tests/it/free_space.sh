# free_space_reserve_mb above the free space of the spool's file system:
# every C-STORE is answered 0xA700 (out of resources), by storescu's and by
# ctglip send's association alike, the daemon says why in its log, nothing
# reaches the spool or the index, and the daemon keeps serving.
source "$CTG_ROOT/tests/lib.sh"

fixture "$T/in"
avail=$(df -m --output=avail "$T" | tail -n 1 | tr -d ' ')
RESERVE_MB=$((avail + 1000))
WORKERS=0 STABLE=2 write_conf
start_daemon

no_trace() {
    [ -z "$(find "$T/spool" -mindepth 1 -not -path "$T/spool/.tmp")" ] \
        || fail "$1: the spool holds $(find "$T/spool" -mindepth 1 -not -path "$T/spool/.tmp" | sed -n 1,3p)"
    [ -z "$(ls -A "$T/spool/.tmp")" ] || fail "$1: files in spool/.tmp: $(ls -A "$T/spool/.tmp")"
    expect_eq "$(sql 'SELECT (SELECT count(*) FROM instances) || " " || (SELECT count(*) FROM studies)
                   || " " || (SELECT count(*) FROM series) || " " || (SELECT count(*) FROM patients)')" \
        "0 0 0 0" "$1: instances, studies, series, patients indexed"
    alive || fail "$1: ctglipd died"
    echoscu -to 5 -aec "$AET" 127.0.0.1 "$PORT" > /dev/null 2>&1 || fail "$1: no C-ECHO"
}

note "storescu, 20 slices (reserve $RESERVE_MB MiB, $avail MiB free)"
# -nh: go on after a refusal (storescu then exits 0); -d shows the status.
storescu -nh -d -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/in"/*.dcm > /dev/null 2> "$T/storescu.log" \
    || fail "storescu failed: $(grep -E '^[EF]:' "$T/storescu.log" | sed -n 1,3p)"
expect_eq "$(grep -c 'Sending file: ' "$T/storescu.log")" 20 "files storescu sent"
expect_eq "$(grep -Eic 'DIMSE Status *: 0xa700' "$T/storescu.log")" 20 "0xA700 responses to storescu"
grep -q 'Received Store Response (Success' "$T/storescu.log" && fail "storescu got a success"
no_trace storescu

note "ctglip send, 3 slices"
rc=0
"$B/ctglip" send 127.0.0.1 "$PORT" "$AET" $(ls "$T/in"/*.dcm | sed -n 1,3p) > "$T/send.out" 2> "$T/send.err" || rc=$?
expect_eq "$rc" 3 "ctglip send exit status"
expect_eq "$(grep -c ': status 0xa700$' "$T/send.out")" 3 "0xA700 answers to ctglip send"
grep -qi 'reserve' "$T/send.err" || fail "the Error Comment does not mention the reserve: $(cat "$T/send.err")"
no_trace "ctglip send"

grep -Eq '\[error\] .*free_space_reserve_mb' "$T/daemon.log" || fail "the daemon log does not mention the reserve"
sleep 2.5
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 0 "jobs"
no_trace "after the stable time"
stop_daemon
