#!/usr/bin/env bash
# Proves that vendor/sqlx-core is the crates.io release sqlx-core 0.9.0 plus exactly
# tcp-nodelay.patch (and real license texts where the package ships one-line stubs that pointed
# at the upstream repository's files). Fetches the release with `cargo vendor` into a temp dir.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cargo new --lib --quiet "$tmp/probe"
echo 'sqlx-core = { version = "=0.9.0", default-features = false }' >> "$tmp/probe/Cargo.toml"
(cd "$tmp/probe" && cargo vendor --quiet --versioned-dirs "$tmp/registry" > /dev/null)
release="$tmp/registry/sqlx-core-0.9.0"
# Every file but the patched one and the license texts must be identical.
changed=$(diff -rq -x .cargo-checksum.json -x .cargo_vcs_info.json -x Cargo.lock \
    -x LICENSE-MIT -x LICENSE-APACHE "$release" "$here/sqlx-core" || true)
expected="Files $release/src/net/socket/mod.rs and $here/sqlx-core/src/net/socket/mod.rs differ"
if [ "$changed" != "$expected" ]; then
    echo "FATAL: vendor/sqlx-core differs from sqlx-core 0.9.0 beyond src/net/socket/mod.rs:"
    echo "$changed"
    exit 1
fi
# ...and that one file must differ by exactly the recorded patch.
diff -u --label a/src/net/socket/mod.rs --label b/src/net/socket/mod.rs \
    "$release/src/net/socket/mod.rs" "$here/sqlx-core/src/net/socket/mod.rs" > "$tmp/actual.patch" || true
if ! cmp -s "$tmp/actual.patch" "$here/tcp-nodelay.patch"; then
    echo "FATAL: vendor/sqlx-core/src/net/socket/mod.rs is not sqlx-core 0.9.0 plus tcp-nodelay.patch:"
    diff "$here/tcp-nodelay.patch" "$tmp/actual.patch" || true
    exit 1
fi
for license in LICENSE-MIT LICENSE-APACHE; do
    [ "$(wc -c < "$here/sqlx-core/$license")" -gt 1000 ] \
        || { echo "FATAL: vendor/sqlx-core/$license is not a license text"; exit 1; }
done
echo "vendor/sqlx-core = sqlx-core 0.9.0 from crates.io + tcp-nodelay.patch (and license texts)"
