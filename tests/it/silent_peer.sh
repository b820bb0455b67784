# Peers that connect and say nothing (a port scanner, a hung client) must
# not stop the port: while two such connections are open, C-ECHO and
# C-STORE from a real peer go through at once, and the silent connections
# are dropped after acse_timeout.  The same on the TLS port, where the
# silent peer stalls the TLS handshake instead.
source "$CTG_ROOT/tests/lib.sh"

fixture "$T/in"
TLS_PORT=$(free_port)
PORT=$(free_port)
[ "$TLS_PORT" = "$PORT" ] && TLS_PORT=$((PORT + 1))
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout "$T/key.pem" -out "$T/cert.pem" >/dev/null 2>&1 || fail "openssl"
write_conf "[tls]
certificate = $T/cert.pem
private_key = $T/key.pem
verify_peer = no"
sed -i "s/^acse_timeout = .*/acse_timeout = 4/; s/^port = $PORT\$/port = $PORT\ntls_port = $TLS_PORT/" "$T/ctglipd.conf"
start_daemon

ms() { date +%s%3N; }
for p in "$PORT" "$TLS_PORT"; do
    exec 5<>"/dev/tcp/127.0.0.1/$p"
    exec 6<>"/dev/tcp/127.0.0.1/$p"
    sleep 0.3
    t0=$(ms)
    if [ "$p" = "$PORT" ]; then
        echoscu -to 10 -aec "$AET" 127.0.0.1 "$p" || fail "C-ECHO with silent peers on port $p"
        storescu -to 10 -aec "$AET" 127.0.0.1 "$p" "$T/in"/*.dcm || fail "C-STORE with silent peers"
    else
        echoscu -to 10 +tls "$T/key.pem" "$T/cert.pem" -ic -aec "$AET" 127.0.0.1 "$p" \
            || fail "TLS C-ECHO with silent peers on port $p"
    fi
    took=$(( $(ms) - t0 ))
    note "port $p: served in $took ms with 2 silent connections open"
    [ "$took" -lt 2500 ] || fail "a silent peer held port $p for $took ms (acse_timeout is 4 s)"
    exec 5>&- 6>&-
done
expect_eq "$(sql 'SELECT count(*) FROM instances')" 20 "instances stored"
alive || fail "daemon died"
stop_daemon
