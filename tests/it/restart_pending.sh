# Study completion and job leases across a restart.
#  - Two studies are pending when ctglipd stops (SIGTERM): B (calling AE with
#    [ae] study_stable_seconds = 4) and A (the global 8 s).  The daemon stays
#    down past B's deadline but not past A's.  After the restart B is queued
#    at once and A at its original persisted deadline, not restart + stable
#    seconds; each exactly once, covering its 20 arrivals.
#  - A running job whose lease expired while the daemon was down (set up with
#    sqlite3 on the stopped daemon's index) returns to the queue at start-up
#    and a worker then finishes it (done, one attempt counted); a running job
#    whose lease has not expired is left alone.
source "$CTG_ROOT/tests/lib.sh"

root=2.25.231932228033936708469927392542703984207
study_a=$root.7501.1 series_a=$root.7501.2
study_b=$root.7502.1 series_b=$root.7502.2
now() { date +%s.%N; }
# le X Y : X <= Y for decimals.
le() { [ "$(echo "$1 <= $2" | bc)" = 1 ]; }

note "preparing two studies"
fixture "$T/a" "$study_a" "$series_a"
# The fixture keeps the published SOP Instance UIDs, so study B gets its own.
many_instances "$T/b" 20 "$root.7502.3" "$study_b" "$series_b"

WORKERS=0 STABLE=8 write_conf "[ae BSCU]
study_stable_seconds = 4"
start_daemon

note "sending both studies"
storescu -aec "$AET" -aet BSCU 127.0.0.1 "$PORT" "$T/b"/*.dcm > "$T/storescu-b.log" 2>&1 \
    || fail "storescu B failed: $(cat "$T/storescu-b.log")"
storescu -aec "$AET" -aet ASCU 127.0.0.1 "$PORT" "$T/a"/*.dcm > "$T/storescu-a.log" 2>&1 \
    || fail "storescu A failed: $(cat "$T/storescu-a.log")"
expect_eq "$(sql 'SELECT count(*) FROM instances')" 40 "instances indexed"
dl_a=$(sql "SELECT deadline FROM studies WHERE study_uid='$study_a'")
dl_b=$(sql "SELECT deadline FROM studies WHERE study_uid='$study_b'")
expect_eq "$(sql "SELECT stable_seconds FROM studies WHERE study_uid='$study_a'")" 8 "A's stable time"
expect_eq "$(sql "SELECT stable_seconds FROM studies WHERE study_uid='$study_b'")" 4 "B's stable time"
expect_eq "$(sql "SELECT count(*) FROM studies WHERE abs(deadline - last_received - stable_seconds) < 0.001")" \
    2 "deadlines = last arrival + stable time"

note "stopping before either deadline"
stop_daemon
t=$(now)
le "$t" "$dl_b" || fail "the daemon took too long to stop (now $t, B's deadline $dl_b)"
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 0 "jobs before the restart"
expect_eq "$(sql 'SELECT count(*) FROM studies WHERE rx_gen > queued_gen')" 2 "pending studies"

# Down until a second after B's deadline.
sleep "$(echo "$dl_b + 1 - $(now)" | bc)"
restart=$(now)
le "$restart" "$(echo "$dl_a - 2" | bc)" || fail "too late to restart before A's deadline"
note "restarting $(echo "$dl_a - $restart" | bc) s before A's deadline"
start_daemon
expect_eq "$(sql "SELECT deadline FROM studies WHERE study_uid='$study_a'")" "$dl_a" "A's deadline after the restart"

wait_for 5 '[ "$(sql "SELECT count(*) FROM jobs WHERE study_uid='"'$study_b'"'")" = 1 ]' \
    || fail "B, overdue, was not queued right after the restart"
created_b=$(sql "SELECT created FROM jobs WHERE study_uid='$study_b'")
le "$created_b" "$(echo "$restart + 2" | bc)" || fail "B queued at $created_b, restart was at $restart"
expect_eq "$(sql "SELECT count(*) FROM jobs WHERE study_uid='$study_a'")" 0 "A's jobs before its deadline"

wait_for 15 '[ "$(sql "SELECT count(*) FROM jobs WHERE study_uid='"'$study_a'"'")" = 1 ]' \
    || fail "A was not queued"
created_a=$(sql "SELECT created FROM jobs WHERE study_uid='$study_a'")
note "A's deadline $dl_a, job created $created_a (restart + stable would be $(echo "$restart + 8" | bc))"
le "$dl_a" "$created_a" || fail "A queued at $created_a, before its deadline $dl_a"
le "$created_a" "$(echo "$dl_a + 1" | bc)" || fail "A queued at $created_a, not at its deadline $dl_a"
sleep 3
expect_eq "$(sql "SELECT study_uid || ' ' || state || ' ' || generation FROM jobs ORDER BY study_uid")" \
    "$study_a 0 20
$study_b 0 20" "one queued job per study, covering 20 arrivals"
expect_eq "$(sql 'SELECT count(*) FROM studies WHERE rx_gen > queued_gen')" 0 "pending studies"
stop_daemon

note "a running job whose lease expired while the daemon was down"
job_a=$(sql "SELECT id FROM jobs WHERE study_uid='$study_a'")
job_b=$(sql "SELECT id FROM jobs WHERE study_uid='$study_b'")
t=$(now)
sqlite3 "$T/index.db" "
UPDATE jobs SET state=1, lease_owner='elsewhere/4242/w0', lease_expires=$t - 100,
  updated=$t - 700 WHERE id=$job_a;
UPDATE jobs SET state=1, lease_owner='elsewhere/4243/w0', lease_expires=$t + 3600,
  updated=$t WHERE id=$job_b;" || fail "sqlite3 update"
expect_eq "$(sql "SELECT count(*) FROM jobs WHERE state=1 AND attempts=0")" 2 "running jobs set up"
WORKERS=1 STABLE=8 write_conf
start_daemon
wait_for 15 '[ "$(sql "SELECT state FROM jobs WHERE id='$job_a'")" = 2 ]' \
    || fail "job $job_a did not finish: $(sql "SELECT * FROM jobs WHERE id=$job_a")"
expect_eq "$(sql "SELECT state || ' ' || attempts || ' ' || coalesce(lease_owner, '-') FROM jobs WHERE id=$job_a")" \
    "2 1 -" "expired job: done, one attempt counted, no lease"
grep -q "queue: job $job_a: lease of worker elsewhere/4242/w0 expired" "$T/daemon.log" \
    || fail "no log line for the expired lease"
grep -q "worker .*: job $job_a (study $study_a, generation 20) started" "$T/daemon.log" \
    || fail "no worker started job $job_a"
expect_eq "$(sql "SELECT state || ' ' || attempts || ' ' || lease_owner FROM jobs WHERE id=$job_b")" \
    "1 0 elsewhere/4243/w0" "job with a live lease left alone"
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 2 "jobs"
stop_daemon
