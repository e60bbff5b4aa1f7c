#!/usr/bin/env bash
# Throughput of three session-failover nodes on a 3-node MariaDB Galera cluster (each node on its
# own Galera node) against the same three nodes on one MariaDB, in one run (issue 14).
#
# Starts its own Galera cluster from Debian's packages (mariadb-server, galera-4, mariadb-backup,
# socat) under a temporary directory, on loopback ports 33071-33073 (SQL) and 35071-35093 (group
# communication, IST, SST); uses the MariaDB at 127.0.0.1:3306 (database sfbench_galera, created)
# as the single database. Run it as root (the Galera nodes run as root, as in tests/galera.rs),
# with MariaDB's root allowed in over TCP without a password, as .ci/run sets it up. For each round, setup and mode, the three nodes (release build, secret
# set, purge off) serve the storefront; three load generators (one per node: sticky users) run
# the workload at once; the table keeps the median of the rounds' summed req/s.
#
#   cargo build --release --bin session-failover && (cd bench && cargo build --release)
#   bench/galera.sh [ROUNDS] [SECONDS] [USERS]
#
# Only 127.0.0.1 is used; everything it starts is stopped when it exits.
set -euo pipefail
# A failure inside $(...) (one measurement) stops the script too.
shopt -s inherit_errexit

rounds=${1:-3}
seconds=${2:-8}
users=${3:-64}
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
sf=$repo/target/release/session-failover
load=$repo/bench/target/release/session-failover-bench
secret=bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOP
for bin in "$sf" "$load"; do
    [ -x "$bin" ] || { echo "missing $bin: build it first (see the header of $0)" >&2; exit 2; }
done
for program in mariadbd mariadb mariadb-install-db mariabackup socat; do
    command -v "$program" >/dev/null || { echo "missing $program (apt-get install mariadb-server galera-4 mariadb-backup socat)" >&2; exit 2; }
done
mariadb -h 127.0.0.1 -u root -e 'CREATE DATABASE IF NOT EXISTS sfbench_galera' \
    || { echo "the MariaDB at 127.0.0.1:3306 does not answer" >&2; exit 2; }

work=$(mktemp -d /tmp/sf-galera-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- the Galera cluster (as docs/DEPLOYMENT.md, section 1, "Or MariaDB Galera") ---
for i in 1 2 3; do
    mkdir -p "$work/g$i"
    mariadb-install-db --no-defaults --datadir="$work/g$i/data" --user=root \
        --auth-root-authentication-method=normal >/dev/null 2>&1
    cat > "$work/g$i/my.cnf" <<EOF
[mariadbd]
datadir=$work/g$i/data
socket=$work/g$i/sock
port=$((33070 + i))
bind-address=127.0.0.1
pid-file=$work/g$i/pid
log-error=$work/g$i/error.log
user=root
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider=/usr/lib/galera/libgalera_smm.so
wsrep_cluster_name=sf-galera-bench
wsrep_cluster_address=gcomm://127.0.0.1:35071,127.0.0.1:35072,127.0.0.1:35073
wsrep_node_address=127.0.0.1
wsrep_node_name=g$i
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$((35070 + i));ist.recv_addr=127.0.0.1:$((35080 + i))"
wsrep_sst_receive_address=127.0.0.1:$((35090 + i))
wsrep_sst_method=mariabackup
wsrep_sst_auth=root:
EOF
    if [ "$i" = 1 ]; then
        /usr/sbin/mariadbd --defaults-file="$work/g$i/my.cnf" --wsrep-new-cluster >/dev/null 2>&1 &
    else
        /usr/sbin/mariadbd --defaults-file="$work/g$i/my.cnf" >/dev/null 2>&1 &
    fi
    pids+=($!)
    # One joiner at a time: wait until this node is synced in a cluster of $i.
    for _ in $(seq 1 360); do
        status=$(mariadb -h 127.0.0.1 -P $((33070 + i)) -u root --batch --skip-column-names -e \
            "SHOW STATUS WHERE Variable_name IN ('wsrep_cluster_size','wsrep_local_state_comment')" 2>/dev/null || true)
        if grep -q "wsrep_cluster_size.$i" <<<"$status" && grep -q Synced <<<"$status"; then break; fi
        sleep 0.25
    done
    grep -q Synced <<<"$status" || { echo "Galera node $i did not join:"; tail -20 "$work/g$i/error.log"; exit 1; }
done
mariadb -h 127.0.0.1 -P 33071 -u root -e 'CREATE DATABASE IF NOT EXISTS sfbench_galera'
echo "Galera: 3 nodes synced" >&2

# --- one measurement: $1 setup (single|galera), $2 mode, $3 workload; prints summed req/s ---
measure() {
    local setup=$1 mode=$2 workload=$3
    local node_pids=() addrs=()
    # Runs in a subshell ($(...)): its nodes are stopped here, whatever happens.
    trap 'for pid in "${node_pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done' EXIT
    for i in 1 2 3; do
        local url=mysql://root@127.0.0.1:3306/sfbench_galera
        [ "$setup" = galera ] && url=mysql://root@127.0.0.1:$((33070 + i))/sfbench_galera
        local dir=$work/$setup-$mode-$workload-n$i
        printf 'spring.session.storefront.save=%s\nsession.store.url=%s\nsession.secret=%s\nsession.node.name=n%s\nsession.purge.cron=\n' \
            "$mode" "$url" "$secret" "$i" | node_config "$dir"
        (cd "$dir" && RUST_LOG=warn exec "$sf" serve --bind 127.0.0.1:0 --config config > out.log 2> err.log) &
        node_pids+=($!)
    done
    for i in 1 2 3; do
        local dir=$work/$setup-$mode-$workload-n$i addr
        addr=$(node_addr "$dir")
        addrs+=("$addr")
    done
    local outs=()
    for i in 0 1 2; do
        local share=$(( users / 3 + (i < users % 3 ? 1 : 0) ))
        "$load" load --addr "${addrs[$i]}" --workload "$workload" --users "$share" \
            --warmup 2 --seconds "$seconds" > "$work/load$i.txt" &
        outs+=($!)
    done
    for pid in "${outs[@]}"; do wait "$pid"; done
    for pid in "${node_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    local port=3306
    [ "$setup" = galera ] && port=33071
    mariadb -h 127.0.0.1 -P $port -u root sfbench_galera -e 'DELETE FROM stored_http_session' 2>/dev/null || true
    # Summed req/s, errors and lost sessions; the worst p99.
    cat "$work"/load[012].txt | awk '
        { for (i = 1; i <= NF; i++) {
            if ($(i+1) == "req/s,") rps += $i
            if ($i == "p99") { v = $(i+1); if (v + 0 > p99) p99 = v + 0 }
            if ($(i+1) == "errors,") errors += $i
            if ($(i+1) == "lost") lost += $i } }
        END { printf "%.0f %.2f %d %d\n", rps, p99, errors, lost }'
}

declare -A results
for round in $(seq 1 "$rounds"); do
    for workload in write mixed; do
        for mode in sync async; do
            # Interleaved: the two setups one after the other, in alternating order.
            setups="single galera"
            [ $((round % 2)) = 0 ] && setups="galera single"
            for setup in $setups; do
                line=$(measure "$setup" "$mode" "$workload")
                echo "round $round $workload $mode $setup: $line (req/s, worst p99 ms, errors, lost)" >&2
                results[$workload,$mode,$setup]+="$line;"
            done
        done
    done
done

median() { tr ';' '\n' | sed '/^$/d' | sort -n -k1,1 | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "| workload | mode | one MariaDB req/s | 3-node Galera req/s | Galera ÷ one | p99 ms one / Galera | errors, lost |"
echo "|---|---|---:|---:|---:|---|---|"
for workload in write mixed; do
    for mode in sync async; do
        read -r s_rps s_p99 s_err s_lost <<<"$(median <<<"${results[$workload,$mode,single]}")"
        read -r g_rps g_p99 g_err g_lost <<<"$(median <<<"${results[$workload,$mode,galera]}")"
        ratio=$(awk -v a="$g_rps" -v b="$s_rps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        echo "| $workload | $mode | $s_rps | $g_rps | ${ratio}× | $s_p99 / $g_p99 | $s_err+$g_err, $s_lost+$g_lost |"
    done
done
