#!/usr/bin/env bash
# Instructions per sync write (issue 13), counted by callgrind on the release server.
#
# One node (sync, secret set) runs under `valgrind --tool=callgrind`, on SQLite, on PostgreSQL,
# and memory-only (`spring.session.enabled=false`) for scale. Once it listens, its counters are
# zeroed (`vgdb ... zero`, what `callgrind_control -z` sends), so start-up is not counted.
# CLIENTS keep-alive clients (curl, one connection each, run at once) each create a session and
# send `POST /cart/items` over 20 SKUs in turn, N in all; the node is stopped with SIGTERM. This runs twice, N=LOW and N=HIGH,
# and prints per write = (cost at HIGH - cost at LOW) / (HIGH - LOW) of:
# - the connection tasks (hyper's connection future, inclusive: HTTP, the layer, the handler,
#   and the first poll of the save: the encoding and the queueing; what follows the commit runs
#   in a task of its own, counted only in the whole process),
# - the writer's flights (the tasks `Worker::run_until_stopped` spawns, inclusive: the batch's
#   statement, its round trip, the outcomes),
# - the whole process (also SQLite's own thread, where sqlx runs its statements, the runtime's
#   scheduling and the shutdown).
# With one client every batch holds one session; with more, batches hold several and the
# per-batch costs are shared. The rows it writes stay in the database (the purge is off).
#
#   cargo build --release --bin session-failover
#   bench/sync_write.sh [LOW] [HIGH]     (defaults 200 600; environment: CLIENTS (default 1),
#                                         SF=path/to/session-failover for another build,
#                                         BACKENDS (default "sqlite postgres memory"),
#                                         PG (default postgres://postgres@127.0.0.1:5432/sfbench,
#                                         a database that exists: the side-by-side run creates it))
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) stops the script too

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
for program in valgrind vgdb callgrind_annotate curl; do
    command -v "$program" >/dev/null || { echo "missing $program" >&2; exit 2; }
done
[ $((low % clients)) -eq 0 ] && [ $((high % clients)) -eq 0 ] \
    || { echo "LOW and HIGH must be multiples of CLIENTS ($clients)" >&2; exit 2; }
work=$(mktemp -d /tmp/sf-write.XXXXXX)
# run() runs in $(...): the processes of the run in progress are listed in its pids file for
# this trap to stop (a finished run removes its file). The kill fails for processes already
# gone, which must not end the trap before the clean-up.
trap '{ cat "$work"/run-*/pids | xargs -r kill -9; } 2>/dev/null || true
      [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

# client ADDR N JAR: one connection, N adds over 20 SKUs (the first creates the session).
client() {
    local args=() i
    for i in $(seq 1 "$2"); do
        [ "$i" -gt 1 ] && args+=(--next)
        args+=(-sS --fail -b "$3" -c "$3" -H 'content-type: application/json'
            -d "{\"sku\":\"sku-$((i % 20))\",\"qty\":1}" "http://$1/cart/items")
    done
    # --fail-early: any failed request fails the client (not only the last one).
    curl --fail-early "${args[@]}" > /dev/null
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
    local node=$! addr c pids=()
    echo "$node" >> "$dir/pids"
    addr=$(node_addr "$dir" 600)
    # Start-up is not counted (callgrind_control exits 0 even when it reaches nothing).
    vgdb --pid="$node" zero > "$dir/zero.log" 2>&1 \
        || { echo "could not zero the counters of $node:" >&2; cat "$dir/zero.log" >&2; exit 1; }
    for c in $(seq 1 "$clients"); do
        client "$addr" $((n / clients)) "$dir/jar-$c" &
        pids+=($!)
        echo "$!" >> "$dir/pids"
    done
    for c in "${pids[@]}"; do wait "$c"; done
    kill -TERM "$node"
    wait "$node" || true
    rm "$dir/pids"
    echo "$dir/cg.out"
}

# inclusive OUT PATTERN: the inclusive instruction count of the first function matching
# PATTERN; fails if none does (a renamed or inlined function must not read as 0).
inclusive() {
    local n
    n=$(callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null \
        | grep -E "$2" | head -1 | awk '{gsub(",", "", $1); print $1}')
    [ -n "$n" ] || { echo "no function matches $2 in $1" >&2; exit 1; }
    echo "$n"
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
    if [ "$backend" = memory ]; then
        fl="–" # nothing to write
    else
        fl=$(per "$(inclusive "$a" "$flight")" "$(inclusive "$b" "$flight")")
    fi
    whole=$(per "$(total "$a")" "$(total "$b")")
    echo "| $backend | $conn | $fl | $whole |"
done
