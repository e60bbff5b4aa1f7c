#!/usr/bin/env bash
# Instructions per sticky read (issue 13), counted by callgrind on the release server.
#
# One node (SQLite, sync, secret set) runs under `valgrind --tool=callgrind`; one keep-alive
# client (curl, one connection) creates a session with a one-line cart and sends N sticky
# `GET /cart` with its cookie; the node is stopped with SIGTERM. This runs twice, N=LOW and
# N=HIGH, and prints per request = (cost at HIGH - cost at LOW) / (HIGH - LOW) of:
# - the layer's future (`SessionFailover::call` closure, inclusive: the handler and its JSON
#   run inside it, as the issue counts; the handler is inlined, so not counted apart),
# - of which the inner route (tower's `Oneshot` of the route the layer wraps: axum's routing,
#   the handler, its `Session::get`, the JSON), and the difference: the layer's own share,
# - the whole connection task (hyper's connection future, inclusive) for the sticky read, and
#   for `GET /health` of the same server (a route without the session layer), for scale.
# Start-up work does not cancel out of the process totals (clock calibration differs by
# millions of instructions between runs), so only per-function figures are printed.
#
#   cargo build --release --bin session-failover
#   bench/sticky_read.sh [LOW] [HIGH]        (SF=path/to/session-failover for another build)
set -euo pipefail

low=${1:-200}
high=${2:-400}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
sf=${SF:-$repo/target/release/session-failover}
secret=bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP
[ -x "$sf" ] || { echo "missing $sf: build it first (see the header of $0)" >&2; exit 2; }
for program in valgrind callgrind_annotate curl; do
    command -v "$program" >/dev/null || { echo "missing $program" >&2; exit 2; }
done
work=$(mktemp -d /tmp/sf-sticky.XXXXXX)
node=""
trap '[ -n "$node" ] && kill -9 "$node" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# run N PATH: callgrind output of a node that served one add and N requests of PATH.
run() {
    local n=$1 path=$2 dir=$work/run-$1-${2//\//_}
    {
        echo "spring.session.storefront.save=sync"
        echo "session.store.url=sqlite://$dir/s.db"
        echo "session.purge.cron="
        echo "session.secret=$secret"
    } | node_config "$dir"
    (cd "$dir" && RUST_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$sf" serve --bind 127.0.0.1:0 --config config > out.log 2> err.log) &
    node=$!
    local addr
    addr=$(node_addr "$dir" 600)
    # One connection: the add, then N reads with its cookie (curl reuses the connection).
    local urls=()
    for _ in $(seq 1 "$n"); do urls+=("http://$addr$path"); done
    curl -s -c "$dir/jar" -H 'content-type: application/json' \
        -d '{"sku":"sku-1","qty":1}' "http://$addr/cart/items" \
        --next -s -b "$dir/jar" "${urls[@]}" > /dev/null
    kill -TERM "$node"
    wait "$node" || true
    node=""
    echo "$dir/cg.out"
}

# inclusive OUT PATTERN: the inclusive instruction count of the first function matching PATTERN.
inclusive() {
    callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null \
        | grep -E "$2" | head -1 | awk '{gsub(",", "", $1); print $1}'
}

layer='SessionFailover<.*as tower_service::Service<.*>>::call::\{\{closure\}\}'
connection='hyper_util::server::conn::auto::UpgradeableConnection<.*>::poll'
route='<tower::util::oneshot::Oneshot<.*> as core::future::future::Future>::poll \['
per() { echo $(( ($2 - $1) / (high - low) )); }

a=$(run "$low" /cart)
b=$(run "$high" /cart)
c=$(run "$low" /health)
d=$(run "$high" /health)
echo "| per request ($low and $high requests, one keep-alive connection) | instructions |"
echo "|---|---:|"
future=$(per "$(inclusive "$a" "$layer")" "$(inclusive "$b" "$layer")")
inner=$(per "$(inclusive "$a" "$route")" "$(inclusive "$b" "$route")")
echo "| sticky GET /cart, the layer's future (the handler and its JSON run inside it) | $future |"
echo "| of which the inner route (axum's routing, the handler, Session::get, the JSON) | $inner |"
echo "| the layer's own share (future minus inner route) | $((future - inner)) |"
echo "| sticky GET /cart, the whole connection task | $(per "$(inclusive "$a" "$connection")" "$(inclusive "$b" "$connection")") |"
echo "| GET /health (no session), the whole connection task | $(per "$(inclusive "$c" "$connection")" "$(inclusive "$d" "$connection")") |"
