# The inference worker in the daemon, with the shipped default model:
# - a model file that is damaged stops the start with the reason;
# - a phantom study's job ends done with a SEG and an SR in the reports
#   folder, the findings summarised in the log, while a study with a
#   missing slice fails at once with its reason and the daemon goes on;
# - SIGHUP with a broken findings list keeps the old list (logged); a study
#   processed again (a new instance arrived) gets a new SR that names the
#   first one as its predecessor.
source "$CTG_ROOT/tests/lib.sh"

note "a damaged model stops the start"
cp "$ROOT/models/default.ctglip" "$T/bad.ctglip"
printf '\x55' | dd of="$T/bad.ctglip" bs=1 seek=5000 conv=notrunc 2>/dev/null
MODEL=$T/bad.ctglip write_conf
rc=0
timeout 20 "$B/ctglipd" -c "$T/ctglipd.conf" > "$T/bad.log" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "ctglipd started with a damaged model"
grep -q "cannot open the model.*checksum" "$T/bad.log" || { cat "$T/bad.log"; fail "no reason logged"; }

for s in 41 42; do
    "$B/ctglip" phantom --quiet --seed $s --count 1 --matrix 96 --thickness 4 --fov abdomen \
        --abnormal-rate 1 --out "$T/ph$s" || fail "phantom $s"
done
files=("$T"/ph42/case_0000/dicom/*.dcm)
rm "${files[$(( ${#files[@]} / 2 ))]}"
good=$(jq -r .study_uid "$T/ph41/case_0000/findings.json")
bad=$(jq -r .study_uid "$T/ph42/case_0000/findings.json")

MODEL=$ROOT/models/default.ctglip WORKERS=1 STABLE=2 write_conf
start_daemon
grep -q "workers: model .*default.ctglip" "$T/daemon.log" || fail "model not loaded"
for s in 41 42; do
    storescu -aec "$AET" 127.0.0.1 "$PORT" "$T"/ph$s/case_0000/dicom/*.dcm > "$T/storescu.log" 2>&1 ||
        fail "storescu ($s): $(cat "$T/storescu.log")"
done
wait_for 120 '[ "$(sql "SELECT count(*) FROM jobs WHERE state IN (2, 3)")" = 2 ]' ||
    fail "jobs did not finish: $(sql "SELECT id, study_uid, state, reason FROM jobs")"
expect_eq "$(sql "SELECT state FROM jobs WHERE study_uid='$good'")" 2 "good study done"
expect_eq "$(sql "SELECT state || ' ' || attempts FROM jobs WHERE study_uid='$bad'")" "3 1" "bad study failed at once"
case "$(sql "SELECT reason FROM jobs WHERE study_uid='$bad'")" in *missing*) ;; *) fail "reason";; esac
job=$(sql "SELECT id FROM jobs WHERE study_uid='$good'")
sr1="$T/reports/$good/$job/sr.dcm"
[ -s "$sr1" ] && [ -s "$T/reports/$good/$job/seg.dcm" ] || fail "no SR/SEG in $T/reports/$good/$job"
grep -q "job $job: series .*organ(s), .* finding(s) present" "$T/daemon.log" || fail "no findings line"
grep -q "job $job: SR .*model [0-9.]* s" "$T/daemon.log" || fail "no timing line"
dsrdump "$sr1" > "$T/sr1.txt" || fail "dsrdump"
grep -q 'Tracking Identifier.*"liver"' "$T/sr1.txt" || fail "SR has no liver group"
alive || fail "daemon died"

note "SIGHUP with a broken findings list"
cp "$ROOT/etc/findings.conf" "$T/findings.conf"
sed -i "s|^findings = .*|findings = $T/findings.conf|" "$T/ctglipd.conf"
echo "broken line without tabs" >> "$T/findings.conf"
kill -HUP "$DPID"
wait_for 10 'grep -q "findings list .* the previous list stays" "$T/daemon.log"' || fail "bad list not reported"
cp "$ROOT/etc/findings.conf" "$T/findings.conf"
kill -HUP "$DPID"
wait_for 10 'grep -q "reload: findings list .*findings.conf loaded" "$T/daemon.log"' || fail "good list not loaded"

note "the study again: a new SR naming the first"
one=$(ls "$T"/ph41/case_0000/dicom/*.dcm | sed -n 1p)
# A secondary capture-like derived image in a series of its own: the study
# changes, the primary series does not.
dcmodify -nb -gin -gse -m "ImageType=DERIVED\\SECONDARY\\AXIAL" "$one" 2>/dev/null || fail "dcmodify"
storescu -aec "$AET" 127.0.0.1 "$PORT" "$one" > "$T/storescu.log" 2>&1 || fail "storescu again"
wait_for 120 '[ "$(sql "SELECT count(*) FROM jobs WHERE study_uid='"'$good'"' AND state = 2")" = 2 ]' ||
    fail "second job did not finish: $(sql "SELECT id, state, reason FROM jobs")"
job2=$(sql "SELECT max(id) FROM jobs WHERE study_uid='$good'")
sr2="$T/reports/$good/$job2/sr.dcm"
[ -s "$sr2" ] || fail "no second SR"
uid1=$(dcmdump +P SOPInstanceUID "$sr1" | sed 's/.*\[\(.*\)\].*/\1/')
dcmdump "$sr2" > "$T/sr2.txt" || fail "dcmdump"
grep -A12 PredecessorDocumentsSequence "$T/sr2.txt" | grep -q "$uid1" ||
    fail "second SR does not name the first ($uid1) as predecessor"
grep -q "job $job2: .*replaces .*$job/sr.dcm" "$T/daemon.log" || fail "replacement not logged"
stop_daemon
echo PASS
