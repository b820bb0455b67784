# Configuration check, reload and shutdown:
#  - `ctglipd -t -c FILE` accepts a good file and names FILE:LINE for a bad one;
#  - SIGHUP applies a changed [access] allow_ae at once, both ways;
#  - SIGHUP with a broken file logs the error and keeps the running config;
#  - SIGTERM while idle exits 0 and logs "server: stopped";
#  - SIGTERM in the middle of a 100-instance transfer lets the association
#    finish or aborts it within shutdown_grace_seconds, exits 0, and every
#    instance storescu saw acknowledged is indexed and on disk after a
#    restart.  The sender is slowed down by stopping and continuing it, so the
#    signal really falls inside the transfer.
source "$CTG_ROOT/tests/lib.sh"

root=2.25.231932228033936708469927392542703984207
study=$root.7401.1 series=$root.7401.2
N=100
GRACE=2

access_conf() {
    WORKERS=0 write_conf "[access]
allow_ae = $1"
}
echo_as() {
    echoscu -to 5 -ta 5 -td 5 -aet "$1" -aec "$AET" 127.0.0.1 "$PORT" > "$T/echo.out" 2>&1
}
admitted() { echo_as "$1"; }
refused() {
    ! echo_as "$1" || return 1
    grep -q "Reason: Calling AE Title Not Recognized" "$T/echo.out"
}
reloads() { grep -c "reload: configuration .* applied" "$T/daemon.log" || true; }
kept() { grep -c "keeping the running configuration" "$T/daemon.log" || true; }
stopped() { grep -c "server: stopped" "$T/daemon.log" || true; }
# lineno FILE REGEX : the number of the first line of FILE that matches.
lineno() { grep -n -m1 -e "$2" "$1" | cut -d: -f1; }

note "ctglipd -t"
access_conf "ECHOSCU, ALPHA"
out=$("$B/ctglipd" -t -c "$T/ctglipd.conf" 2>&1) || fail "ctglipd -t rejected a good file: $out"
expect_eq "$out" "ctglipd: configuration $T/ctglipd.conf is valid" "ctglipd -t on a good file"
# bad_file NAME SED-SCRIPT REGEX : a copy of the good file, edited; the
# offending line is the one matching REGEX.
bad_file() {
    sed "$2" "$T/ctglipd.conf" > "$T/$1.conf"
    local line rc=0
    line=$(lineno "$T/$1.conf" "$3")
    [ -n "$line" ] || fail "$1.conf: edit did not apply"
    out=$("$B/ctglipd" -t -c "$T/$1.conf" 2>&1) || rc=$?
    [ "$rc" != 0 ] || fail "ctglipd -t accepted $1.conf: $out"
    case $out in
    *"$T/$1.conf:$line: "*) ;;
    *) fail "ctglipd -t on $1.conf: expected '$T/$1.conf:$line:' in '$out'" ;;
    esac
}
bad_file unknown_key '/^\[queue\]$/a workerz = 2' '^workerz'
bad_file bad_value 's/^acse_timeout = 5$/acse_timeout = five/' '^acse_timeout = five'
bad_file bad_ae 's/^allow_ae = .*/allow_ae = ECHOSCU, ALPHA\\BETA/' '^allow_ae'
bad_file syntax '/^\[store\]$/i this line is not a key' '^this line'
bad_file unknown_section '$a [nosuchsection]\nkey = 1' '^key = 1'

note "SIGHUP: a changed allow_ae applies at once"
start_daemon
admitted ALPHA || fail "ALPHA refused: $(cat "$T/echo.out")"
refused BETA || fail "BETA not refused: $(cat "$T/echo.out")"
n=$(reloads)
access_conf "ECHOSCU, BETA"
kill -HUP "$DPID"
wait_for 10 '[ "$(reloads)" -gt "$n" ]' || fail "reload not applied"
admitted BETA || fail "BETA refused after the reload: $(cat "$T/echo.out")"
refused ALPHA || fail "ALPHA not refused after the reload: $(cat "$T/echo.out")"
expect_eq "$(stopped)" 0 "daemon stops"

note "SIGHUP with a broken file keeps the running configuration"
# The broken file would let ALPHA in and shut BETA out if it were applied.
access_conf "ECHOSCU, ALPHA"
printf '[dicom]\nmax_associations = lots\n' >> "$T/ctglipd.conf"
line=$(lineno "$T/ctglipd.conf" '^max_associations = lots')
n=$(reloads) k=$(kept)
kill -HUP "$DPID"
wait_for 10 '[ "$(kept)" -gt "$k" ]' || fail "no error logged for the broken file"
grep -q "\[error\] reload: $T/ctglipd.conf:$line: .*keeping the running configuration" \
    "$T/daemon.log" || fail "the reload error does not name $T/ctglipd.conf:$line"
expect_eq "$(reloads)" "$n" "reloads applied"
alive || fail "ctglipd died on a broken reload"
admitted BETA || fail "BETA refused after a broken reload: $(cat "$T/echo.out")"
refused ALPHA || fail "ALPHA admitted after a broken reload: $(cat "$T/echo.out")"

note "SIGTERM while idle"
stop_daemon
expect_eq "$(stopped)" 1 "'server: stopped' lines"

note "making $N instances"
many_instances "$T/in" "$N" "$root.7401.3" "$study" "$series"
files=("$T/in"/*.dcm)
expect_eq "${#files[@]}" "$N" "instances made"

note "SIGTERM during a transfer (shutdown_grace_seconds = $GRACE)"
WORKERS=0 write_conf
sed -i "s/^shutdown_grace_seconds = .*/shutdown_grace_seconds = $GRACE/" "$T/ctglipd.conf"
grep -q "^shutdown_grace_seconds = $GRACE\$" "$T/ctglipd.conf" || fail "config not written as meant"
start_daemon
pstate() { awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true; }
running() { local s; s=$(pstate "$1"); [ -n "$s" ] && [ "$s" != Z ]; }
acked() { grep -c 'Received Store Response (Success)' "$T/storescu.log" || true; }
# The sender stops itself before it starts; it then runs 20 ms in every 120
# until the SIGTERM, and 5 ms in every 405 after it, so that the rest of the
# transfer would take well beyond the grace time if nothing aborted it.
(kill -STOP "$BASHPID"; exec storescu -v -aec "$AET" -aet SLOWSCU 127.0.0.1 "$PORT" \
    "${files[@]}") > /dev/null 2> "$T/storescu.log" &
SPID=$!
wait_for 10 '[ "$(pstate $SPID)" = T ]' || fail "sender did not stop itself"
t_term= t_exit= acked_at_term=
end=$(( $(date +%s) + 50 ))
while running "$SPID"; do
    [ "$(date +%s)" -le "$end" ] || fail "the transfer did not end"
    kill -CONT "$SPID" 2>/dev/null || true
    if [ -z "$t_term" ]; then sleep 0.02; else sleep 0.005; fi
    kill -STOP "$SPID" 2>/dev/null || true
    if [ -z "$t_term" ] && [ "$(acked)" -ge 10 ]; then
        acked_at_term=$(acked)
        [ "$acked_at_term" -lt "$N" ] || fail "the transfer ended before the SIGTERM"
        t_term=$(date +%s.%N)
        kill -TERM "$DPID"
    fi
    if [ -n "$t_term" ] && [ -z "$t_exit" ] && ! running "$DPID"; then t_exit=$(date +%s.%N); fi
    if [ -z "$t_term" ]; then sleep 0.1; else sleep 0.4; fi
done
srv_rc=0
wait "$SPID" || srv_rc=$?
[ -n "$t_term" ] || fail "the transfer ended before 10 acknowledgements"
rc=0
wait "$DPID" || rc=$?
[ -n "$t_exit" ] || t_exit=$(date +%s.%N)
DPID=
expect_eq "$rc" 0 "ctglipd exit status after SIGTERM during a transfer"
took=$(echo "$t_exit - $t_term" | bc)
note "SIGTERM after $acked_at_term acknowledgements; daemon exited after $took s; storescu exit $srv_rc, $(acked) acknowledged"
[ "$(echo "$took <= $GRACE + 4" | bc)" = 1 ] || fail "shutdown took $took s with shutdown_grace_seconds = $GRACE"
expect_eq "$(stopped)" 2 "'server: stopped' lines"
grep -q "server: SIGTERM: stopping (no new associations, draining 1)" "$T/daemon.log" \
    || fail "the SIGTERM did not find the association open"
if [ "$(acked)" -lt "$N" ]; then
    grep -q "association(s) still open after $GRACE s; aborting them" "$T/daemon.log" \
        || fail "the transfer was cut short, but not by the grace timeout"
    [ "$srv_rc" != 0 ] || fail "storescu exited 0 without all acknowledgements"
fi

note "after a restart every acknowledged instance is indexed"
awk '/Sending file: /{f=$NF} /Received Store Response \(Success\)/{print f}' "$T/storescu.log" \
    > "$T/acked.txt"
expect_eq "$(wc -l < "$T/acked.txt")" "$(acked)" "acknowledged files found in the log"
start_daemon
for f in $(cat "$T/acked.txt"); do
    sop=$(basename "$f" .dcm)
    expect_eq "$(sql "SELECT count(*) FROM instances WHERE sop_uid='$sop'")" 1 "index rows of $sop"
    p="$T/spool/$study/$series/$sop.dcm"
    [ -f "$p" ] || fail "$p missing"
    expect_eq "$(dataset_sha "$p")" "$(dataset_sha "$f")" "data set bytes of $sop"
done
# Nothing is indexed without its file.
sql "SELECT path FROM instances" > "$T/indexed.txt"
while read -r rel; do [ -f "$T/spool/$rel" ] || fail "indexed but missing: $rel"; done < "$T/indexed.txt"
[ "$(wc -l < "$T/indexed.txt")" -ge "$(acked)" ] || fail "fewer instances indexed than acknowledged"
stop_daemon
