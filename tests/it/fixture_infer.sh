# The real CT fixture (20 slices of TotalSegmentator's example data, CC BY
# 4.0; ../shared/fixtures/totalseg) through the model:
# - `ctglip infer` on the original JPEG 2000 files fails with a reason that
#   says so (DCMTK has no JPEG 2000 codec);
# - decompressed as a PACS would send them, `ctglip infer` writes a SEG and
#   an SR that dciodvfy accepts without errors;
# - sent to the daemon by storescu, the job ends done with both written.
source "$CTG_ROOT/tests/lib.sh"

orig=${CTG_FIXTURES:-$ROOT/../shared/fixtures}/totalseg/example_ct_dicom
rc=0
"$B/ctglip" infer --out "$T/j2k" "$orig" > "$T/j2k.log" 2>&1 || rc=$?
[ "$rc" = 1 ] || fail "infer on JPEG 2000 exited $rc"
grep -q "JPEG 2000" "$T/j2k.log" || { cat "$T/j2k.log"; fail "no JPEG 2000 reason"; }

fixture "$T/fx"
"$B/ctglip" infer --out "$T/out" "$T/fx" > "$T/infer.txt" 2> "$T/infer.log" ||
    { cat "$T/infer.log"; fail "ctglip infer on the fixture"; }
cat "$T/infer.txt"
grep -q "organ(s)" "$T/infer.txt" || fail "no findings table"
for f in seg sr; do
    [ -s "$T/out/$f.dcm" ] || fail "no $f.dcm"
    dciodvfy "$T/out/$f.dcm" > "$T/$f.vfy" 2>&1 || true
    if grep -q '^Error' "$T/$f.vfy"; then cat "$T/$f.vfy"; fail "dciodvfy errors in $f.dcm"; fi
done

MODEL=$ROOT/models/default.ctglip STABLE=1 write_conf
start_daemon
storescu -aec "$AET" 127.0.0.1 "$PORT" "$T"/fx/*.dcm > "$T/storescu.log" 2>&1 || fail "storescu"
wait_for 60 '[ "$(sql "SELECT count(*) FROM jobs WHERE state IN (2, 3)")" = 1 ]' || fail "job did not finish"
expect_eq "$(sql "SELECT state FROM jobs")" 2 "fixture job done: $(sql "SELECT reason FROM jobs")"
ls "$T"/reports/*/*/sr.dcm "$T"/reports/*/*/seg.dcm > /dev/null || fail "no reports"
stop_daemon
echo PASS
