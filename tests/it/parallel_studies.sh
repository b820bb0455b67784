# Two studies of 20 instances each, interleaved over 4 storescu associations
# that run at the same time (each association carries instances of both
# studies): all 40 instances are indexed and on disk byte for byte, and once
# each study has been quiet for study_stable_seconds it is queued exactly
# once, with a job covering all 20 of its arrivals.
source "$CTG_ROOT/tests/lib.sh"

root=2.25.231932228033936708469927392542703984207
study_a=$root.7101.1 series_a=$root.7101.2
study_b=$root.7102.1 series_b=$root.7102.2

note "preparing two studies"
fixture "$T/a" "$study_a" "$series_a"
# The fixture keeps the published SOP Instance UIDs, so study B gets its own.
many_instances "$T/b" 20 "$root.7102.3" "$study_b" "$series_b"
a_files=("$T/a"/*.dcm)
b_files=("$T/b"/*.dcm)
expect_eq "${#a_files[@]}" 20 "study A files"
expect_eq "${#b_files[@]}" 20 "study B files"

# Interleave A1 B1 A2 B2 ... and deal the pairs round robin into 4 groups, so
# every group holds 5 instances of each study, alternating.
all=()
for i in $(seq 0 19); do all+=("${a_files[$i]}" "${b_files[$i]}"); done
group() { local i; for i in "${!all[@]}"; do [ $((i / 2 % 4)) = "$1" ] && echo "${all[$i]}"; done; }

WORKERS=0 STABLE=3 write_conf
start_daemon

note "4 parallel associations"
pids=()
for g in 0 1 2 3; do
    mapfile -t files < <(group "$g")
    expect_eq "${#files[@]}" 10 "files in group $g"
    expect_eq "$(printf '%s\n' "${files[@]}" | grep -c "^$T/a/")" 5 "study A files in group $g"
    storescu -aec "$AET" -aet "PAR$g" 127.0.0.1 "$PORT" "${files[@]}" \
        > "$T/storescu$g.log" 2>&1 &
    pids+=($!)
done
for g in 0 1 2 3; do
    rc=0
    wait "${pids[$g]}" || rc=$?
    [ "$rc" = 0 ] || fail "storescu $g exited with $rc: $(cat "$T/storescu$g.log")"
done
for g in 0 1 2 3; do
    expect_eq "$(grep -c "association from PAR$g (127.0.0.1) accepted" "$T/daemon.log")" 1 \
        "associations of PAR$g"
    expect_eq "$(sql "SELECT count(*) FROM instances WHERE calling_ae='PAR$g'")" 10 \
        "instances received from PAR$g"
done

expect_eq "$(sql 'SELECT count(*) FROM instances')" 40 "instances indexed"
expect_eq "$(sql 'SELECT count(*) FROM instances WHERE version=1 AND current=1')" 40 \
    "first versions"
expect_eq "$(sql 'SELECT count(*) FROM studies')" 2 "studies"
expect_eq "$(sql 'SELECT count(*) FROM series')" 2 "series"
for s in a b; do
    if [ "$s" = a ]; then st=$study_a se=$series_a; else st=$study_b se=$series_b; fi
    expect_eq "$(sql "SELECT count(*) FROM instances i JOIN series s ON i.series_ref=s.id
                      JOIN studies t ON s.study_ref=t.id
                      WHERE t.study_uid='$st' AND s.series_uid='$se'")" 20 "instances of study $s"
    expect_eq "$(sql "SELECT rx_gen FROM studies WHERE study_uid='$st'")" 20 "arrivals of study $s"
done

# Every file is where the index says, and equals what was sent.
for f in "${all[@]}"; do
    sop=$(dcmdump -q +P 0008,0018 "$f" | sed -n 's/.*\[\(.*\)\].*/\1/p')
    case $f in "$T/a"/*) st=$study_a se=$series_a ;; *) st=$study_b se=$series_b ;; esac
    p="$T/spool/$st/$se/$sop.dcm"
    [ -f "$p" ] || fail "$p missing"
    expect_eq "$(sql "SELECT path FROM instances WHERE sop_uid='$sop'")" "$st/$se/$sop.dcm" \
        "index path of $sop"
    expect_eq "$(dataset_sha "$p")" "$(dataset_sha "$f")" "data set bytes of $sop"
done
expect_eq "$(find "$T/spool" -name '*.dcm' | wc -l)" 40 "files in the spool"

note "each study queued once after the stable time"
wait_for 15 '[ "$(sql "SELECT count(*) FROM jobs")" -ge 2 ]' || fail "no jobs after the stable time"
sleep 4
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 2 "jobs, a few seconds later"
expect_eq "$(sql "SELECT study_uid || ' ' || state || ' ' || generation FROM jobs ORDER BY study_uid")" \
    "$study_a 0 20
$study_b 0 20" "one queued job per study, covering 20 arrivals"
expect_eq "$(sql 'SELECT count(*) FROM studies WHERE queued_gen = rx_gen')" 2 "studies not pending"
# A job is made only once its study has been quiet for the stable time.
expect_eq "$(sql "SELECT count(*) FROM jobs j JOIN studies t ON j.study_ref=t.id
                  WHERE j.created >= t.last_received + 3")" 2 "jobs after the quiet period"
alive || fail "ctglipd died"
stop_daemon
