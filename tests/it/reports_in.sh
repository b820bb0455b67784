# Radiology reports coming in.  A text report for a study that has not
# arrived waits in the drop folder (stored, unlinked); a phantom CT study
# is sent with storescu and queued once; then its final report as a Basic
# Text SR (made by DCMTK's xml2dsr from the phantom's own report text):
# the SR is stored and its text becomes a report linked to the study, and
# no second job is queued.  Our own SR forwarded back is kept as an
# instance only.  The second study arrives and the waiting report links to
# it (by accession) and its file moves to done/; an unusable file goes to
# failed/ with its reason.  `ctglip reports` and /status show the reports.
source "$CTG_ROOT/tests/lib.sh"

STABLE=2
HTTP=$(free_port)
[ "$HTTP" = "${PORT:=$(free_port)}" ] && HTTP=$((HTTP + 1))
DROP="$T/reports-in"
WORKERS=0 write_conf "[reports]
drop_folder = $DROP
poll_seconds = 1
[http]
port = $HTTP"

"$B/ctglip" phantom --count 2 --matrix 64 --out "$T/ph" --quiet || fail "phantom"
tag() { dcmdump -q +P "$1" "$2" | sed -n '1s/.*\[\(.*\)\].*/\1/p'; }
f1=("$T/ph/case_0000/dicom"/*.dcm); first1=${f1[0]}
f2=("$T/ph/case_0001/dicom"/*.dcm); first2=${f2[0]}
s1=$(tag 0020,000d "$first1"); acc1=$(tag 0008,0050 "$first1")
s2=$(tag 0020,000d "$first2"); acc2=$(tag 0008,0050 "$first2")
n1=${#f1[@]}
[ -n "$s1" ] && [ -n "$acc1" ] && [ -n "$s2" ] && [ -n "$acc2" ] || fail "phantom UIDs/accessions"
note "study 1 $s1 ($acc1, $n1 slices), study 2 $s2 ($acc2)"

start_daemon
[ -d "$DROP/done" ] && [ -d "$DROP/failed" ] || fail "drop folder and its done/, failed/ not created"

note "a text report for study 2, by accession, before the study"
cp "$T/ph/case_0001/report.txt" "$DROP/.incoming"
mv "$DROP/.incoming" "$DROP/$acc2.txt"
printf 'no key in this name\n' > "$DROP/not an accession number at all.txt"
wait_for 10 '[ "$(sql "SELECT count(*) FROM reports WHERE accession='"'$acc2'"' AND study_uid IS NULL")" = 1 ]' \
    || fail "the early report was not stored unlinked"
wait_for 10 '[ -f "$DROP/failed/not an accession number at all.txt.why" ]' || fail "bad file not in failed/"
grep -q "neither" "$DROP/failed/not an accession number at all.txt.why" || fail "failed/ reason: $(cat "$DROP"/failed/*.why)"
sleep 1.5
[ -f "$DROP/$acc2.txt" ] || fail "the early report left the drop folder before its study came"
expect_eq "$(sql 'SELECT count(*) FROM reports')" 1 "reports before any study"

note "study 1 by storescu: one job"
storescu -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/ph/case_0000/dicom"/*.dcm > "$T/storescu1.log" 2>&1 \
    || fail "storescu of study 1: $(tail -n 5 "$T/storescu1.log")"
wait_for $((STABLE + 8)) '[ "$(sql "SELECT count(*) FROM jobs")" = 1 ]' || fail "no job for study 1"

# A Basic Text SR (TID 2000 shape) carrying the phantom's report: one TEXT
# per section of report.txt, under Findings or Impressions containers.
xml_escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'; }
make_sr() { # OUT SOP MANUFACTURER
    local findings impression
    findings=$(sed -n '/^FINDINGS:/,/^IMPRESSION:/p' "$T/ph/case_0000/report.txt" | sed '1d;$d' | xml_escape)
    impression=$(sed -n '/^IMPRESSION:/,$p' "$T/ph/case_0000/report.txt" | sed '1d' | xml_escape)
    cat > "$1.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<report type="Basic Text SR">
<sopclass uid="1.2.840.10008.5.1.4.1.1.88.11">BasicTextSRStorage</sopclass>
<charset>ISO_IR 192</charset>
<modality>SR</modality>
<manufacturer>$3</manufacturer>
<patient><id>PH1</id><name><last>PHANTOM</last><first>CASE0000</first></name></patient>
<study uid="$s1"><accession><number>$acc1</number></accession></study>
<series uid="$2.1"><number>90</number></series>
<instance uid="$2"><number>1</number></instance>
<document>
<completion flag="COMPLETE"></completion>
<verification flag="VERIFIED"><observer pos="1"><datetime>2024-01-02T11:00:00</datetime>
<name><last>Reader</last><first>Rita</first></name><organization>Radiology</organization></observer></verification>
<content><date>2024-01-02</date><time>10:30:00</time>
<container flag="SEPARATE">
<concept><value>11528-7</value><scheme><designator>LN</designator></scheme><meaning>Radiology Report</meaning></concept>
<container flag="SEPARATE"><relationship>CONTAINS</relationship>
<concept><value>121070</value><scheme><designator>DCM</designator></scheme><meaning>Findings</meaning></concept>
<text><relationship>CONTAINS</relationship>
<concept><value>121071</value><scheme><designator>DCM</designator></scheme><meaning>Finding</meaning></concept>
<value>$findings</value></text>
</container>
<container flag="SEPARATE"><relationship>CONTAINS</relationship>
<concept><value>121072</value><scheme><designator>DCM</designator></scheme><meaning>Impressions</meaning></concept>
<text><relationship>CONTAINS</relationship>
<concept><value>121073</value><scheme><designator>DCM</designator></scheme><meaning>Impression</meaning></concept>
<value>$impression</value></text>
</container>
</container>
</content>
</document>
</report>
XML
    xml2dsr "$1.xml" "$1" > "$1.log" 2>&1 || fail "xml2dsr: $(cat "$1.log")"
}

note "study 1's final report as a Basic Text SR"
sop=2.25.9900$$01
make_sr "$T/report-sr.dcm" "$sop" "ACME RIS"
dsrdump "$T/report-sr.dcm" > "$T/report-sr.txt" 2>&1 || fail "dsrdump: $(cat "$T/report-sr.txt")"
grep -q "Basic Text SR" "$T/report-sr.txt" || fail "the SR made by xml2dsr is not one"
storescu -aec "$AET" -aet RIS 127.0.0.1 "$PORT" "$T/report-sr.dcm" > "$T/storescu-sr.log" 2>&1 \
    || fail "storescu of the SR: $(tail -n 5 "$T/storescu-sr.log")"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE sop_uid='$sop'")" 1 "the SR as an instance"
expect_eq "$(sql "SELECT source || ' ' || study_uid || ' ' || accession || ' ' || final || ' ' || \
                  verification_flag || ' ' || completion_flag || ' ' || author FROM reports WHERE source_ref='$sop'")" \
    "sr $s1 $acc1 1 VERIFIED COMPLETE Reader^Rita" "the SR's report row"
text=$(sql "SELECT text FROM reports WHERE source_ref='$sop'")
expect_eq "${text%%$'\n'*}" "Radiology Report" "report text title"
grep -qx "Findings:" <<< "$text" || fail "no Findings heading: $text"
grep -qx "Impressions:" <<< "$text" || fail "no Impressions heading: $text"
line=$(sed -n '/^FINDINGS:/{n;p;q}' "$T/ph/case_0000/report.txt")
grep -qxF "$line" <<< "$text" || fail "the first findings line '$line' is not in the text"

note "our own SR, forwarded back by a PACS: an instance, not a report"
own=2.25.9900$$02
make_sr "$T/own-sr.dcm" "$own" "ctglip"
storescu -aec "$AET" -aet PACS 127.0.0.1 "$PORT" "$T/own-sr.dcm" > "$T/storescu-own.log" 2>&1 \
    || fail "storescu of our own SR: $(tail -n 5 "$T/storescu-own.log")"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE sop_uid='$own'")" 1 "our own SR as an instance"
expect_eq "$(sql "SELECT count(*) FROM reports WHERE source_ref='$own'")" 0 "reports from our own SR"
grep -q "$own.*own output" "$T/daemon.log" || fail "the log does not say why our own SR is no report"

note "the SR again (a sender's retry): nothing new"
storescu -aec "$AET" -aet RIS 127.0.0.1 "$PORT" "$T/report-sr.dcm" > /dev/null 2>&1 || fail "re-send of the SR"
expect_eq "$(sql "SELECT count(*) FROM reports WHERE source='sr'")" 1 "SR reports after a re-send"

note "no second job for study 1"
sleep $((STABLE + 2))
expect_eq "$(sql "SELECT count(*) FROM jobs")" 1 "jobs after the reports"
expect_eq "$(sql "SELECT count(*) FROM jobs WHERE study_uid='$s1' AND supersedes IS NULL")" 1 "study 1's only job"
expect_eq "$(sql "SELECT rx_gen || ' ' || queued_gen FROM studies WHERE study_uid='$s1'")" "$n1 $n1" "study 1 generations"
expect_eq "$(sql "SELECT count(*) FROM studies WHERE rx_gen > queued_gen")" 0 "pending studies"

note "study 2 arrives: its waiting report links, the file goes to done/"
storescu -aec "$AET" -aet SCANNER1 127.0.0.1 "$PORT" "$T/ph/case_0001/dicom"/*.dcm > "$T/storescu2.log" 2>&1 \
    || fail "storescu of study 2: $(tail -n 5 "$T/storescu2.log")"
wait_for 10 '[ -f "$DROP/done/$acc2.txt" ]' || fail "the early report was not moved to done/"
[ ! -e "$DROP/$acc2.txt" ] || fail "the early report is still in the drop folder"
expect_eq "$(sql "SELECT source || ' ' || study_uid || ' ' || final || ' ' || (linked_at IS NOT NULL) FROM reports WHERE accession='$acc2'")" \
    "file $s2 1 1" "the file report's row"
expect_eq "$(sql "SELECT text FROM reports WHERE accession='$acc2'")" "$(cat "$T/ph/case_0001/report.txt")" "the file report's text"
wait_for $((STABLE + 8)) '[ "$(sql "SELECT count(*) FROM jobs")" = 2 ]' || fail "no job for study 2"
expect_eq "$(sql "SELECT count(*) FROM reports")" 2 "reports in all"

note "ctglip reports and /status"
out=$("$B/ctglip" -c "$T/ctglipd.conf" reports) || fail "ctglip reports: $out"
echo "$out"
grep -q "^ *[0-9]*  sr      yes .*$s1  *$acc1 *$sop$" <<< "$out" || fail "ctglip reports: no SR line"
grep -q "^ *[0-9]*  file    yes .*$s2  *$acc2 *$acc2.txt$" <<< "$out" || fail "ctglip reports: no file line"
out=$("$B/ctglip" -c "$T/ctglipd.conf" reports "$s1") || fail "ctglip reports $s1"
grep -qxF "$line" <<< "$out" || fail "ctglip reports $s1 lacks the report text: $out"
grep -q "completion COMPLETE, verification VERIFIED" <<< "$out" || fail "ctglip reports $s1: flags"
out=$("$B/ctglip" -c "$T/ctglipd.conf" reports "$acc2") || fail "ctglip reports $acc2"
grep -q "^IMPRESSION:" <<< "$out" || fail "ctglip reports $acc2 lacks the text: $out"
st=$(curl -sf "http://127.0.0.1:$HTTP/status") || fail "GET /status"
grep -q '"reports":{"total":2,"final":2,"unlinked":0}' <<< "$st" || fail "/status reports: $st"
stop_daemon
