# The HTTP status endpoint: /status reports the index and jobs as JSON,
# /health answers ok, unknown paths 404, other methods 405, a silent client
# is dropped, and the daemon still shuts down cleanly with a client open.
source "$CTG_ROOT/tests/lib.sh"

HTTP=$(free_port)
[ "$HTTP" = "${PORT:=$(free_port)}" ] && HTTP=$((HTTP + 1))
WORKERS=0 write_conf "[http]
port = $HTTP"
fixture "$T/in"
start_daemon
storescu -aec "$AET" 127.0.0.1 "$PORT" "$T/in"/*.dcm >/dev/null 2>&1 || fail "storescu"

st=$(curl -sf "http://127.0.0.1:$HTTP/status") || fail "GET /status"
echo "$st"
echo "$st" | grep -q '"instances":20' || fail "/status instances"
echo "$st" | grep -q '"studies_pending":1' || fail "/status pending study"
echo "$st" | grep -q '"index_ok":true' || fail "/status index_ok"
wait_for 10 'curl -sf "http://127.0.0.1:$HTTP/status" | grep -q "\"queued\":1"' || fail "job not in /status"
expect_eq "$(curl -sf "http://127.0.0.1:$HTTP/health")" ok "/health"
expect_eq "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/nope")" 404 "unknown path"
expect_eq "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$HTTP/status")" 405 "POST"
# A long request line is refused, not buffered without end.
long=$(head -c 9000 /dev/zero | tr '\0' 'a')
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/$long" || true)
[ "$code" = 400 ] || [ "$code" = 000 ] || fail "long request line answered $code"
# A client that sends nothing is dropped after its timeout.
exec 3<>"/dev/tcp/127.0.0.1/$HTTP"
start=$(date +%s)
cat <&3 >/dev/null || true
[ $(( $(date +%s) - start )) -le 8 ] || fail "silent client not dropped"
exec 3>&-
# Shutdown with a monitoring connection open still exits 0.
exec 4<>"/dev/tcp/127.0.0.1/$HTTP"
stop_daemon
exec 4>&-
grep -q "server: stopped" "$T/daemon.log" || fail "no clean stop"
