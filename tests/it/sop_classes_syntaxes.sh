# Every SOP class and transfer syntax the node promises is accepted and
# stored bit for bit, with the transfer syntax in the index: CT in implicit
# and explicit little endian, explicit big endian, JPEG lossless (process 14
# and SV1), JPEG-LS lossless and RLE; Enhanced CT; Basic Text, Enhanced,
# Comprehensive and Comprehensive 3D SR.  JPEG 2000 (the published fixture's
# own syntax) is refused at negotiation, as the README says.
source "$CTG_ROOT/tests/lib.sh"

fixture "$T/base"
src=$(ls "$T/base"/*.dcm | sed -n 1p)
root=2.25.231932228033936708469927392542703984207.7702
mkdir -p "$T/send"

# One copy per transfer syntax, each with its own SOP Instance UID.
make_ts() { # NAME TSUID COMMAND...
    local name=$1 ts=$2; shift 2
    local f="$T/send/$name.dcm"
    "$@" "$src" "$f" || fail "$name: $* failed"
    dcmodify -q -nb -m "(0008,0018)=$root.$name" "$f" || fail "dcmodify $name"
    expect_eq "$(dcmdump -q -Un +P 0002,0010 "$f" | sed -n 's/.*\[\(.*\)\].*/\1/p' | tr -d '\0')" "$ts" \
        "transfer syntax of the $name file as made"
    echo "$name $ts" >> "$T/expect.txt"
}
make_ts 1 1.2.840.10008.1.2 dcmconv -q +ti
make_ts 2 1.2.840.10008.1.2.1 dcmconv -q +te
make_ts 3 1.2.840.10008.1.2.2 dcmconv -q +tb
make_ts 4 1.2.840.10008.1.2.4.70 dcmcjpeg -q +e1
make_ts 5 1.2.840.10008.1.2.4.57 dcmcjpeg -q +el
make_ts 6 1.2.840.10008.1.2.4.80 dcmcjpls -q +el
make_ts 7 1.2.840.10008.1.2.5 dcmcrle -q

# Enhanced CT and the SR classes, made from text dumps (the node stores
# what it receives; it does not judge the IOD).
study=$(dcmdump -q +P 0020,000d "$src" | sed -n 's/.*\[\(.*\)\].*/\1/p')
make_obj() { # NAME SOPCLASS MODALITY
    cat > "$T/$1.dump" <<DUMP
(0008,0016) UI [$2]
(0008,0018) UI [$root.$1]
(0008,0060) CS [$3]
(0010,0010) PN [Test^Patient]
(0010,0020) LO [P7702]
(0020,000d) UI [$study]
(0020,000e) UI [$root.9$1]
(0020,0011) IS [90]
DUMP
    dump2dcm -q +te "$T/$1.dump" "$T/send/$1.dcm" || fail "dump2dcm $1"
    echo "$1 1.2.840.10008.1.2.1" >> "$T/expect.txt"
}
make_obj 11 1.2.840.10008.5.1.4.1.1.2.1 CT
make_obj 12 1.2.840.10008.5.1.4.1.1.88.11 SR
make_obj 13 1.2.840.10008.5.1.4.1.1.88.22 SR
make_obj 14 1.2.840.10008.5.1.4.1.1.88.33 SR
make_obj 15 1.2.840.10008.5.1.4.1.1.88.34 SR

WORKERS=0 write_conf
start_daemon
# storescu -R proposes each file's class, -xi implicit VR only, and
# -xs/-xt/-xr the JPEG lossless SV1, JPEG-LS and RLE syntaxes, so every data set travels as
# stored in its file.  storescu has no option for JPEG process 14 without
# SV1; that one goes with ctglip send, which sends files as stored.
send() { # OPTIONS FILES...
    local opt=$1; shift
    # shellcheck disable=SC2086
    storescu -v -R $opt -aec "$AET" 127.0.0.1 "$PORT" "$@" > "$T/storescu.log" 2>&1 \
        || fail "storescu $opt: $(tail -5 "$T/storescu.log")"
    # storescu -v logs "Converting transfer syntax: A -> B" even for A = B.
    ! sed -n 's/.*Converting transfer syntax: \(.*\) -> \(.*\)$/\1|\2/p' "$T/storescu.log" |
        awk -F'|' '$1 != $2 { bad = 1 } END { exit !bad }' || fail "storescu $opt converted a file"
}
send "" "$T/send"/[23].dcm "$T/send"/1[1-5].dcm
send -xi "$T/send/1.dcm"
send -xs "$T/send/4.dcm"
send -xt "$T/send/6.dcm"
send -xr "$T/send/7.dcm"
"$B/ctglip" send 127.0.0.1 "$PORT" "$AET" "$T/send/5.dcm" | grep -q "status 0x0000" \
    || fail "JPEG process 14 file not stored"

n=$(wc -l < "$T/expect.txt")
expect_eq "$(sql 'SELECT count(*) FROM instances')" "$n" "instances stored"
while read -r name ts; do
    sop="$root.$name"
    expect_eq "$(sql "SELECT transfer_syntax FROM instances WHERE sop_uid='$sop'")" "$ts" "transfer syntax of $name"
    p="$T/spool/$(sql "SELECT path FROM instances WHERE sop_uid='$sop'")"
    expect_eq "$(dataset_sha "$p")" "$(dataset_sha "$T/send/$name.dcm")" "bytes of $name"
done < "$T/expect.txt"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE sop_class LIKE '1.2.840.10008.5.1.4.1.1.88.%'")" 4 "SR instances"
expect_eq "$(sql "SELECT sop_class FROM instances WHERE sop_uid='$root.11'")" 1.2.840.10008.5.1.4.1.1.2.1 "Enhanced CT"

note "JPEG 2000 is refused at negotiation"
j2k=$(ls "$CTG_ROOT/../shared/fixtures/totalseg/example_ct_dicom"/CT.* | sed -n 1p)
if storescu -aec "$AET" 127.0.0.1 "$PORT" "$j2k" > "$T/j2k.log" 2>&1; then
    fail "a JPEG 2000 file was accepted"
fi
grep -qi "presentation context" "$T/j2k.log" || fail "storescu did not report a refused context: $(cat "$T/j2k.log")"
expect_eq "$(sql 'SELECT count(*) FROM instances')" "$n" "nothing more stored"
stop_daemon
