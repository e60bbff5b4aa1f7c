# Shared by the bench scripts (sourced, not run): a node's config directory, and its address.
# Expects `repo` (the repository's root) to be set.

# node_config DIR: DIR/config with the shipped project.properties, and standard input as its
# local.properties.
node_config() {
    mkdir -p "$1/config"
    cp "$repo/config/project.properties" "$1/config/"
    cat > "$1/config/local.properties"
}

# node_addr DIR [TRIES]: the address the node started in DIR listens on, once its out.log says
# so; its err.log and exit 1 if that takes more than TRIES quarter-seconds (default 240).
node_addr() {
    local addr="" _
    for _ in $(seq 1 "${2:-240}"); do
        addr=$(sed -n 's|^session-failover listening on http://||p' "$1/out.log" 2>/dev/null || true)
        if [ -n "$addr" ]; then
            echo "$addr"
            return
        fi
        sleep 0.25
    done
    echo "the node in $1 did not start:" >&2
    cat "$1/err.log" >&2
    exit 1
}
