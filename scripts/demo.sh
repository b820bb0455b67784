#!/bin/sh
# scripts/demo.sh BUILD - `make demo`: starts ctglipd on the default config
# (in a scratch folder, on a free port, with a short stable time), sends a
# generated chest-abdomen phantom study with storescu, waits for the
# report, prints it with dsrdump, and stops the daemon.
set -eu
B=$1
D=${DEMO_DIR:-$B/demo}
rm -rf "$D"
mkdir -p "$D"
port=11112
while ss -Hltn "sport = :$port" | grep -q .; do port=$((port + 1)); done
# The shipped config with the demo's folders, port and stable time.
sed -e "s|^port = 11112|port = $port|" \
    -e "s|^spool = .*|spool = $D/spool|" \
    -e "s|^index = .*|index = $D/index.db|" \
    -e "s|^reports = .*|reports = $D/reports|" \
    -e "s|^outbox = .*|outbox = $D/outbox|" \
    -e "s|^study_stable_seconds = .*|study_stable_seconds = 3|" \
    -e "s|^free_space_reserve_mb = .*|free_space_reserve_mb = 64|" \
    -e "s|^port = 11180|port = 0|" \
    etc/ctglipd.conf > "$D/ctglipd.conf"
"$B/ctglipd" -c "$D/ctglipd.conf" > "$D/daemon.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
i=0
until echoscu -to 2 -aec CTGLIP 127.0.0.1 "$port" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 $pid 2>/dev/null; then
        cat "$D/daemon.log"
        echo "demo: ctglipd did not start" >&2
        exit 1
    fi
    sleep 0.1
done
echo "== ctglipd is listening on port $port (log: $D/daemon.log)"
"$B/ctglip" phantom --seed 2026 --count 1 --matrix 256 --thickness 3 --fov cap \
    --abnormal-rate 1 --out "$D/phantom" --quiet
echo "== the phantom's ground truth:"
cat "$D/phantom/case_0000/report.txt"
echo
echo "== sending $(ls "$D"/phantom/case_0000/dicom | wc -l) images with storescu"
storescu -aec CTGLIP 127.0.0.1 "$port" "$D"/phantom/case_0000/dicom/*.dcm
echo "== waiting for the report"
i=0
while ! ls "$D"/reports/*/*/sr.dcm >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 $pid 2>/dev/null; then
        tail -20 "$D/daemon.log"
        echo "demo: no report after 5 minutes" >&2
        exit 1
    fi
    sleep 0.5
done
sleep 0.5
grep -E "job [0-9]+:" "$D/daemon.log" | sed 's/^/   /'
sr=$(ls "$D"/reports/*/*/sr.dcm | sed -n 1p)
echo "== $sr:"
dsrdump -Ee "$sr"
kill -TERM $pid
wait $pid || true
trap - EXIT
