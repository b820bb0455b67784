# Phantom studies are real DICOM: dciodvfy (dicom3tools) finds no IOD errors
# in single-frame CT or multi-frame Enhanced CT output, storescu delivers a
# phantom study to ctglipd in JPEG lossless and RLE, and `ctglip volume`
# rebuilds from the stored copy a volume on the grid of the phantom's label
# map with the phantom's HU values.
source "$CTG_ROOT/tests/lib.sh"

iod_errors() { # FILE -> prints dciodvfy's Error lines
    dciodvfy "$1" 2>&1 | grep '^Error' || true
}

note "single-frame CT, explicit VR little endian"
"$B/ctglip" phantom --seed 7 --count 1 --matrix 96 --thickness 5 --fov abdomen --nifti \
    --out "$T/ph" > "$T/phantom.log" 2>&1 || fail "phantom: $(cat "$T/phantom.log")"
files=("$T"/ph/case_0000/dicom/*.dcm)
[ "${#files[@]}" -gt 10 ] || fail "only ${#files[@]} slices"
for f in "${files[0]}" "${files[$(( ${#files[@]} / 2 ))]}"; do
    dciodvfy "$f" > "$T/iod.txt" 2>&1
    head -3 "$T/iod.txt"
    grep -q '^CTImage' "$T/iod.txt" || fail "dciodvfy did not recognise a CT Image: $(cat "$T/iod.txt")"
    e=$(iod_errors "$f")
    [ -z "$e" ] || fail "dciodvfy errors in $f: $e"
done

note "multi-frame Enhanced CT"
"$B/ctglip" phantom --seed 7 --count 1 --matrix 96 --thickness 5 --fov abdomen --enhanced \
    --out "$T/phe" > "$T/phantom.log" 2>&1 || fail "phantom --enhanced: $(cat "$T/phantom.log")"
ef=("$T"/phe/case_0000/dicom/*.dcm)
expect_eq "${#ef[@]}" 1 "files of the Enhanced CT series"
dciodvfy "${ef[0]}" > "$T/iod.txt" 2>&1
grep -q '^EnhancedCTImage' "$T/iod.txt" || fail "dciodvfy did not recognise Enhanced CT: $(head "$T/iod.txt")"
e=$(iod_errors "${ef[0]}")
[ -z "$e" ] || fail "dciodvfy errors in Enhanced CT: $e"

note "a phantom study sent to ctglipd in JPEG lossless and RLE"
seed=11
for ts in jpeg-lossless rle; do
    seed=$((seed + 1))  # two different studies
    "$B/ctglip" phantom --seed $seed --count 1 --matrix 96 --thickness 5 --fov chest --ts "$ts" \
        --nifti --out "$T/ph-$ts" > "$T/phantom.log" 2>&1 || fail "phantom --ts $ts"
done
WORKERS=0 STABLE=2 write_conf
start_daemon
# storescu proposes only the syntax it is told to (it cannot decompress).
for ts in jpeg-lossless:-xs rle:-xr; do
    opt=${ts#*:} ts=${ts%%:*}
    storescu "$opt" -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T"/ph-$ts/case_0000/dicom/*.dcm \
        > "$T/storescu.log" 2>&1 || fail "storescu ($ts): $(cat "$T/storescu.log")"
done
n1=$(ls "$T"/ph-jpeg-lossless/case_0000/dicom | wc -l)
n2=$(ls "$T"/ph-rle/case_0000/dicom | wc -l)
expect_eq "$(sql "SELECT count(*) FROM instances WHERE transfer_syntax='1.2.840.10008.1.2.4.70'")" "$n1" "JPEG lossless instances"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE transfer_syntax='1.2.840.10008.1.2.5'")" "$n2" "RLE instances"
study=$(sql "SELECT DISTINCT s.study_uid FROM studies s JOIN series r ON r.study_ref = s.id
              JOIN instances i ON i.series_ref = r.id WHERE i.transfer_syntax = '1.2.840.10008.1.2.5'")
[ -n "$study" ] || fail "no RLE study"
"$B/ctglip" volume --out "$T/vol.nii.gz" --compare "$T/ph-rle/case_0000/ct.nii.gz" \
    --compare-grid "$T/ph-rle/case_0000/labels.nii.gz" "$T/spool/$study" > "$T/volume.log" 2>&1 \
    || fail "ctglip volume (stored RLE study against the phantom): $(cat "$T/volume.log")"
cat "$T/volume.log"
grep -q "$n2 slices" "$T/volume.log" || fail "volume did not use every slice"
grep -q "max |HU difference| 0$" "$T/volume.log" || fail "HU values differ from the phantom's"
wait_for 10 '[ "$(sql "SELECT count(*) FROM jobs")" = 2 ]' || fail "two studies, two jobs expected"
stop_daemon
