# kill -9 of ctglipd in the middle of a 200-instance transfer (inside a
# C-STORE whose data set is half received), then a restart: every instance
# storescu saw acknowledged is in the spool byte for byte and indexed, the
# unfinished temp file is gone, the restarted daemon logs nothing alarming,
# and after the sender re-sends the rest the study completes exactly once,
# covering everything.
source "$CTG_ROOT/tests/lib.sh"

N=200       # instances in the study
KILL_AT=50  # acknowledged instances before the kill
# Long enough that the restart and the re-send fall inside one stable
# period, so a correct daemon queues the study once.
STABLE=8
study=2.25.231932228033936708469927392542703984207.1.1
series=2.25.231932228033936708469927392542703984207.1.2
uidroot=2.25.231932228033936708469927392542703984207.31

note "making $N instances of one study"
many_instances "$T/in" "$N" "$uidroot"
files=("$T/in"/*.dcm)
expect_eq "${#files[@]}" "$N" "instances made"

WORKERS=0 write_conf
start_daemon

note "transfer, kill -9 inside a C-STORE after $KILL_AT acknowledgements"
# DCMTK sizes its socket buffers from TCP_BUFFER_LENGTH.  With 64 KiB a
# data set cannot vanish into the kernel's buffers at once, so the sender
# is still pushing it when frozen below.
TCP_BUFFER_LENGTH=65536 storescu -v -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "${files[@]}" \
    > /dev/null 2> "$T/storescu1.log" &
SPID=$!
acked_count() { grep -c 'Received Store Response (Success)' "$T/storescu1.log" || true; }
end=$(( $(date +%s) + 60 ))
while [ "$(acked_count)" -lt "$KILL_AT" ]; do
    kill -0 "$SPID" 2>/dev/null || fail "storescu ended before $KILL_AT acknowledgements: $(tail -n 5 "$T/storescu1.log")"
    [ "$(date +%s)" -le "$end" ] || fail "no $KILL_AT acknowledgements within 60 s"
    sleep 0.01
done
# Freeze the sender while the daemon holds a temp file, so that the kill
# lands inside a C-STORE.
freeze_in_cstore "$SPID"
note "caught inside a C-STORE at try $FROZE_AT"
kill -9 "$DPID"
wait "$DPID" 2>/dev/null || true
DPID=
kill -CONT "$SPID"
wait_for 20 '! kill -0 "$SPID" 2>/dev/null' || fail "storescu still running 20 s after the daemon died"
src=0
wait "$SPID" || src=$?
[ "$src" != 0 ] || fail "storescu reported success for the whole transfer although the daemon was killed"

# Which files got a success response: a response belongs to the file whose
# "Sending file" line came last before it.
awk '/Sending file: / { sub(/.*Sending file: /, ""); cur = $0; next }
     /Received Store Response \(Success\)/ { if (cur != "") print cur; cur = "" }' \
    "$T/storescu1.log" > "$T/acked.list"
nacked=$(wc -l < "$T/acked.list")
expect_eq "$nacked" "$(acked_count)" "acknowledged files parsed from the storescu log"
[ "$nacked" -ge "$KILL_AT" ] || fail "only $nacked acknowledged"
[ "$nacked" -lt "$N" ] || fail "all $N instances were acknowledged before the kill; the transfer must be longer"
note "$nacked of $N acknowledged before the kill"
ntmp_before=$(find "$T/spool/.tmp" -mindepth 1 | wc -l)
[ "$ntmp_before" -ge 1 ] || fail "no unfinished temp file after the kill"

note "restart"
logoff=$(stat -c %s "$T/daemon.log")
start_daemon
[ -z "$(ls -A "$T/spool/.tmp")" ] || fail "stray files in spool/.tmp after restart: $(ls -A "$T/spool/.tmp")"
tail -c +$((logoff + 1)) "$T/daemon.log" | grep "removed $ntmp_before unfinished temp file(s)" >/dev/null \
    || fail "restart did not log the removal of $ntmp_before temp file(s)"
# One association sends one instance at a time, so at most the one in
# flight may have been committed without its response reaching storescu.
nidx=$(sql 'SELECT count(*) FROM instances')
[ "$nidx" -ge "$nacked" ] && [ "$nidx" -le $((nacked + 1)) ] \
    || fail "$nidx instances indexed after the crash, $nacked acknowledged"
# A file renamed into place just before the crash but never committed is
# allowed (it was not acknowledged); more than that is not.
find "$T/spool/$study" -type f -name '*.dcm' -printf '%P\n' 2>/dev/null | sed "s|^|$study/|" | sort > "$T/ondisk.list"
sql 'SELECT path FROM instances' | sort > "$T/indexed.list"
unindexed=$(comm -23 "$T/ondisk.list" "$T/indexed.list" | wc -l)
[ "$unindexed" -le 1 ] || fail "$unindexed spool files are not indexed"
[ -z "$(comm -13 "$T/ondisk.list" "$T/indexed.list")" ] \
    || fail "indexed but missing from the spool: $(comm -13 "$T/ondisk.list" "$T/indexed.list" | sed -n 1,3p)"
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 0 "jobs right after the restart"

note "re-sending the $((N - nacked)) unacknowledged instances"
remaining=()
for f in "${files[@]}"; do
    grep -qxF "$f" "$T/acked.list" || remaining+=("$f")
done
expect_eq "${#remaining[@]}" $((N - nacked)) "instances to re-send"
storescu -v -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "${remaining[@]}" \
    > /dev/null 2> "$T/storescu2.log" || fail "re-send failed: $(tail -n 5 "$T/storescu2.log")"
expect_eq "$(grep -c 'Received Store Response (Success)' "$T/storescu2.log")" "${#remaining[@]}" \
    "successful responses to the re-send"

note "acknowledged instances survived byte for byte"
while IFS= read -r f; do
    sop=$(basename "$f" .dcm)
    p="$T/spool/$study/$series/$sop.dcm"
    [ -f "$p" ] || fail "acknowledged $sop missing from the spool"
    sha=$(dataset_sha "$f")
    expect_eq "$(dataset_sha "$p")" "$sha" "data set bytes of acknowledged $sop"
    expect_eq "$(sql "SELECT count(*) FROM instances WHERE sop_uid='$sop' AND version=1 AND current=1
                      AND size=$(stat -c %s "$p") AND path='$study/$series/$sop.dcm'")" 1 \
        "index row of acknowledged $sop"
    expect_eq "$(indexed_data_sha "$sop")" "$sha" "data set at the indexed offset of $sop"
done < "$T/acked.list"

note "the study completes exactly once"
wait_for $((STABLE + 15)) '[ "$(sql "SELECT count(*) FROM jobs")" -ge 1 ]' || fail "no job after the stable time"
sleep 3
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 1 "jobs"
expect_eq "$(sql 'SELECT state || " " || generation || " " || ifnull(supersedes, "-") FROM jobs')" "0 $N -" \
    "the job: queued, covering $N arrivals, superseding nothing"
expect_eq "$(sql "SELECT rx_gen || ' ' || queued_gen FROM studies WHERE study_uid='$study'")" "$N $N" \
    "study generations"
expect_eq "$(sql 'SELECT count(*) FROM studies')" 1 "studies"
expect_eq "$(sql 'SELECT count(*) || " " || count(DISTINCT sop_uid) || " " || sum(current) || " " || max(version) FROM instances')" \
    "$N $N $N 1" "instances: rows, distinct UIDs, current, highest version"
expect_eq "$(find "$T/spool/$study" -type f | wc -l)" "$N" "files in the spool"
for f in "${files[@]}"; do
    sop=$(basename "$f" .dcm)
    p="$T/spool/$study/$series/$sop.dcm"
    [ -f "$p" ] || fail "$sop missing from the spool"
    expect_eq "$(stat -c %s "$p")" "$(sql "SELECT size FROM instances WHERE sop_uid='$sop'")" "size of $sop"
done
[ -z "$(ls -A "$T/spool/.tmp")" ] || fail "stray files in spool/.tmp: $(ls -A "$T/spool/.tmp")"

stop_daemon
note "the restarted daemon's log is sane"
tail -c +$((logoff + 1)) "$T/daemon.log" > "$T/restart.log"
bad=$(grep -Ev '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z \[(info|debug)\] ' "$T/restart.log" || true)
[ -z "$bad" ] || fail "unexpected lines in the restarted daemon's log: $(printf '%s\n' "$bad" | sed -n 1,5p)"
grep -q "listening on port $PORT" "$T/restart.log" || fail "restart log lacks the listening line"
grep -q "study $study complete, job 1 queued$" "$T/restart.log" || fail "restart log lacks the completion line"
grep -q 'server: stopped' "$T/restart.log" || fail "restart log lacks the stop line"
