#!/bin/sh
# tests/fixture.sh OUTDIR [STUDY_UID SERIES_UID]
#
# Turns the 20 real CT slices of ../shared/fixtures/totalseg/example_ct_dicom
# (TotalSegmentator example data, CC BY 4.0) into files a PACS would send.
# The published files were anonymised down to empty SOP Class, SOP Instance,
# Study and Series UIDs and are JPEG 2000 compressed; this restores the UIDs
# (SOP Instance UID from the file meta header, which kept it; Study/Series
# UIDs as given, or fixed defaults) with DCMTK's dcmodify and decompresses
# the pixel data with GDCM's gdcmconv (DCMTK has no JPEG 2000 codec).
# Output files are named <SOPInstanceUID>.dcm, explicit VR little endian.
set -eu
out=$1
study=${2:-2.25.231932228033936708469927392542703984207.1.1}
series=${3:-2.25.231932228033936708469927392542703984207.1.2}
here=$(cd "$(dirname "$0")" && pwd)
src=${CTG_FIXTURES:-$here/../../shared/fixtures}/totalseg/example_ct_dicom
[ -d "$src" ] || { echo "fixture.sh: $src not found" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "$src"/CT.*; do
    sop=$(dcmdump -q +P 0002,0003 "$f" | sed -n 's/.*\[\(.*\)\].*/\1/p')
    cp "$f" "$tmp/$sop"
    chmod u+w "$tmp/$sop"
    dcmodify -q -nb -m "(0008,0016)=1.2.840.10008.5.1.4.1.1.2" -m "(0008,0018)=$sop" \
        -m "(0020,000d)=$study" -m "(0020,000e)=$series" "$tmp/$sop"
    gdcmconv --raw "$tmp/$sop" "$out/$sop.dcm"
done
