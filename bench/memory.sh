#!/usr/bin/env bash
# Resident memory per cached session with a 20-line cart (issue 13).
#
# One release node; SESSIONS sessions, each made by one curl process on one keep-alive
# connection: 20 `POST /cart/items` of 20 SKUs (a 20-line cart), 4 processes at a time, so the
# server holds at most 4 connections (10,000 connections at once leave their freed buffers in
# the allocator, and RSS would count them: the bench's load generator, one connection per user,
# measured 24 KB "per session" that way). Per session = (RSS 6 s after the last session, for
# the writer to finish - RSS after a warm-up of 50 sessions) / SESSIONS. Two settings:
# memory-only (`spring.session.enabled=false`: the node cache alone) and SQLite in sync mode
# (the cache, plus SQLite's page cache, which more sessions dilute).
#
#   cargo build --release --bin session-failover
#   bench/memory.sh [SESSIONS]   (SF=path/to/session-failover for another build; VARIANTS="none")
set -euo pipefail

sessions=${1:-10000}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
sf=${SF:-$repo/target/release/session-failover}
secret=bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP
[ -x "$sf" ] || { echo "missing $sf: build it first (see the header of $0)" >&2; exit 2; }
command -v curl >/dev/null || { echo "missing curl" >&2; exit 2; }
work=$(mktemp -d /tmp/sf-memory.XXXXXX)
node=""
trap '[ -n "$node" ] && kill -9 "$node" 2>/dev/null; rm -rf "$work"' EXIT

rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }

# make_sessions ADDR N: N sessions of 20 lines, 4 curl processes at a time, each with its own
# cookie jar.
make_sessions() {
    local addr=$1 n=$2 line
    {
        echo 'jar=$1'
        printf 'curl'
        for line in $(seq 1 20); do
            [ "$line" -gt 1 ] && printf ' --next'
            printf " -s -o /dev/null -b \"\$jar\" -c \"\$jar\" -H 'content-type: application/json'"
            printf " -d '{\"sku\":\"sku-%d\",\"qty\":1}' http://%s/cart/items" "$line" "$addr"
        done
        echo
        echo 'rm -f "$jar"'
    } > "$work/session.sh"
    seq 1 "$n" | xargs -P 4 -I{} sh "$work/session.sh" "$work/jar.{}"
}

echo "| persistence | sessions of 20 lines | RSS before → after | per session |"
echo "|---|---:|---|---:|"
for variant in ${VARIANTS:-none sqlite}; do
    dir=$work/$variant
    {
        echo "spring.session.storefront.save=sync"
        echo "session.store.url=sqlite://$dir/s.db"
        echo "session.purge.cron="
        echo "session.secret=$secret"
        echo "session.cache.max.entries=1000000"
        if [ "$variant" = none ]; then echo "spring.session.enabled=false"; fi
    } | node_config "$dir"
    (cd "$dir" && RUST_LOG=warn exec "$sf" serve --bind 127.0.0.1:0 --config config > out.log 2> err.log) &
    node=$!
    addr=$(node_addr "$dir")
    make_sessions "$addr" 50
    sleep 2
    before=$(rss "$node")
    make_sessions "$addr" "$sessions"
    sleep 6
    after=$(rss "$node")
    kill -TERM "$node"
    wait "$node" || true
    node=""
    printf "| %s | %d | %.1f → %.1f MB | %d B |\n" "$variant" "$sessions" \
        "$(echo "$before / 1024" | bc -l)" "$(echo "$after / 1024" | bc -l)" \
        $(( (after - before) * 1024 / sessions ))
done
