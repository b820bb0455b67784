# The duplicate policy.  The same instance again with identical bytes is
# acknowledged with success and changes nothing: one file, one index row,
# and no new job for a study already completed.  The same SOP Instance UID
# with different content is answered 0xB000, kept next to the first copy as
# <SOP>.v2.dcm, indexed as the current version, and the study gets a new
# job that supersedes the old one.
source "$CTG_ROOT/tests/lib.sh"

STABLE=2
study=2.25.231932228033936708469927392542703984207.1.1
series=2.25.231932228033936708469927392542703984207.1.2
fixture "$T/in"
WORKERS=0 write_conf
start_daemon

note "the study, once"
storescu -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/in"/*.dcm > "$T/storescu1.log" 2>&1 \
    || fail "storescu failed: $(cat "$T/storescu1.log")"
wait_for 10 '[ "$(sql "SELECT count(*) FROM jobs")" = 1 ]' || fail "no job after the stable time"
job1=$(sql 'SELECT id FROM jobs')

f=$(ls "$T/in"/*.dcm | sed -n 1p)
sop=$(basename "$f" .dcm)
dir="$T/spool/$study/$series"
spool_state() { (cd "$T/spool" && find . -mindepth 1 | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum); }
rows() { sql "SELECT * FROM instances ORDER BY id"; sql "SELECT * FROM series"; sql "SELECT * FROM studies"; }
spool_state > "$T/spool.1"
rows > "$T/rows.1"
expect_eq "$(sql "SELECT rx_gen || ' ' || queued_gen FROM studies")" "20 20" "study generations"

note "identical bytes again: ctglip send of one instance, storescu of all 20"
out=$("$B/ctglip" send 127.0.0.1 "$PORT" "$AET" "$f" 2>&1) || fail "ctglip send of a duplicate failed: $out"
printf '%s\n' "$out" | grep -q "$sop.dcm: status 0x0000$" || fail "duplicate not answered with success: $out"
storescu -v -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/in"/*.dcm > /dev/null 2> "$T/storescu2.log" \
    || fail "storescu of duplicates failed: $(tail -n 5 "$T/storescu2.log")"
expect_eq "$(grep -c 'Received Store Response (Success)' "$T/storescu2.log")" 20 "successes for 20 duplicates"
expect_eq "$(grep -ci "$sop.*duplicate" "$T/daemon.log")" 2 "duplicates of $sop logged"
[ -z "$(ls -A "$T/spool/.tmp")" ] || fail "files left in spool/.tmp: $(ls -A "$T/spool/.tmp")"
spool_state > "$T/spool.2"
diff "$T/spool.1" "$T/spool.2" > /dev/null || fail "the spool changed: $(diff "$T/spool.1" "$T/spool.2" | sed -n 1,5p)"
rows > "$T/rows.2"
diff "$T/rows.1" "$T/rows.2" > /dev/null || fail "the index changed: $(diff "$T/rows.1" "$T/rows.2" | sed -n 1,5p)"
sleep $((STABLE + 2))
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 1 "jobs after re-sending a completed study"
expect_eq "$(sql "SELECT id || ' ' || state FROM jobs")" "$job1 0" "the first job, untouched"

note "same SOP Instance UID, different content"
cp "$f" "$T/changed.dcm"
dcmodify -q -nb -m "(0008,103e)=changed after the first send" "$T/changed.dcm" || fail "dcmodify"
expect_eq "$(dcmdump -q -Un +P 0008,0018 "$T/changed.dcm" | sed -n 's/.*\[\(.*\)\].*/\1/p')" "$sop" "SOP UID of the changed copy"
sha1=$(dataset_sha "$f")
sha2=$(dataset_sha "$T/changed.dcm")
[ "$sha1" != "$sha2" ] || fail "the changed copy has the same data set bytes"
rc=0
out=$("$B/ctglip" send 127.0.0.1 "$PORT" "$AET" "$T/changed.dcm" 2>&1) || rc=$?
printf '%s\n' "$out" | grep -q "changed.dcm: status 0xb000$" || fail "not answered 0xB000: $out"
expect_eq "$rc" 3 "ctglip send exit status for a warning"
[ -z "$(ls -A "$T/spool/.tmp")" ] || fail "files left in spool/.tmp: $(ls -A "$T/spool/.tmp")"
[ -f "$dir/$sop.dcm" ] && [ -f "$dir/$sop.v2.dcm" ] || fail "both copies not kept: $(ls "$dir" | grep "$sop")"
expect_eq "$(ls "$dir" | grep -c "^$sop\.")" 2 "files of $sop"
expect_eq "$(find "$T/spool" -type f | wc -l)" 21 "files in the spool"
expect_eq "$(dataset_sha "$dir/$sop.dcm")" "$sha1" "first copy unchanged"
expect_eq "$(dataset_sha "$dir/$sop.v2.dcm")" "$sha2" "second copy as sent"
expect_eq "$(sql "SELECT group_concat(version || ' ' || current || ' ' || path, ';') FROM
                  (SELECT * FROM instances WHERE sop_uid='$sop' ORDER BY version)")" \
    "1 0 $study/$series/$sop.dcm;2 1 $study/$series/$sop.v2.dcm" "index versions of $sop"
expect_eq "$(indexed_data_sha "$sop" 1)" "$sha1" "version 1 data set at its indexed offset"
expect_eq "$(indexed_data_sha "$sop" 2)" "$sha2" "version 2 data set at its indexed offset"
expect_eq "$(sql 'SELECT count(*) || " " || sum(current) FROM instances')" "21 20" "instance rows, current ones"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE current=1 AND sop_uid<>'$sop' AND version=1")" 19 "other instances"

note "a new job supersedes the old one"
wait_for $((STABLE + 8)) '[ "$(sql "SELECT count(*) FROM jobs")" = 2 ]' || fail "no second job"
job2=$(sql "SELECT max(id) FROM jobs")
expect_eq "$(sql "SELECT supersedes || ' ' || generation || ' ' || state FROM jobs WHERE id=$job2")" "$job1 21 0" \
    "new job: supersedes, generation, state"
expect_eq "$(sql "SELECT superseded_by || ' ' || state FROM jobs WHERE id=$job1")" "$job2 4" \
    "old job: superseded_by, state superseded"
expect_eq "$(sql "SELECT rx_gen || ' ' || queued_gen FROM studies")" "21 21" "study generations"
grep -q "job $job2 queued (supersedes job $job1[,)]" "$T/daemon.log" \
    || fail "the log does not say which job job $job2 supersedes: $(grep "job $job2 queued" "$T/daemon.log")"

note "the new version again, identical: success, nothing new"
out=$("$B/ctglip" send 127.0.0.1 "$PORT" "$AET" "$T/changed.dcm" 2>&1) || fail "re-send of version 2 failed: $out"
printf '%s\n' "$out" | grep -q "changed.dcm: status 0x0000$" || fail "re-send of version 2 not a success: $out"
sleep $((STABLE + 2))
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 2 "jobs"
expect_eq "$(sql 'SELECT count(*) FROM instances')" 21 "instance rows"
expect_eq "$(find "$T/spool" -type f | wc -l)" 21 "files in the spool"
[ -z "$(ls -A "$T/spool/.tmp")" ] || fail "files left in spool/.tmp: $(ls -A "$T/spool/.tmp")"
stop_daemon
