#!/usr/bin/env bash
# Instructions per sync write (issue 13), counted by callgrind on the release server.
#
# One node (sync, secret set) runs under `valgrind --tool=callgrind`, on SQLite, on PostgreSQL,
# and memory-only (`spring.session.enabled=false`) for scale. CLIENTS keep-alive clients (curl,
# one connection each, run at once) each create a session and send `POST /cart/items` over 20
# SKUs in turn, N in all; the node is stopped with SIGTERM. This runs twice, N=LOW and N=HIGH,
# and prints per request = (cost at HIGH - cost at LOW) / (HIGH - LOW) of:
# - the connection tasks (hyper's connection future, inclusive: the layer, the handler, the
#   encoding, the wait for the commit),
# - the writer's flights (`Shared::flush`, inclusive: the batch's statement, its round trip,
#   the outcomes), which run in their own tasks,
# - the whole process (HIGH's total minus LOW's: also SQLite's own thread, where sqlx runs its
#   statements, and the runtime's scheduling; start-up does not cancel out exactly, see
#   bench/sticky_read.sh, so LOW and HIGH should be a few hundred apart).
# With one client every batch holds one session; with more, batches hold several and the
# per-batch costs are shared.
#
#   cargo build --release --bin session-failover
#   bench/sync_write.sh [LOW] [HIGH]     (CLIENTS=8, SF=path/to/session-failover for another build,
#                                         BACKENDS="sqlite postgres memory",
#                                         PG=postgres://postgres@127.0.0.1:5432/sfbench, a database
#                                         that exists: the side-by-side run creates it)
set -euo pipefail

low=${1:-200}
high=${2:-600}
clients=${CLIENTS:-1}
backends=${BACKENDS:-sqlite postgres memory}
pg=${PG:-postgres://postgres@127.0.0.1:5432/sfbench}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
sf=${SF:-$repo/target/release/session-failover}
secret=bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP
[ -x "$sf" ] || { echo "missing $sf: build it first (see the header of $0)" >&2; exit 2; }
for program in valgrind callgrind_annotate curl; do
    command -v "$program" >/dev/null || { echo "missing $program" >&2; exit 2; }
done
[ $((low % clients)) -eq 0 ] && [ $((high % clients)) -eq 0 ] \
    || { echo "LOW and HIGH must be multiples of CLIENTS ($clients)" >&2; exit 2; }
work=$(mktemp -d /tmp/sf-write.XXXXXX)
node=""
trap '[ -n "$node" ] && kill -9 "$node" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# client ADDR N JAR: one connection, N adds over 20 SKUs (the first creates the session).
client() {
    local args=() i
    for i in $(seq 1 "$2"); do
        [ "$i" -gt 1 ] && args+=(--next)
        args+=(-s -b "$3" -c "$3" -H 'content-type: application/json'
            -d "{\"sku\":\"sku-$((i % 20))\",\"qty\":1}" "http://$1/cart/items")
    done
    curl "${args[@]}" > /dev/null
}

# run BACKEND N: callgrind output of a node that served N writes from CLIENTS clients.
run() {
    local backend=$1 n=$2 dir=$work/run-$1-$2
    {
        echo "spring.session.storefront.save=sync"
        echo "session.purge.cron="
        echo "session.secret=$secret"
        case $backend in
            sqlite) echo "session.store.url=sqlite://$dir/s.db" ;;
            postgres) echo "session.store.url=$pg" ;;
            memory) echo "spring.session.enabled=false" ;;
        esac
    } | node_config "$dir"
    (cd "$dir" && RUST_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
        "$sf" serve --bind 127.0.0.1:0 --config config > out.log 2> err.log) &
    node=$!
    local addr c pids=()
    addr=$(node_addr "$dir" 600)
    for c in $(seq 1 "$clients"); do
        client "$addr" $((n / clients)) "$dir/jar-$c" &
        pids+=($!)
    done
    for c in "${pids[@]}"; do wait "$c"; done
    kill -TERM "$node"
    wait "$node" || true
    node=""
    echo "$dir/cg.out"
}

# inclusive OUT PATTERN: the inclusive instruction count of the first function matching PATTERN.
inclusive() {
    local n
    n=$(callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null \
        | grep -E "$2" | head -1 | awk '{gsub(",", "", $1); print $1}')
    echo "${n:-0}"
}
total() {
    callgrind_annotate "$1" 2>/dev/null | sed -n 's/^\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,
}

connection='hyper_util::server::conn::auto::UpgradeableConnection<.*>::poll'
flight='Worker::run_until_stopped::\{\{closure\}\}::\{\{closure\}\} '
per() { echo $(( ($2 - $1) / (high - low) )); }

echo "| per write ($low and $high writes, $clients keep-alive client(s)) | connection tasks | writer flights | whole process |"
echo "|---|---:|---:|---:|"
for backend in $backends; do
    a=$(run "$backend" "$low")
    b=$(run "$backend" "$high")
    conn=$(per "$(inclusive "$a" "$connection")" "$(inclusive "$b" "$connection")")
    fl=$(per "$(inclusive "$a" "$flight")" "$(inclusive "$b" "$flight")")
    whole=$(per "$(total "$a")" "$(total "$b")")
    echo "| $backend | $conn | $fl | $whole |"
done
