# A worker turns each complete study into its CT volume: a good phantom
# study's job ends done with the volume logged; a study with a missing slice
# fails for good at the first attempt with the reason (retrying cannot fix
# the input), and the daemon carries on with the next study.
source "$CTG_ROOT/tests/lib.sh"

for s in 31 32; do
    "$B/ctglip" phantom --quiet --seed $s --count 1 --matrix 64 --thickness 6 --fov abdomen \
        --out "$T/ph$s" || fail "phantom $s"
done
# Study 32 loses a slice in the middle.
files=("$T"/ph32/case_0000/dicom/*.dcm)
gone=${files[$(( ${#files[@]} / 2 ))]}
rm "$gone"

WORKERS=1 STABLE=2 write_conf
start_daemon
for s in 31 32; do
    storescu -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T"/ph$s/case_0000/dicom/*.dcm \
        > "$T/storescu.log" 2>&1 || fail "storescu ($s): $(cat "$T/storescu.log")"
done
good=$(sed -n 's/.*"study_uid":[[:space:]]*"\([0-9.]*\)".*/\1/p' "$T/ph31/case_0000/findings.json" | sed -n 1p)
bad=$(sed -n 's/.*"study_uid":[[:space:]]*"\([0-9.]*\)".*/\1/p' "$T/ph32/case_0000/findings.json" | sed -n 1p)
[ -n "$good" ] && [ -n "$bad" ] || fail "no study UIDs in findings.json"

wait_for 20 '[ "$(sql "SELECT count(*) FROM jobs WHERE state IN (2, 3)")" = 2 ]' \
    || fail "jobs did not finish: $(sql "SELECT id, study_uid, state, reason FROM jobs")"
expect_eq "$(sql "SELECT state || ' ' || attempts FROM jobs WHERE study_uid='$good'")" "2 0" "good study: done, no failed attempt"
expect_eq "$(sql "SELECT state || ' ' || attempts FROM jobs WHERE study_uid='$bad'")" "3 1" \
    "study with a missing slice: failed at the first attempt"
reason=$(sql "SELECT reason FROM jobs WHERE study_uid='$bad'")
echo "reason: $reason"
case "$reason" in *missing*) ;; *) fail "reason does not say a slice is missing: $reason" ;; esac
n=$(ls "$T"/ph31/case_0000/dicom | wc -l)
grep -q "volume from series .* ($n slices): 64x64x$n" "$T/daemon.log" || fail "no volume logged for the good study"
"$B/ctglip" -c "$T/ctglipd.conf" jobs failed | grep -q "missing" || fail "ctglip jobs failed does not show the reason"
alive || fail "daemon died"
stop_daemon
