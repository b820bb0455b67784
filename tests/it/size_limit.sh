# [dicom] max_instance_mb: a data set larger than the limit is refused with
# 0xA700 (out of resources) and an Error Comment naming the limit, the
# refusal is logged, nothing of it stays in the spool or the index, and the
# association goes on: the next instance on it is stored.
source "$CTG_ROOT/tests/lib.sh"

fixture "$T/in"
small=$(ls "$T/in"/*.dcm | sed -n 1p)
mkdir -p "$T/bad"
# A copy grown past 1 MiB by a 1.5 MB OB value (Encapsulated Document) and
# given a SOP Instance UID of its own.
head -c 1500000 /dev/urandom > "$T/blob.bin"
big=$T/bad/big.dcm
cp "$(ls "$T/in"/*.dcm | sed -n 2p)" "$big"
dcmodify -q -nb -if "(0042,0011)=$T/blob.bin" -m "(0008,0018)=2.25.231932228033936708469927392542703984207.34.1" \
    "$big" || fail "dcmodify could not grow the file"
[ "$(stat -c %s "$big")" -gt 2000000 ] || fail "the grown file is only $(stat -c %s "$big") bytes"

WORKERS=0 write_conf
sed -i 's/^\[dicom\]$/[dicom]\nmax_instance_mb = 1/' "$T/ctglipd.conf"
grep -q '^max_instance_mb = 1$' "$T/ctglipd.conf" || fail "config not written as meant"
start_daemon

note "one association: the large instance, then a small one"
rc=0
out=$("$B/ctglip" --timeout 20 send 127.0.0.1 "$PORT" "$AET" "$big" "$small" 2> "$T/send.err") || rc=$?
printf '%s\n' "$out"
expect_eq "$rc" 3 "ctglip send exit status (a failed file)"
expect_eq "$(printf '%s\n' "$out" | grep -c ': status 0x')" 2 "both files answered"
printf '%s\n' "$out" | grep -q "big.dcm: status 0xa700" || fail "the large instance was not refused with 0xA700: $out"
printf '%s\n' "$out" | grep -q "$(basename "$small"): status 0x0000" || fail "the small instance after it was not stored: $out"
grep -q "status 0xa700: data set larger than 1048576 bytes" "$T/send.err" \
    || fail "no Error Comment naming the limit: $(cat "$T/send.err")"
grep -Eq "\[error\] scp\[[0-9]+\]: C-STORE 2\.25\.231932228033936708469927392542703984207\.34\.1 from CTGLIP_CLI refused: data set larger than 1048576 bytes" \
    "$T/daemon.log" || fail "no log line for the refused instance"

expect_eq "$(sql 'SELECT count(*) FROM instances')" 1 "instances indexed (the small one)"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE sop_uid LIKE '%.34.1'")" 0 "the large one indexed"
expect_eq "$(find "$T/spool" -name '*.dcm' | wc -l)" 1 "files in the spool"
[ -z "$(ls -A "$T/spool/.tmp")" ] || fail "left files in spool/.tmp: $(ls -A "$T/spool/.tmp")"
alive || fail "daemon died"
stop_daemon
