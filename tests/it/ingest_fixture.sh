# (a) The 20 real CT slices (TotalSegmentator example, CC BY 4.0) arrive by
# storescu, are indexed with the right attributes, and become exactly one
# queued job once the study has been quiet for study_stable_seconds.
source "$CTG_ROOT/tests/lib.sh"

fixture "$T/in"
WORKERS=0 STABLE=2 write_conf
start_daemon

note "sending 20 slices"
storescu -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/in"/*.dcm > "$T/storescu.log" 2>&1 \
    || fail "storescu failed: $(cat "$T/storescu.log")"

expect_eq "$(sql 'SELECT count(*) FROM instances')" 20 "instances indexed"
expect_eq "$(sql 'SELECT count(*) FROM series')" 1 "series"
expect_eq "$(sql 'SELECT count(*) FROM studies')" 1 "studies"
study=2.25.231932228033936708469927392542703984207.1.1
series=2.25.231932228033936708469927392542703984207.1.2
expect_eq "$(sql 'SELECT study_uid FROM studies')" "$study" "study UID"
expect_eq "$(sql "SELECT modality FROM series")" CT "modality"
expect_eq "$(sql "SELECT DISTINCT sop_class FROM instances")" 1.2.840.10008.5.1.4.1.1.2 "SOP class"
expect_eq "$(sql "SELECT DISTINCT rows || 'x' || cols FROM instances")" 512x512 "matrix"
expect_eq "$(sql "SELECT DISTINCT transfer_syntax FROM instances")" 1.2.840.10008.1.2.1 "transfer syntax"
expect_eq "$(sql "SELECT DISTINCT calling_ae FROM instances")" SCANNER1 "calling AE"
expect_eq "$(sql "SELECT DISTINCT orientation FROM instances")" '1\0\0\0\1\0' "orientation"
expect_eq "$(sql "SELECT DISTINCT pixel_spacing FROM instances")" '0.9765625\0.9765625' "pixel spacing"
expect_eq "$(sql "SELECT DISTINCT slice_thickness FROM instances")" 3.0 "slice thickness"
expect_eq "$(sql "SELECT DISTINCT image_type FROM instances")" 'ORIGINAL\PRIMARY\AXIAL\CT_SOM5 SPI' "image type"
expect_eq "$(sql "SELECT count(DISTINCT position) FROM instances")" 20 "distinct slice positions"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE received > 0 AND size > 500000")" 20 "sizes and receive times"

# Every file is where the index says, and equals what was sent.
for f in "$T/in"/*.dcm; do
    sop=$(basename "$f" .dcm)
    p="$T/spool/$study/$series/$sop.dcm"
    [ -f "$p" ] || fail "$p missing"
    expect_eq "$(dataset_sha "$p")" "$(dataset_sha "$f")" "data set bytes of $sop"
    expect_eq "$(sql "SELECT size FROM instances WHERE sop_uid='$sop'")" "$(stat -c %s "$p")" "size of $sop"
done

note "no job before the study is quiet"
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 0 "jobs right after the transfer"
wait_for 10 '[ "$(sql "SELECT count(*) FROM jobs")" = 1 ]' || fail "no job after the stable time"
sleep 3
expect_eq "$(sql 'SELECT count(*) FROM jobs')" 1 "exactly one job"
expect_eq "$(sql "SELECT state || ' ' || generation FROM jobs")" "0 20" "job queued, covering 20 arrivals"
"$B/ctglip" -c "$T/ctglipd.conf" jobs | grep -q "queued  *$study" || fail "ctglip jobs does not show the job"
"$B/ctglip" -c "$T/ctglipd.conf" studies | grep -q "$study .* 20  *queued" || fail "ctglip studies"
st=$("$B/ctglip" -c "$T/ctglipd.conf" status) || fail "ctglip status"
echo "$st"
echo "$st" | grep -q "^instances  *20$" || fail "ctglip status: instances"
echo "$st" | grep -q "^jobs  *queued 1, running 0" || fail "ctglip status: jobs"
echo "$st" | grep -q "answering C-ECHO on port $PORT" || fail "ctglip status: C-ECHO to the daemon"
"$B/ctglip" echo 127.0.0.1 "$PORT" "$AET" | grep -q success || fail "ctglip echo"
! "$B/ctglip" echo 127.0.0.1 "$PORT" WRONGAE >/dev/null 2>&1 || fail "ctglip echo to a wrong AE succeeded"
stop_daemon
