# A whole retraining cycle on phantoms:
# - the daemon receives CT studies and their final reports as Basic Text SRs
#   (made by DCMTK's xml2dsr from each phantom's report text), processes
#   the studies with the model in service;
# - ctglip-retrain builds its data from the index (pseudo-masks from the
#   model, findings from the reports), fine-tunes gently, and the gate
#   publishes the new model; the daemon switches before its next job and the
#   next SR carries the new model's Device UID;
# - a deliberately bad fine-tune (a learning rate that wrecks the weights)
#   is rejected by the gate and nothing changes;
# - SIGTERM (what systemd sends, and what the deadline does itself) pauses
#   the training with a checkpoint, and the next run resumes it;
# - `ctglip model rollback` brings the previous model back.
source "$CTG_ROOT/tests/lib.sh"

cp "$ROOT/models/default.ctglip" "$T/model.ctglip"
"$B/ctglip" phantom --quiet --seed 61 --count 7 --matrix 64 --thickness 6 --fov random \
    --abnormal-rate 0.8 --out "$T/ph" || fail "phantom"
MODEL=$T/model.ctglip STABLE=1 write_conf
start_daemon
devuid() { dcmdump +P 0018,1002 "$1" | sed -n 1p | sed 's/.*\[\(.*\)\].*/\1/'; }
tag() { dcmdump -q +P "$1" "$2" | sed -n '1s/.*\[\(.*\)\].*/\1/p'; }
xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'; }
make_sr() { # CASE OUT: the case's report.txt as a final Basic Text SR
    local c=$1 out=$2 first study acc text
    first=$(ls "$c"/dicom/*.dcm | sed -n 1p)
    study=$(tag 0020,000d "$first"); acc=$(tag 0008,0050 "$first")
    text=$(sed -n '/^FINDINGS:/,$p' "$c/report.txt" | xml_escape)
    cat > "$out.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<report type="Basic Text SR">
<sopclass uid="1.2.840.10008.5.1.4.1.1.88.11">BasicTextSRStorage</sopclass>
<charset>ISO_IR 192</charset>
<modality>SR</modality>
<manufacturer>ACME RIS</manufacturer>
<patient><id>$(tag 0010,0020 "$first")</id><name><last>PHANTOM</last></name></patient>
<study uid="$study"><accession><number>$acc</number></accession></study>
<series uid="$study.77"><number>77</number></series>
<instance uid="$study.77.1"><number>1</number></instance>
<document>
<completion flag="COMPLETE"></completion>
<verification flag="VERIFIED"><observer pos="1"><datetime>2026-11-01T11:00:00</datetime>
<name><last>Reader</last><first>Rita</first></name><organization>Radiology</organization></observer></verification>
<content><date>2026-11-01</date><time>10:30:00</time>
<container flag="SEPARATE">
<concept><value>11528-7</value><scheme><designator>LN</designator></scheme><meaning>Radiology Report</meaning></concept>
<text><relationship>CONTAINS</relationship>
<concept><value>121071</value><scheme><designator>DCM</designator></scheme><meaning>Finding</meaning></concept>
<value>$text</value></text>
</container>
</content>
</document>
</report>
XML
    xml2dsr "$out.xml" "$out" > "$out.log" 2>&1 || fail "xml2dsr: $(cat "$out.log")"
}

note "six studies and their report SRs"
for i in 0 1 2 3 4 5; do
    c=$(printf '%s/ph/case_%04d' "$T" $i)
    storescu -aec "$AET" 127.0.0.1 "$PORT" "$c"/dicom/*.dcm > /dev/null 2>&1 || fail "storescu $i"
    make_sr "$c" "$T/sr$i.dcm"
    storescu -aec "$AET" -aet RIS 127.0.0.1 "$PORT" "$T/sr$i.dcm" > /dev/null 2>&1 || fail "storescu SR $i"
done
wait_for 180 '[ "$(sql "SELECT count(*) FROM jobs WHERE state = 2")" = 6 ]' ||
    fail "jobs: $(sql "SELECT id, state, reason FROM jobs")"
expect_eq "$(sql "SELECT count(*) FROM jobs")" 6 "one job per study (the report SRs queue nothing)"
expect_eq "$(sql "SELECT count(*) FROM reports WHERE final = 1 AND study_uid IS NOT NULL")" 6 "final reports linked"
old_id=$("$B/ctglip" -c "$T/ctglipd.conf" model status | sed -n 's/.*identity \([0-9a-f]*\),.*/\1/p' | sed -n 1p)
sr_before=$(ls "$T"/reports/*/*/sr.dcm | sed -n 1p)
uid_before=$(devuid "$sr_before")

RT=("$B/ctglip-retrain" -c "$T/ctglipd.conf" --work "$T/retrain" --threads 2 --phantoms 2
    --min-cases 3 --holdout 20)
note "a training stopped by SIGTERM (as at its deadline) pauses with a checkpoint"
# (The deadline itself is unit-tested: unit/train_deadline.)
"${RT[@]}" --steps 400 --lr 1e-5 --margin 0.5 > "$T/rt0.log" 2>&1 &
rpid=$!
wait_for 120 'grep -q "step" "$T/rt0.log" || [ -s "$T/retrain/run/train.csv" ]' || { cat "$T/rt0.log"; fail "training did not start"; }
kill -TERM $rpid
wait $rpid || { cat "$T/rt0.log"; fail "retrain exited non-zero after SIGTERM"; }
grep -q "paused with a checkpoint" "$T/rt0.log" || { cat "$T/rt0.log"; fail "no pause"; }
[ -s "$T/retrain/run/ckpt.bin" ] || fail "no checkpoint"
grep -q '"training": true' "$T/retrain/state.json" || fail "state does not say training"

note "the resumed run finishes and the gate publishes the gentle fine-tune"
"${RT[@]}" --steps 40 --lr 1e-5 --margin 0.5 > "$T/rt1.log" 2>&1 || { cat "$T/rt1.log"; fail "retrain 1"; }
cat "$T/rt1.log" | grep "ctglip-retrain:"
grep -q "resuming the training" "$T/rt1.log" || fail "did not resume"
grep -q "published model" "$T/rt1.log" || fail "the gentle fine-tune was not published"
new_id=$(sed -n 's/.*published model \([0-9a-f]*\) at.*/\1/p' "$T/rt1.log")
[ -n "$new_id" ] && [ "$new_id" != "$old_id" ] || fail "published model identity $new_id (old $old_id)"
[ -s "$T/model.ctglip.prev" ] || fail "previous model not kept"
tail -1 "$T/retrain/decisions.jsonl" | grep -q '"decision":"published"' || fail "decision not recorded"

note "the daemon switches: the next study's SR has the new Device UID"
c="$T/ph/case_0006"
storescu -aec "$AET" 127.0.0.1 "$PORT" "$c"/dicom/*.dcm > /dev/null 2>&1 || fail "storescu 6"
wait_for 120 '[ "$(sql "SELECT count(*) FROM jobs WHERE state = 2")" = 7 ]' || fail "job 7"
study6=$(tag 0020,000d "$(ls "$c"/dicom/*.dcm | sed -n 1p)")
sr_after=$(ls "$T"/reports/"$study6"/*/sr.dcm | sed -n 1p)
uid_after=$(devuid "$sr_after")
[ "$uid_after" != "$uid_before" ] || fail "Device UID unchanged after the switch"
grep -q "switched to model ${new_id:0:16}" "$T/daemon.log" || fail "switch not logged"

note "a wrecked fine-tune is rejected"
"${RT[@]}" --since 0 --steps 30 --lr 0.5 --margin 0.02 > "$T/rt2.log" 2>&1 || { cat "$T/rt2.log"; fail "retrain 2"; }
grep "ctglip-retrain:" "$T/rt2.log"
grep -q "rejected" "$T/rt2.log" || fail "the bad model was not rejected"
now_id=$("$B/ctglip" -c "$T/ctglipd.conf" model status | sed -n 's/.*identity \([0-9a-f]*\),.*/\1/p' | sed -n 1p)
expect_eq "$now_id" "$new_id" "model in service after a rejection"

note "rollback"
"$B/ctglip" -c "$T/ctglipd.conf" model rollback > "$T/rb.log" 2>&1 || { cat "$T/rb.log"; fail "rollback"; }
now_id=$("$B/ctglip" -c "$T/ctglipd.conf" model status | sed -n 's/.*identity \([0-9a-f]*\),.*/\1/p' | sed -n 1p)
expect_eq "$now_id" "$old_id" "model in service after the rollback"
alive || fail "daemon died"
stop_daemon
echo PASS
