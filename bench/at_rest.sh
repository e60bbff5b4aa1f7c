#!/usr/bin/env bash
# Bytes per session at rest, per backend, with and without encryption (docs/CAPACITY.md).
#
# For each backend (SQLite, PostgreSQL, MariaDB, Redis) and each of "encrypted" / "plain", one
# release node in async mode serves the bench's write workload for USERS users (each user's cart
# grows to up to 20 lines, as in the side-by-side runs); the node is stopped with SIGTERM (its
# drain writes every session); then the store's own size is divided by the sessions in it:
# - SQLite: the file after VACUUM;
# - PostgreSQL: pg_total_relation_size (heap, TOAST, every index) after VACUUM FULL;
# - MariaDB: data_length + index_length after OPTIMIZE TABLE (InnoDB, 16 KB pages);
# - Redis: used_memory after minus before (the hashes and the index sorted sets).
# Uses the servers of .ci/run: PostgreSQL and MariaDB (database sfrest, recreated) and Redis
# (database 7, flushed) on 127.0.0.1.
#
#   cargo build --release --bin session-failover && (cd bench && cargo build --release)
#   bench/at_rest.sh [USERS]
set -euo pipefail

users=${1:-2000}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
sf=$repo/target/release/session-failover
load=$repo/bench/target/release/session-failover-bench
secret=bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP
pg_user=${PG_USER:-postgres}
for bin in "$sf" "$load"; do
    [ -x "$bin" ] || { echo "missing $bin: build it first (see the header of $0)" >&2; exit 2; }
done
for program in sqlite3 psql mariadb redis-cli; do
    command -v "$program" >/dev/null || { echo "missing $program" >&2; exit 2; }
done
work=$(mktemp -d /tmp/sf-at-rest.XXXXXX)
node=""
trap '[ -n "$node" ] && kill -9 "$node" 2>/dev/null; rm -rf "$work"' EXIT

reset() {
    case $1 in
        sqlite) rm -f "$work/s.db"* ;;
        postgres)
            psql -h 127.0.0.1 -U "$pg_user" -d test -qc 'DROP DATABASE IF EXISTS sfrest' >/dev/null
            psql -h 127.0.0.1 -U "$pg_user" -d test -qc 'CREATE DATABASE sfrest' >/dev/null ;;
        mariadb) mariadb -h 127.0.0.1 -u root -e 'DROP DATABASE IF EXISTS sfrest; CREATE DATABASE sfrest' ;;
        redis) redis-cli -n 7 FLUSHDB >/dev/null ;;
    esac
}

url() {
    case $1 in
        sqlite) echo "sqlite://$work/s.db" ;;
        postgres) echo "postgres://$pg_user@127.0.0.1:5432/sfrest" ;;
        mariadb) echo "mysql://root@127.0.0.1:3306/sfrest" ;;
        redis) echo "redis://127.0.0.1:6379/7" ;;
    esac
}

# Prints "sessions total_bytes average_blob_bytes".
measure() {
    case $1 in
        sqlite)
            sqlite3 "$work/s.db" 'VACUUM'
            echo "$(sqlite3 "$work/s.db" 'SELECT count(*) FROM stored_http_session') $(stat -c %s "$work/s.db") $(sqlite3 "$work/s.db" 'SELECT avg(length(data)) FROM stored_http_session')" ;;
        postgres)
            psql -h 127.0.0.1 -U "$pg_user" -d sfrest -qc 'VACUUM FULL stored_http_session' >/dev/null
            psql -h 127.0.0.1 -U "$pg_user" -d sfrest -Atc "SELECT count(*), pg_total_relation_size('stored_http_session'), avg(length(data)) FROM stored_http_session" | tr '|' ' ' ;;
        mariadb)
            mariadb -h 127.0.0.1 -u root sfrest -e 'OPTIMIZE TABLE stored_http_session; ANALYZE TABLE stored_http_session' >/dev/null
            mariadb -h 127.0.0.1 -u root sfrest --batch --skip-column-names -e "SELECT (SELECT count(*) FROM stored_http_session), data_length + index_length, (SELECT avg(length(data)) FROM stored_http_session) FROM information_schema.tables WHERE table_schema = 'sfrest' AND table_name = 'stored_http_session'" ;;
        redis)
            local used
            used=$(redis-cli INFO memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
            echo "$(redis-cli -n 7 EVAL "return #redis.call('KEYS', 'sf:s:*')" 0) $((used - redis_before)) $(redis-cli -n 7 --raw EVAL "local n, t = 0, 0 for _, k in ipairs(redis.call('KEYS', 'sf:s:*')) do n = n + 1 t = t + redis.call('HSTRLEN', k, 'd') end return tostring(t / n)" 0)" ;;
    esac
}

echo "| backend | stored | sessions | bytes per session at rest | of which the blob (avg) |"
echo "|---|---|---:|---:|---:|"
for backend in sqlite postgres mariadb redis; do
    for variant in encrypted plain; do
        reset "$backend"
        redis_before=$(redis-cli INFO memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
        dir=$work/$backend-$variant
        {
            echo "spring.session.storefront.save=async"
            echo "spring.session.save.async.interval=1000"
            echo "session.store.url=$(url "$backend")"
            echo "session.purge.cron="
            if [ "$variant" = encrypted ]; then echo "session.secret=$secret"; fi
        } | node_config "$dir"
        (cd "$dir" && RUST_LOG=warn exec "$sf" serve --bind 127.0.0.1:0 --config config > out.log 2> err.log) &
        node=$!
        addr=$(node_addr "$dir")
        "$load" load --addr "$addr" --workload write --users "$users" --warmup 0 --seconds 4 >&2
        kill -TERM "$node"
        wait "$node" || true
        node=""
        read -r sessions total blob <<<"$(measure "$backend")"
        per=$(( total / sessions ))
        printf "| %s | %s | %d | %d | %.0f |\n" "$backend" "$variant" "$sessions" "$per" "$blob"
    done
done
