# A peer that stops in the middle of a data set (a frozen sender, a cut
# cable) must not hold its association slot: after dimse_timeout without a
# PDU the daemon aborts the association with a logged reason, removes the
# unfinished temp file, and the calling AE, whose limit is one association,
# can connect again and store.  What was acknowledged before the stall is
# kept; the half-received instance is not indexed.
source "$CTG_ROOT/tests/lib.sh"

N=60
uidroot=2.25.231932228033936708469927392542703984207.33
many_instances "$T/in" "$N" "$uidroot"
files=("$T/in"/*.dcm)
fixture "$T/more"

WORKERS=0 write_conf "[ae STALLER]
max_associations = 1"
sed -i 's/^\[dicom\]$/[dicom]\ndimse_timeout = 3/' "$T/ctglipd.conf"
grep -q '^dimse_timeout = 3$' "$T/ctglipd.conf" || fail "config not written as meant"
start_daemon

note "sending, then freezing the sender inside a C-STORE"
# Small socket buffers (DCMTK reads TCP_BUFFER_LENGTH), so a data set cannot
# vanish into the kernel at once and the sender is caught mid-data set.
TCP_BUFFER_LENGTH=65536 storescu -v -aec "$AET" -aet STALLER 127.0.0.1 "$PORT" "${files[@]}" \
    > /dev/null 2> "$T/storescu1.log" &
SPID=$!
freeze_in_cstore "$SPID"
t0=$SECONDS
acked=$(grep -c 'Received Store Response (Success)' "$T/storescu1.log" || true)
note "frozen at try $FROZE_AT after $acked acknowledgements"
[ "$acked" -lt "$N" ] || fail "everything was acknowledged before the freeze"

# The slot is taken: a second association of STALLER is refused as busy.
echoscu -to 5 -aet STALLER -aec "$AET" 127.0.0.1 "$PORT" > "$T/echo-busy.log" 2>&1 \
    && fail "a second STALLER association was accepted while the first holds the slot"
grep -q "already holds 1 association" "$T/daemon.log" || fail "no log line for the busy slot"

note "waiting for dimse_timeout (3 s)"
aborted() { grep -Eq "\[warn\] scp\[[0-9]+\]: DIMSE failure with STALLER, aborting" "$T/daemon.log"; }
wait_for 10 aborted || fail "no logged reason for aborting the stalled association"
took=$((SECONDS - t0))
[ "$took" -ge 2 ] || fail "the stalled association was dropped after $took s, before dimse_timeout"
wait_for 5 '! has_part' || fail "the temp file of the stalled C-STORE is still there"
alive || fail "daemon died"

# The slot comes free at once, not after the frozen peer would have closed
# its end (it never does) or another socket timeout.
ms() { date +%s%3N; }
t1=$(ms)
until echoscu -to 5 -aet STALLER -aec "$AET" 127.0.0.1 "$PORT" > /dev/null 2>&1; do
    [ $(( $(ms) - t1 )) -lt 10000 ] || fail "STALLER still refused 10 s after the abort"
    sleep 0.1
done
freed=$(( $(ms) - t1 ))
note "slot free ${freed} ms after the abort was logged"
[ "$freed" -lt 1500 ] || fail "the stalled association held its slot for $freed ms after the abort"

note "the calling AE connects again and stores"
storescu -to 10 -aec "$AET" -aet STALLER 127.0.0.1 "$PORT" "$T/more"/*.dcm > "$T/storescu2.log" 2>&1 \
    || fail "STALLER could not store after the stall: $(cat "$T/storescu2.log")"
expect_eq "$(sql "SELECT count(*) FROM instances")" $((acked + 20)) \
    "instances indexed (acknowledged before the stall + the 20 sent after)"
[ -z "$(ls -A "$T/spool/.tmp")" ] || fail "left files in spool/.tmp: $(ls -A "$T/spool/.tmp")"

kill -CONT "$SPID" 2>/dev/null || true
kill "$SPID" 2>/dev/null || true
wait "$SPID" 2>/dev/null || true
SPID=
stop_daemon
