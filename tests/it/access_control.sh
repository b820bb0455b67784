# Admission control: [access] allow_ae and allow_hosts, our own called AE
# title, the per-AE association limit of an [ae NAME] section and the global
# [dicom] max_associations.  Each refusal must be an A-ASSOCIATE-RJ with the
# right reason and a daemon log line that says why; each allowed peer must
# still get in.  An association is held open by an echoscu that repeats
# C-ECHO without end and is then stopped with SIGSTOP (the daemon sees an
# idle peer; idle_timeout is 30 s).
source "$CTG_ROOT/tests/lib.sh"

HELD=()
cleanup_held() {
    local p
    for p in "${HELD[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    cleanup_lib
}
trap cleanup_held EXIT

# echo_as CALLING [CALLED] : one C-ECHO; its output goes to $T/echo.out.
echo_as() {
    echoscu -to 5 -ta 5 -td 5 -aet "$1" -aec "${2:-$AET}" 127.0.0.1 "$PORT" \
        > "$T/echo.out" 2>&1
}
accepted() { grep -c "association from $1 (127.0.0.1) accepted" "$T/daemon.log" || true; }
reloads() { grep -c "reload: configuration .* applied" "$T/daemon.log" || true; }

# The daemon must answer; start_daemon's probe (calling AE ECHOSCU) would be
# refused here, so probe as GOODAE.
start_daemon_as() {
    "$B/ctglipd" -c "$T/ctglipd.conf" >> "$T/daemon.log" 2>&1 &
    DPID=$!
    wait_for 10 'echo_as GOODAE' || fail "ctglipd did not answer C-ECHO from GOODAE"
}

# hold AE : opens an association as AE and keeps it open; its pid is HELD[-1].
hold() {
    local before
    HOLD_AE=$1
    before=$(accepted "$1")
    echoscu -aet "$1" -aec "$AET" --repeat 1000000000 127.0.0.1 "$PORT" \
        > "$T/hold-$1.log" 2>&1 &
    HELD+=($!)
    wait_for 10 '[ "$(accepted "$HOLD_AE")" -gt "$before" ]' || fail "association of $1 not accepted"
    kill -STOP "${HELD[-1]}"
}

access_conf() {
    write_conf "[access]
allow_ae = GOODAE, OTHERAE, THIRDAE
$1
[ae GOODAE]
max_associations = 1"
    sed -i 's/^\[dicom\]$/[dicom]\nmax_associations = 2/' "$T/ctglipd.conf"
}

access_conf ""
grep -q '^max_associations = 2$' "$T/ctglipd.conf" || fail "config not written as meant"
start_daemon_as

note "allowed calling AE"
check echo_as GOODAE
check echo_as OTHERAE
expect_eq "$(accepted OTHERAE)" 1 "OTHERAE associations accepted"

note "calling AE not in allow_ae"
! echo_as BADAE || fail "echoscu -aet BADAE succeeded"
grep -q "Reason: Calling AE Title Not Recognized" "$T/echo.out" \
    || fail "BADAE not rejected as unknown calling AE: $(cat "$T/echo.out")"
grep -q "association from BADAE (127.0.0.1) to $AET rejected: calling AE title 'BADAE' is not in \[access\] allow_ae" \
    "$T/daemon.log" || fail "no log line for the rejected calling AE"
expect_eq "$(accepted BADAE)" 0 "BADAE associations accepted"

note "wrong called AE"
! echo_as GOODAE WRONG || fail "echoscu -aec WRONG succeeded"
grep -q "Reason: Called AE Title Not Recognized" "$T/echo.out" \
    || fail "WRONG not rejected as unknown called AE: $(cat "$T/echo.out")"
grep -q "association from GOODAE (127.0.0.1) to WRONG rejected: called AE title 'WRONG' is not ours ('$AET')" \
    "$T/daemon.log" || fail "no log line for the wrong called AE"

note "per-AE limit: GOODAE may hold one association"
hold GOODAE
! echo_as GOODAE || fail "a second association of GOODAE was accepted"
grep -q "Reason: Local Limit Exceeded" "$T/echo.out" \
    || fail "second GOODAE association not rejected as busy: $(cat "$T/echo.out")"
grep -q "Result: Rejected Transient" "$T/echo.out" || fail "busy rejection is not transient"
grep -q "association from GOODAE (127.0.0.1) to $AET rejected: calling AE 'GOODAE' already holds 1 association(s), the limit" \
    "$T/daemon.log" || fail "no 'already holds' log line"
check echo_as OTHERAE
expect_eq "$(accepted OTHERAE)" 2 "OTHERAE accepted while GOODAE holds its one association"

note "global limit: max_associations = 2"
hold OTHERAE
! echo_as THIRDAE || fail "a third association was accepted with max_associations = 2"
grep -q "Reason: Local Limit Exceeded" "$T/echo.out" || fail "third association not rejected as busy"
grep -q "association from THIRDAE (127.0.0.1) to $AET rejected: all 2 association slots are busy" \
    "$T/daemon.log" || fail "no 'slots are busy' log line"

note "closed associations free their slots"
for p in "${HELD[@]}"; do kill -9 "$p" 2>/dev/null || true; done
# The daemon notices the closed connections within its 1 s poll.
wait_for 10 'echo_as THIRDAE' || fail "slots not freed after the held associations closed"
check echo_as GOODAE
# GOODAE: the start-up probe, the first echo, the held one and this one.
expect_eq "$(accepted GOODAE)" 4 "GOODAE associations accepted"
expect_eq "$(accepted THIRDAE)" 1 "THIRDAE associations accepted"

note "allow_hosts without loopback (SIGHUP)"
n=$(reloads)
access_conf "allow_hosts = 10.0.0.0/8"
kill -HUP "$DPID"
wait_for 10 '[ "$(reloads)" -gt "$n" ]' || fail "reload not applied"
! echo_as GOODAE || fail "echo from 127.0.0.1 accepted with allow_hosts = 10.0.0.0/8"
grep -q "association from GOODAE (127.0.0.1) to $AET rejected: peer address 127.0.0.1 is not in \[access\] allow_hosts" \
    "$T/daemon.log" || fail "no log line naming the refused peer address"
! echo_as OTHERAE || fail "echo from 127.0.0.1 accepted with allow_hosts = 10.0.0.0/8"

note "loopback allowed again (SIGHUP)"
n=$(reloads)
access_conf "allow_hosts = 10.0.0.0/8, 127.0.0.1"
kill -HUP "$DPID"
wait_for 10 '[ "$(reloads)" -gt "$n" ]' || fail "reload not applied"
check echo_as GOODAE
alive || fail "ctglipd died"
stop_daemon
