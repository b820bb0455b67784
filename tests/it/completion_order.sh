# Study completion while the daemon runs, when a later study is due first.
# A (the global study_stable_seconds = 10) arrives, then B from a calling AE
# whose [ae] section sets 2 s.  B's deadline is earlier than the one the
# completion timer is armed for, so B must be queued about 2 s after its
# last instance, not when A's timer fires; A is queued at its own deadline.
# Then more instances of A (deadlines later than the armed one, which wake
# nothing) and of a new study C from B's AE (earlier again) arrive: C is
# queued first, A again once quiet for 10 s.
source "$CTG_ROOT/tests/lib.sh"

root=2.25.231932228033936708469927392542703984207
study_a=$root.7601.1 series_a=$root.7601.2
study_b=$root.7602.1 series_b=$root.7602.2
study_c=$root.7603.1 series_c=$root.7603.2
now() { date +%s.%N; }
le() { [ "$(echo "$1 <= $2" | bc)" = 1 ]; }
jobs_of() { sql "SELECT count(*) FROM jobs WHERE study_uid='$1'"; }

many_instances "$T/a" 10 "$root.7601.3" "$study_a" "$series_a"
many_instances "$T/a2" 5 "$root.7601.4" "$study_a" "$series_a"
many_instances "$T/b" 10 "$root.7602.3" "$study_b" "$series_b"
many_instances "$T/c" 5 "$root.7603.3" "$study_c" "$series_c"

WORKERS=0 STABLE=10 write_conf "[ae FASTSCU]
study_stable_seconds = 2"
start_daemon

send() { # AE DIR
    storescu -aec "$AET" -aet "$1" 127.0.0.1 "$PORT" "$2"/*.dcm > "$T/storescu.log" 2>&1 \
        || fail "storescu $2 failed: $(cat "$T/storescu.log")"
}

note "A (10 s), then B (2 s)"
send SLOWSCU "$T/a"
send FASTSCU "$T/b"
dl_a=$(sql "SELECT deadline FROM studies WHERE study_uid='$study_a'")
dl_b=$(sql "SELECT deadline FROM studies WHERE study_uid='$study_b'")
le "$dl_b" "$(echo "$dl_a - 5" | bc)" || fail "B's deadline $dl_b is not well before A's $dl_a"
wait_for 6 '[ "$(jobs_of '"$study_b"')" = 1 ]' || fail "B was not queued at its deadline"
created_b=$(sql "SELECT created FROM jobs WHERE study_uid='$study_b'")
le "$dl_b" "$created_b" || fail "B queued at $created_b, before its deadline $dl_b"
le "$created_b" "$(echo "$dl_b + 1.5" | bc)" || fail "B queued at $created_b, late for its deadline $dl_b"
expect_eq "$(jobs_of "$study_a")" 0 "A's jobs while B is queued"

note "more of A (later deadline), then C (2 s)"
send SLOWSCU "$T/a2"
send FASTSCU "$T/c"
dl_a2=$(sql "SELECT deadline FROM studies WHERE study_uid='$study_a'")
dl_c=$(sql "SELECT deadline FROM studies WHERE study_uid='$study_c'")
le "$dl_a" "$dl_a2" || fail "A's deadline moved back: $dl_a2 < $dl_a"
wait_for 6 '[ "$(jobs_of '"$study_c"')" = 1 ]' || fail "C was not queued at its deadline"
created_c=$(sql "SELECT created FROM jobs WHERE study_uid='$study_c'")
le "$created_c" "$(echo "$dl_c + 1.5" | bc)" || fail "C queued at $created_c, late for its deadline $dl_c"
expect_eq "$(jobs_of "$study_a")" 0 "A's jobs while C is queued"

wait_for 15 '[ "$(jobs_of '"$study_a"')" = 1 ]' || fail "A was not queued"
created_a=$(sql "SELECT created FROM jobs WHERE study_uid='$study_a'")
le "$dl_a2" "$created_a" || fail "A queued at $created_a, before its deadline $dl_a2"
le "$created_a" "$(echo "$dl_a2 + 1.5" | bc)" || fail "A queued at $created_a, late for its deadline $dl_a2"
expect_eq "$(sql "SELECT study_uid || ' ' || generation FROM jobs ORDER BY study_uid")" \
    "$study_a 15
$study_b 10
$study_c 5" "one job per study, covering all its arrivals"
stop_daemon
