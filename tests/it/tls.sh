# DICOM over TLS (BCP 195): with a CA, server and client certificates made
# here by the openssl CLI, and [tls] verify_peer = yes, a client with a
# certificate from our CA can C-ECHO and C-STORE on the TLS port (DCMTK's
# echoscu/storescu and our own `ctglip --tls ... echo`); a plain client on the
# TLS port, a TLS client without a certificate and one whose certificate
# comes from another CA are refused; the plain port keeps working, and the
# daemon stays up throughout.  With verify_peer = no (after a restart) the
# client without a certificate is let in, so the refusal above was the
# certificate check.
source "$CTG_ROOT/tests/lib.sh"

root=2.25.231932228033936708469927392542703984207
study=$root.7301.1 series=$root.7301.2
K=$T/pki
mkdir -p "$K"

note "making a CA, server and client certificates, and a second CA"
ossl() { openssl "$@" > "$T/openssl.log" 2>&1 || fail "openssl $1 failed: $(cat "$T/openssl.log")"; }
# make_ca NAME
make_ca() {
    ossl req -x509 -newkey rsa:2048 -sha256 -days 2 -nodes -keyout "$K/$1.key" \
        -out "$K/$1.pem" -subj "/CN=ctglip test $1" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
}
# make_cert NAME CA USAGE
make_cert() {
    ossl req -new -newkey rsa:2048 -sha256 -nodes -keyout "$K/$1.key" -out "$K/$1.csr" \
        -subj "/CN=localhost"
    printf '%s\n' "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=$3" "subjectAltName=DNS:localhost,IP:127.0.0.1" > "$K/$1.ext"
    ossl x509 -req -in "$K/$1.csr" -CA "$K/$2.pem" -CAkey "$K/$2.key" -CAcreateserial \
        -days 2 -sha256 -extfile "$K/$1.ext" -out "$K/$1.pem"
    ossl verify -CAfile "$K/$2.pem" "$K/$1.pem"
}
make_ca ca
make_ca otherca
make_cert server ca serverAuth
make_cert client ca clientAuth
make_cert stranger otherca clientAuth

# tls_conf VERIFY : the plain port, a TLS port and the [tls] section.
tls_conf() {
    WORKERS=0 write_conf "[tls]
certificate = $K/server.pem
private_key = $K/server.key
ca_file = $K/ca.pem
verify_peer = $1
profile = bcp195"
    sed -i "s/^port = $PORT\$/port = $PORT\ntls_port = $TLSPORT/" "$T/ctglipd.conf"
}
PORT=$(free_port)
TLSPORT=
for p in $(seq $((PORT + 1)) 65000); do
    if ! ss -Hltn "sport = :$p" | grep -q .; then TLSPORT=$p; break; fi
done
[ -n "$TLSPORT" ] || fail "no second free port"
tls_conf yes
grep -q "^tls_port = $TLSPORT\$" "$T/ctglipd.conf" || fail "config not written as meant"
check "$B/ctglipd" -t -c "$T/ctglipd.conf"
start_daemon
grep -q "listening on port $TLSPORT (TLS)" "$T/daemon.log" || fail "no TLS listener"

# tls_echo NAME [ECHOSCU-OPTIONS...] : C-ECHO on the TLS port with NAME's
# certificate and key (NAME '-' for none); output in $T/echo.out.
tls_echo() {
    local who=$1
    shift
    local id=(+tla)
    [ "$who" = - ] || id=(+tls "$K/$who.key" "$K/$who.pem")
    timeout 30 echoscu -to 10 -ta 10 -td 10 -aec "$AET" -aet "TLS_${who/-/ANON}" \
        "${id[@]}" +cf "$K/ca.pem" +px "$@" 127.0.0.1 "$TLSPORT" > "$T/echo.out" 2>&1
}
tls_accepted() { grep -c "association from $1 (127.0.0.1) over TLS accepted" "$T/daemon.log" || true; }

note "echoscu over TLS with a client certificate"
tls_echo client || fail "TLS C-ECHO failed: $(cat "$T/echo.out")"
expect_eq "$(tls_accepted TLS_client)" 1 "TLS associations of TLS_client"

note "storescu over TLS"
fixture "$T/in" "$study" "$series"
timeout 60 storescu -aec "$AET" -aet TLSSTORE +tls "$K/client.key" "$K/client.pem" \
    +cf "$K/ca.pem" +px 127.0.0.1 "$TLSPORT" "$T/in"/*.dcm > "$T/storescu.log" 2>&1 \
    || fail "storescu over TLS failed: $(cat "$T/storescu.log")"
expect_eq "$(tls_accepted TLSSTORE)" 1 "TLS associations of TLSSTORE"
expect_eq "$(sql "SELECT count(*) FROM instances WHERE calling_ae='TLSSTORE'")" 20 \
    "instances stored over TLS"
for f in "$T/in"/*.dcm; do
    sop=$(basename "$f" .dcm)
    p="$T/spool/$study/$series/$sop.dcm"
    [ -f "$p" ] || fail "$p missing"
    expect_eq "$(dataset_sha "$p")" "$(dataset_sha "$f")" "data set bytes of $sop"
done

note "ctglip --tls echo"
out=$("$B/ctglip" --tls "$K/client.pem" "$K/client.key" "$K/ca.pem" --timeout 10 \
    echo 127.0.0.1 "$TLSPORT" "$AET" 2>&1) || fail "ctglip --tls echo failed: $out"
case $out in *success*) ;; *) fail "ctglip --tls echo said: $out" ;; esac
expect_eq "$(tls_accepted CTGLIP_CLI)" 1 "TLS associations of ctglip"

note "plain DICOM on the TLS port is refused"
n=$(grep -c "accepted" "$T/daemon.log")
tls_failures() { grep -c "receiving association on TLS port failed" "$T/daemon.log" || true; }
! timeout 30 echoscu -to 10 -ta 10 -td 10 -aec "$AET" -aet PLAIN 127.0.0.1 "$TLSPORT" \
    > "$T/echo.out" 2>&1 || fail "plain echoscu on the TLS port succeeded"
expect_eq "$(grep -c "association from PLAIN" "$T/daemon.log" || true)" 0 "PLAIN associations"

note "a TLS client without a certificate is refused"
! tls_echo - || fail "TLS C-ECHO without a client certificate succeeded"
expect_eq "$(grep -c "association from TLS_ANON" "$T/daemon.log" || true)" 0 \
    "associations without a client certificate"

note "a client certificate from another CA is refused"
! tls_echo stranger || fail "TLS C-ECHO with a certificate of another CA succeeded"
expect_eq "$(grep -c "association from TLS_stranger" "$T/daemon.log" || true)" 0 \
    "associations with a stranger's certificate"
expect_eq "$(grep -c "accepted" "$T/daemon.log")" "$n" "associations accepted by the refusals"
expect_eq "$(tls_failures)" 3 "refused TLS connections in the log"

note "the daemon is still up and serving both ports"
alive || fail "ctglipd died"
tls_echo client || fail "TLS C-ECHO after the refusals failed: $(cat "$T/echo.out")"
expect_eq "$(tls_accepted TLS_client)" 2 "TLS associations of TLS_client"
check echoscu -to 5 -aec "$AET" -aet PLAINPORT 127.0.0.1 "$PORT"
grep -q "association from PLAINPORT (127.0.0.1) accepted" "$T/daemon.log" \
    || fail "plain port association not logged as plain"
stop_daemon

note "verify_peer = no lets a client without a certificate in"
tls_conf no
start_daemon
tls_echo - || fail "TLS C-ECHO without a certificate failed with verify_peer = no: $(cat "$T/echo.out")"
expect_eq "$(tls_accepted TLS_ANON)" 1 "TLS associations without a certificate"
stop_daemon
