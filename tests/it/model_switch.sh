# The daemon switches models between jobs: a new model file published by an
# atomic rename (as ctglip-retrain and `ctglip model rollback` do) is
# picked up before the next job, whose SR carries the new model's Device
# UID; a damaged file published the same way is refused with the reason and
# the running model stays.
source "$CTG_ROOT/tests/lib.sh"

cp "$ROOT/models/default.ctglip" "$T/model.ctglip"
for s in 51 52 53; do
    "$B/ctglip" phantom --quiet --seed $s --count 1 --matrix 64 --thickness 6 --fov abdomen \
        --out "$T/ph$s" || fail "phantom $s"
done
# A second model: the default one calibrated on other data (new thresholds,
# new checksum).
"$B/ctglip" phantom --quiet --seed 54 --count 2 --matrix 48 --thickness 8 --fov abdomen \
    --abnormal-rate 1 --no-dicom --out "$T/cal" || fail "phantom cal"
"$B/ctglip-train" calibrate --model "$ROOT/models/default.ctglip" --data "$T/cal/manifest.jsonl" \
    --out "$T/new.ctglip" --min-positives 1 --threads 2 > "$T/cal.log" 2>&1 ||
    { cat "$T/cal.log"; fail "calibrate"; }

MODEL=$T/model.ctglip STABLE=1 write_conf
start_daemon
send() { # seed -> waits for its job, prints the SR's Device UID
    local s=$1 study
    study=$(jq -r .study_uid "$T/ph$s/case_0000/findings.json")
    storescu -aec "$AET" 127.0.0.1 "$PORT" "$T"/ph$s/case_0000/dicom/*.dcm > /dev/null 2>&1 || fail "storescu $s"
    wait_for 90 '[ "$(sql "SELECT state FROM jobs WHERE study_uid='"'$study'"'")" = 2 ]' || fail "job for $s"
    local job
    job=$(sql "SELECT id FROM jobs WHERE study_uid='$study'")
    dcmdump +P 0018,1002 "$T/reports/$study/$job/sr.dcm" | sed -n 1p | sed 's/.*\[\(.*\)\].*/\1/'
}
uid1=$(send 51)
[ -n "$uid1" ] || fail "no Device UID in the first SR"
mv "$T/new.ctglip" "$T/model.ctglip"
uid2=$(send 52)
grep -q "switched to model" "$T/daemon.log" || fail "no switch logged"
[ "$uid2" != "$uid1" ] || fail "the SR after the switch has the old Device UID $uid1"
note "Device UID $uid1 -> $uid2"
cp "$T/model.ctglip" "$T/broken.ctglip"
printf '\x01' | dd of="$T/broken.ctglip" bs=1 seek=3000 conv=notrunc 2>/dev/null
mv "$T/broken.ctglip" "$T/model.ctglip"
uid3=$(send 53)
grep -q "cannot be used; keeping" "$T/daemon.log" || fail "damaged model not reported"
expect_eq "$uid3" "$uid2" "Device UID after a damaged publish"
alive || fail "daemon died"
stop_daemon
echo PASS
