#!/bin/sh
# Installs the Debian packages ctglip needs to build and test, when missing.
# As root it runs apt-get; otherwise it prints the exact command to run.
# With everything present it costs one dpkg-query call.
set -eu

PKGS="g++ make pkg-config libdcmtk-dev dcmtk libuv1-dev libsqlite3-dev sqlite3
libinih-dev libcjson-dev libsystemd-dev libssl-dev openssl curl procps iproute2 bc libgdcm-tools
libnifti2-dev libpng-dev zlib1g-dev dicom3tools libdnnl-dev orthanc jq
pixelmed-apps default-jre-headless"
# The libFuzzer build.
[ "${FUZZ_DEPS:-0}" = 1 ] && PKGS="$PKGS clang libclang-rt-14-dev"

missing=""
for p in $PKGS; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

cmd="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "ctglip: missing Debian packages:$missing" >&2
    echo "ctglip: run as root:  apt-get update && $cmd" >&2
    exit 1
fi
echo "ctglip: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
$cmd >/dev/null
