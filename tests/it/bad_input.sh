# Malformed and unacceptable input after a good study is stored: a truncated
# data set, missing Study/Series/SOP Instance UIDs, UIDs that would escape
# the spool, a non-CT SOP class and an element declaring a 4 GiB length.
# Each is refused with a failure status (or a refused presentation context),
# the refusal is logged with its reason, the daemon stays up, and the stored
# study is untouched: same files, same bytes, same index rows, no new job.
source "$CTG_ROOT/tests/lib.sh"

fixture "$T/in"
WORKERS=0 STABLE=2 write_conf
start_daemon

note "storing the 20 fixture slices"
storescu -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/in"/*.dcm > "$T/storescu.log" 2>&1 \
    || fail "storescu failed: $(cat "$T/storescu.log")"
expect_eq "$(sql 'SELECT count(*) FROM instances')" 20 "instances indexed"
wait_for 10 '[ "$(sql "SELECT count(*) FROM jobs")" = 1 ]' || fail "no job for the good study"

# Everything under the spool (folders too) with the hash of every file, and
# every index row: none of it may change from here on.
spool_state() {
    (cd "$T/spool" && find . -mindepth 1 | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}
index_state() {
    local t
    for t in patients studies series instances jobs; do
        echo "-- $t"
        sql "SELECT * FROM $t ORDER BY id"
    done
}
spool_state > "$T/spool.before"
index_state > "$T/index.before"
expect_eq "$(grep -c '\.dcm$' "$T/spool.before")" 40 "spool listing (20 files, each listed and hashed)"

# A file to spoil: one of the stored slices, so every bad copy below also
# claims the SOP Instance UID of an instance already held.
good=$(ls "$T/in"/*.dcm | sed -n 1p)
sop=$(basename "$good" .dcm)
mkdir -p "$T/bad"
uid_of() { dcmdump -q -Un +P "$2" "$1" | sed -n 's/.*\[\(.*\)\].*/\1/p'; }

# after_case NAME REASON-REGEX : the daemon is up, answers C-ECHO, logged a
# warning or error matching the reason since the case began, and the spool
# and index are as before.
after_case() {
    local name=$1 reason=$2
    alive || fail "$name: ctglipd died"
    echoscu -to 5 -aec "$AET" 127.0.0.1 "$PORT" > /dev/null 2>&1 || fail "$name: no C-ECHO afterwards"
    tail -c +$((logoff + 1)) "$T/daemon.log" | grep -Ei "\[(warn|error)\] .*($reason)" > /dev/null \
        || fail "$name: no reason matching '$reason' in the daemon log"
    [ -z "$(ls -A "$T/spool/.tmp")" ] || fail "$name: left files in spool/.tmp: $(ls -A "$T/spool/.tmp")"
    spool_state > "$T/spool.after"
    diff "$T/spool.before" "$T/spool.after" > "$T/spool.diff" || fail "$name: the spool changed: $(head -n 5 "$T/spool.diff")"
    index_state > "$T/index.after"
    diff "$T/index.before" "$T/index.after" > "$T/index.diff" || fail "$name: the index changed: $(head -n 5 "$T/index.diff")"
    [ ! -e "$T/etc" ] && [ ! -e "$T/spool/etc" ] || fail "$name: something was written outside the spool"
}

# send_bad NAME FILE REASON-REGEX : ctglip send must print a failure status
# (not success, not a warning) with the peer's Error Comment.
send_bad() {
    local name=$1 file=$2 reason=$3 out rc=0 st
    note "($name) $(basename "$file")"
    logoff=$(stat -c %s "$T/daemon.log")
    out=$("$B/ctglip" --timeout 20 send 127.0.0.1 "$PORT" "$AET" "$file" 2> "$T/send-$name.err") || rc=$?
    st=$(printf '%s\n' "$out" | sed -n 's/.*: status 0x\([0-9a-fA-F]\{4\}\)$/\1/p')
    [ -n "$st" ] || fail "$name: no status from ctglip send (exit $rc): $out $(cat "$T/send-$name.err")"
    case "$st" in
        0000) fail "$name: answered success" ;;
        [bB]???) fail "$name: answered only a warning (0x$st)" ;;
    esac
    [ "$rc" = 3 ] || fail "$name: ctglip send exit status $rc, expected 3 (a failed file)"
    grep -Eq "status 0x$st: .+" "$T/send-$name.err" || fail "$name: no Error Comment in the response"
    after_case "$name" "$reason"
}

# (a) Truncated in the middle of the pixel data, at an even offset.  The
# pixel data is the file's last element, so its value is the last plen bytes.
size=$(stat -c %s "$good")
plen=$(dcmdump -q -M +P 7fe0,0010 "$good" | sed -n 's/.*# *\([0-9]*\),.*/\1/p')
[ "${plen:-0}" -gt 1000 ] || fail "no pixel data length in $good"
expect_eq "$(tail -c $((plen + 12)) "$good" | head -c 4 | od -An -tx1 | tr -d ' \n')" e07f1000 "pixel data is last"
head -c $(( (size - plen / 2) & ~1 )) "$good" > "$T/bad/truncated.dcm"
send_bad a "$T/bad/truncated.dcm" 'parse|premature|truncat|end of'

# (b) (c) (d) Study, Series, SOP Instance UID erased from the data set.
for c in "b (0020,000d) Study" "c (0020,000e) Series" "d (0008,0018) SOP"; do
    set -- $c
    cp "$good" "$T/bad/no-$3.dcm"
    dcmodify -q -nb -e "$2" "$T/bad/no-$3.dcm" || fail "dcmodify -e $2"
    [ -z "$(uid_of "$T/bad/no-$3.dcm" "${2//[()]/}")" ] || fail "$2 still in the bad file"
    [ -n "$(uid_of "$T/bad/no-$3.dcm" 0002,0003)" ] || fail "no SOP Instance UID in the meta header of no-$3"
    send_bad "$1" "$T/bad/no-$3.dcm" "$3 Instance UID"
done

# (e) Study UIDs that would become '..' or '/' in a spool path.
for c in "e1 1.2/../../etc" "e2 1..2"; do
    set -- $c
    cp "$good" "$T/bad/uid-$1.dcm"
    dcmodify -q -nb -m "(0020,000d)=$2" "$T/bad/uid-$1.dcm" || fail "dcmodify could not set Study UID $2"
    expect_eq "$(uid_of "$T/bad/uid-$1.dcm" 0020,000d)" "$2" "Study UID in the bad file"
    send_bad "$1" "$T/bad/uid-$1.dcm" 'invalid.*UID|UID.*invalid'
done

# (f) MR Image Storage: not a class we take; refused at negotiation.
note "(f) MR Image Storage"
cp "$good" "$T/bad/mr.dcm"
dcmodify -q -nb -m "(0008,0016)=1.2.840.10008.5.1.4.1.1.4" "$T/bad/mr.dcm" || fail "dcmodify SOP class"
expect_eq "$(uid_of "$T/bad/mr.dcm" 0008,0016)" 1.2.840.10008.5.1.4.1.1.4 "SOP class in the data set"
expect_eq "$(uid_of "$T/bad/mr.dcm" 0002,0002)" 1.2.840.10008.5.1.4.1.1.4 "SOP class in the meta header"
logoff=$(stat -c %s "$T/daemon.log")
rc=0
storescu -R -v -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/bad/mr.dcm" > "$T/storescu-mr.log" 2>&1 || rc=$?
[ "$rc" != 0 ] || fail "storescu reported success for an MR image: $(cat "$T/storescu-mr.log")"
grep -Eq 'No presentation context|Association Rejected|No Acceptable Presentation Contexts' "$T/storescu-mr.log" \
    || fail "storescu did not report a refused context: $(cat "$T/storescu-mr.log")"
grep -q 'Received Store Response' "$T/storescu-mr.log" && fail "a C-STORE of the MR image was answered"
after_case f 'presentation context|SOP class'
# The same file by ctglip send: it must not get through either.
out=$("$B/ctglip" send 127.0.0.1 "$PORT" "$AET" "$T/bad/mr.dcm" 2>&1) && fail "ctglip send of MR succeeded: $out"
printf '%s\n' "$out" | grep -q 'mr.dcm: not sent' || fail "ctglip send of MR: $out"
after_case f2 'presentation context|SOP class'

# (g) An element after the pixel data that declares a length of 0xFFFFFFF0.
cp "$good" "$T/bad/huge-length.dcm"
printf '\341\177\020\000OB\000\000\360\377\377\377\001\002\003\004' >> "$T/bad/huge-length.dcm"
[ $(( $(stat -c %s "$T/bad/huge-length.dcm") % 2 )) = 0 ] || fail "odd file length"
expect_eq "$(tail -c 16 "$T/bad/huge-length.dcm" | od -An -tx1 | tr -d ' \n')" e17f10004f420000f0ffffff01020304 "appended element"
send_bad g "$T/bad/huge-length.dcm" 'parse|larger|premature|length'

note "still one job after the stable time, and the good study is intact"
sleep 3
index_state > "$T/index.after"
diff "$T/index.before" "$T/index.after" > /dev/null || fail "the index changed after the bad input"
for f in "$T/in"/*.dcm; do
    s=$(basename "$f" .dcm)
    expect_eq "$(dataset_sha "$T/spool/2.25.231932228033936708469927392542703984207.1.1/2.25.231932228033936708469927392542703984207.1.2/$s.dcm")" \
        "$(dataset_sha "$f")" "data set bytes of $s"
done
stop_daemon
