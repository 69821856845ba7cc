#!/usr/bin/env bash
# A local cluster for flowmesh's scale-out tests (issue 17): a 3-node RabbitMQ cluster and a
# 6-node Redis Cluster (3 masters, 3 replicas), all on 127.0.0.1, started from Debian's
# rabbitmq-server and redis-server packages, with every file under one state directory.
#
#   scripts/cluster.sh up               start everything (idempotent), print the URLs
#   scripts/cluster.sh down             stop the nodes this script started, remove the state dir
#   scripts/cluster.sh status           one line per node; exit 1 if any node is down
#   scripts/cluster.sh env              print the FLOWMESH_*_URL lines (for eval)
#   scripts/cluster.sh ctl N ARGS...    rabbitmqctl ARGS against node N, e.g. `ctl 1 list_queues`
#   scripts/cluster.sh kill rabbit N    SIGKILL RabbitMQ node N (1-3)
#   scripts/cluster.sh start rabbit N   start it again and wait until it runs in the cluster
#   scripts/cluster.sh kill redis PORT  SIGKILL the Redis node on PORT (7101-7106)
#   scripts/cluster.sh start redis PORT start it again and wait until its cluster state is ok
#
# Ports: AMQP 5701-5703, Erlang distribution 25701-25703 (nodes fmc1..fmc3@localhost, CLI tools
# 35701-35730), Redis 7101-7106 (cluster bus 17101-17106). No management plugin.
# State: ${FLOWMESH_CLUSTER_DIR:-/tmp/flowmesh-cluster}. Every wait has a timeout.
#
# The machine's own RabbitMQ (rabbit@localhost, 5672/25672) and Redis (6379) are never touched:
# every RabbitMQ command gets its own RABBITMQ_CONF_ENV_FILE (Debian's
# /etc/rabbitmq/rabbitmq-env.conf would set NODENAME=rabbit@localhost), its own node name, ports,
# directories, config and an Erlang cookie in a private HOME, and runs with `-n <node>`; only
# processes named in our pid files, and whose command line names our node or port, are signalled.
# epmd (127.0.0.1:4369) is shared with the system node, which is fine: the node names differ.
set -euo pipefail

STATE="${FLOWMESH_CLUSTER_DIR:-/tmp/flowmesh-cluster}"
RMQ_BIN=/usr/lib/rabbitmq/bin  # the real scripts; /usr/sbin's wrappers `su rabbitmq` when root
RABBIT_NODES=(1 2 3)
REDIS_PORTS=(7101 7102 7103 7104 7105 7106)
# Keep each Erlang VM small: one scheduler (and one dirty CPU scheduler), few async/IO threads;
# the machine has 2 cores shared with the system services and the tests. The distribution
# listens on loopback only, as Debian's rabbitmq-env.conf does for the system node.
ERL_ARGS='+S 1:1 +SDcpu 1:1 +SDio 4 +A 4 -kernel inet_dist_use_interface {127,0,0,1}'

log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s; fail after SECONDS.
wait_until() {
    local seconds="$1" what="$2" deadline
    shift 2
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { log "timed out after ${seconds}s waiting for $what"; return 1; }
        sleep 0.5
    done
}

gone() { ! kill -0 "$1" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

# ---------------------------------------------------------------- RabbitMQ ----
rabbit_name() { echo "fmc$1@localhost"; }
rabbit_port() { echo $((5700 + $1)); }
rabbit_dir() { echo "$STATE/rabbit$1"; }

# rabbit_env N: the environment every rabbitmq-server/rabbitmqctl call for node N runs in.
rabbit_env() {
    local n="$1" dir
    dir="$(rabbit_dir "$n")"
    export HOME="$STATE/home"  # holds the shared .erlang.cookie, for the nodes and the CLI
    export RABBITMQ_CONF_ENV_FILE="$STATE/rabbitmq-env.conf"
    export RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT
    RABBITMQ_NODENAME="$(rabbit_name "$n")"
    RABBITMQ_NODE_PORT="$(rabbit_port "$n")"
    RABBITMQ_DIST_PORT=$((25700 + n))
    export RABBITMQ_CTL_DIST_PORT_MIN=35701 RABBITMQ_CTL_DIST_PORT_MAX=35730
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_MNESIA_DIR="$dir/mnesia/$RABBITMQ_NODENAME"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_CONFIG_FILES="$dir/conf.d"                  # absent: no /etc/rabbitmq/conf.d
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"  # absent
    export RABBITMQ_ENABLED_PLUGINS_FILE="$STATE/enabled_plugins"
    export RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand"
    export RABBITMQ_PID_FILE="$dir/pid"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$ERL_ARGS"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

# ctl N TIMEOUT ARGS...: rabbitmqctl against node N only.
ctl() {
    local n="$1" limit="$2"
    shift 2
    (rabbit_env "$n" && cd "$STATE" && timeout "$limit" "$RMQ_BIN/rabbitmqctl" -q -n "$RABBITMQ_NODENAME" "$@")
}

# pid_of FILE PATTERN: the pid in FILE if that process is alive and its command line contains
# PATTERN (so a stale pid file never makes us signal someone else's process).
pid_of() {
    local pid
    [ -s "$1" ] || return 1
    pid="$(tr -dc 0-9 <"$1")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2" || return 1
    echo "$pid"
}

# The VM's command line does not name the node (RabbitMQ starts distribution itself), but it
# carries `-home <our private HOME>`.
rabbit_pid() { pid_of "$(rabbit_dir "$1")/pid" "-home $STATE/home "; }

rabbit_write_config() {
    local n="$1" dir
    dir="$(rabbit_dir "$n")"
    mkdir -p "$dir/mnesia" "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
# fmc$n of flowmesh's local cluster (scripts/cluster.sh); loopback only.
listeners.tcp.1 = 127.0.0.1:$(rabbit_port "$n")
# guest may log in: every listener is on 127.0.0.1 anyway.
loopback_users = none
# flowmesh's codec limit, as in deploy/rabbitmq/flowmesh.conf.
max_message_size = 4194304
# Modest limits for a shared 2-core machine (the default watermark is 40% of RAM per node).
vm_memory_high_watermark.absolute = 1GiB
disk_free_limit.absolute = 200MB
# Quorum queues keep the Raft WAL in memory until it rolls over (default 512 MB).
raft.wal_max_size_bytes = 67108864
log.console = false
log.file.level = info
EOF
}

# rabbit_spawn N: start node N in the background, in its own session (a Ctrl-C in the caller's
# terminal does not reach it); rabbit_launched N waits until its pid file names a live VM.
rabbit_spawn() {
    local n="$1" dir
    dir="$(rabbit_dir "$n")"
    rm -f "$dir/pid"
    (
        rabbit_env "$n"
        cd "$STATE"
        exec setsid "$RMQ_BIN/rabbitmq-server" </dev/null >>"$dir/log/stdout.log" 2>&1 9>&-
    ) &
}
rabbit_launched() {
    wait_until 60 "RabbitMQ node $1's pid file" rabbit_pid "$1" ||
        die "RabbitMQ node $1 did not start; see $(rabbit_dir "$1")/log/"
}
rabbit_launch() { rabbit_spawn "$1" && rabbit_launched "$1"; }

rabbit_await() {  # N SECONDS: wait until node N has booted completely
    ctl "$1" "$(($2 + 5))" await_startup --timeout "$2" >/dev/null ||
        die "RabbitMQ node $1 did not finish booting in $2 s; see $(rabbit_dir "$1")/log/"
}

# running_nodes N: the cluster's running nodes as node N sees them, one per line.
running_nodes() {
    ctl "$1" 30 cluster_status --formatter json |
        python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["running_nodes"]))'
}

rabbit_join() {  # N: node N (fresh) joins node 1's cluster
    log "RabbitMQ fmc$1 joins fmc1"
    ctl "$1" 60 stop_app >/dev/null
    ctl "$1" 60 join_cluster "$(rabbit_name 1)" >/dev/null || die "fmc$1 could not join fmc1"
    ctl "$1" 120 start_app >/dev/null
}

rabbit_kill() {
    local pid
    pid="$(rabbit_pid "$1")" || die "RabbitMQ node $1 is not running"
    kill -KILL "$pid"
    wait_until 30 "RabbitMQ node $1 (pid $pid) to exit" gone "$pid" || exit 1
    log "RabbitMQ fmc$1 killed (pid $pid)"
}

is_member() { running_nodes "$1" | grep -qx "$(rabbit_name "$1")"; }
three_running() { [ "$(running_nodes 1 | wc -l)" -eq 3 ]; }

rabbit_ready() {  # N: wait until node N has booted and runs as a cluster member
    rabbit_await "$1" 120
    wait_until 60 "fmc$1 to be a running member of the cluster" is_member "$1" || exit 1
}

rabbit_start() {  # N: start a stopped member again; it rejoins the cluster from its own data
    if rabbit_pid "$1" >/dev/null; then
        log "RabbitMQ fmc$1 is already running"
    else
        [ -d "$(rabbit_dir "$1")/mnesia" ] || die "no state for RabbitMQ node $1: run 'up' first"
        rabbit_launch "$1"
    fi
    rabbit_ready "$1"
    log "RabbitMQ fmc$1 is running (amqp port $(rabbit_port "$1"))"
}

# ------------------------------------------------------------------- Redis ----
redis_dir() { echo "$STATE/redis$1"; }
redis_pid() { pid_of "$(redis_dir "$1")/redis.pid" "127.0.0.1:$1"; }
rcli() { local port="$1"; shift; timeout 10 redis-cli -h 127.0.0.1 -p "$port" "$@"; }
redis_ping() { [ "$(rcli "$1" ping 2>/dev/null)" = PONG ]; }
redis_cluster_ok() { rcli "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }

redis_write_config() {
    local port="$1" dir
    dir="$(redis_dir "$port")"
    mkdir -p "$dir"
    cat >"$dir/redis.conf" <<EOF
# Node $port of flowmesh's local Redis Cluster (scripts/cluster.sh); loopback only.
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
cluster-enabled yes
cluster-config-file nodes.conf
# A master that does not answer for 5 s is failed over to its replica.
cluster-node-timeout 5000
# flowmesh requires every commit on disk before the reply (RedisStoreConfig's default check).
appendonly yes
appendfsync always
save ""
EOF
}

redis_launch() {
    local port="$1"
    redis-server "$(redis_dir "$port")/redis.conf" </dev/null >/dev/null 2>&1 9>&- ||
        die "redis-server $port did not start; see $(redis_dir "$port")/redis.log"
    wait_until 30 "Redis $port to answer PING" redis_ping "$port" ||
        die "Redis $port did not come up; see $(redis_dir "$port")/redis.log"
}

redis_kill() {
    local pid
    pid="$(redis_pid "$1")" || die "Redis $1 is not running"
    kill -KILL "$pid"
    wait_until 30 "Redis $1 (pid $pid) to exit" gone "$pid" || exit 1
    log "Redis $1 killed (pid $pid)"
}

redis_ready() {
    wait_until 60 "Redis $1 to report cluster_state:ok" redis_cluster_ok "$1" || exit 1
}

redis_start() {
    if redis_pid "$1" >/dev/null; then
        log "Redis $1 is already running"
    else
        [ -f "$(redis_dir "$1")/redis.conf" ] || die "no state for Redis $1: run 'up' first"
        redis_launch "$1"
    fi
    redis_ready "$1"
    log "Redis $1 is running ($(rcli "$1" role | head -1))"
}

# ------------------------------------------------------------------ whole cluster ----
urls() {
    local amqp="" redis="" n port
    for n in "${RABBIT_NODES[@]}"; do
        amqp+="${amqp:+,}amqp://guest:guest@127.0.0.1:$(rabbit_port "$n")"
    done
    for port in "${REDIS_PORTS[@]}"; do redis+="${redis:+,}127.0.0.1:$port"; done
    echo "FLOWMESH_AMQP_URL=$amqp"
    echo "FLOWMESH_REDIS_URL=redis+cluster://$redis"
}

rss() {  # PID: its resident memory, for status lines
    if [ -n "${1:-}" ]; then
        awk '/^VmRSS/ {printf "rss %d MiB", $2 / 1024}' "/proc/$1/status" 2>/dev/null || true
    fi
}

# healthy [-v]: 0 if every node runs and both clusters are whole; -v prints one line per node.
healthy() {
    local verbose="${1:-}" ok=0 n port members="" state role line
    for n in "${RABBIT_NODES[@]}"; do
        [ -n "$members" ] || members="$(rabbit_pid "$n" >/dev/null && running_nodes "$n" 2>/dev/null)" || true
    done
    for n in "${RABBIT_NODES[@]}"; do
        if ! rabbit_pid "$n" >/dev/null; then
            line="down (no process)"; ok=1
        elif ! port_open "$(rabbit_port "$n")"; then
            line="booting (amqp port closed)"; ok=1
        elif ! grep -qx "$(rabbit_name "$n")" <<<"$members"; then
            line="not a running cluster member"; ok=1
        else
            line="up"
        fi
        [ -z "$verbose" ] || printf 'rabbitmq %-15s amqp://127.0.0.1:%s  %-28s %s\n' \
            "$(rabbit_name "$n")" "$(rabbit_port "$n")" "$line" "$(rss "$(rabbit_pid "$n")")"
    done
    for port in "${REDIS_PORTS[@]}"; do
        if ! redis_pid "$port" >/dev/null; then
            line="down (no process)"; ok=1
        elif ! redis_ping "$port"; then
            line="not answering"; ok=1
        else
            state="$(rcli "$port" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')"
            role="$(rcli "$port" role | head -1)"
            line="up $role cluster_state:$state"
            [ "$state" = ok ] || ok=1
        fi
        [ -z "$verbose" ] || printf 'redis    127.0.0.1:%-14s %-35s %s\n' \
            "$port" "$line" "$(rss "$(redis_pid "$port")")"
    done
    return "$ok"
}

down() {
    local n port pid pids=()
    [ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; return 0; }
    # SIGTERM stops RabbitMQ and Redis cleanly; the state is deleted anyway, so stragglers get
    # SIGKILL after 30 s.
    for n in "${RABBIT_NODES[@]}"; do
        if pid="$(rabbit_pid "$n")"; then kill -TERM "$pid"; pids+=("$pid"); fi
    done
    for port in "${REDIS_PORTS[@]}"; do
        if pid="$(redis_pid "$port")"; then kill -TERM "$pid"; pids+=("$pid"); fi
    done
    for pid in "${pids[@]}"; do
        wait_until 30 "pid $pid to exit" gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$STATE"
    log "stopped ${#pids[@]} node(s), removed $STATE"
}

check_ports_free() {
    local port busy=()
    for port in 5701 5702 5703 25701 25702 25703 "${REDIS_PORTS[@]}" 17101 17102 17103 17104 17105 17106; do
        port_free "$port" || busy+=("$port")
    done
    ((${#busy[@]} == 0)) || die "ports in use by something else: ${busy[*]} (ss -tlnp shows what)"
    local n
    for n in "${RABBIT_NODES[@]}"; do
        ! epmd -names 2>/dev/null | grep -q "^name fmc$n at" ||
            die "an Erlang node fmc$n is already registered with epmd (another state dir?)"
    done
}

up() {
    local started=$SECONDS n port
    { command -v redis-server && command -v redis-cli; } >/dev/null ||
        die "redis-server/redis-cli not found (apt-get install redis-server)"
    [ -x "$RMQ_BIN/rabbitmq-server" ] || die "$RMQ_BIN/rabbitmq-server not found (apt-get install rabbitmq-server)"

    if [ -f "$STATE/formed" ]; then
        if healthy; then
            log "already up and healthy ($STATE)"
            urls
            return 0
        fi
        # Formed earlier, some node is down (killed by a test, or the machine rebooted): start
        # whatever is missing; each node rejoins from its own data.
        log "cluster exists but is not whole: starting the missing nodes"
        local missing=()
        for n in "${RABBIT_NODES[@]}"; do
            rabbit_pid "$n" >/dev/null || { rabbit_spawn "$n"; missing+=("fmc$n"); }
        done
        for port in "${REDIS_PORTS[@]}"; do
            redis_pid "$port" >/dev/null || { redis_launch "$port"; missing+=("redis:$port"); }
        done
        log "started ${missing[*]:-nothing (all processes were running)}"
        for n in "${RABBIT_NODES[@]}"; do rabbit_launched "$n"; done
        for n in "${RABBIT_NODES[@]}"; do rabbit_ready "$n"; done
        for port in "${REDIS_PORTS[@]}"; do redis_ready "$port"; done
        healthy -v >&2 || die "cluster still not healthy; 'scripts/cluster.sh down' and 'up' again"
        log "up again after $((SECONDS - started)) s"
        urls
        return 0
    fi
    if [ -d "$STATE" ]; then
        log "$STATE holds a cluster that never finished forming: removing it first"
        down
    fi
    check_ports_free

    log "starting in $STATE"
    mkdir -p "$STATE/home"
    chmod 700 "$STATE/home"
    # One cookie for the three nodes and their CLI calls (Erlang wants it private).
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/home/.erlang.cookie"
    chmod 400 "$STATE/home/.erlang.cookie"
    echo '# flowmesh cluster: replaces /etc/rabbitmq/rabbitmq-env.conf (see scripts/cluster.sh)' \
        >"$STATE/rabbitmq-env.conf"
    echo '[].' >"$STATE/enabled_plugins"  # no plugins: no management listener
    for n in "${RABBIT_NODES[@]}"; do rabbit_write_config "$n"; done
    for port in "${REDIS_PORTS[@]}"; do redis_write_config "$port"; done

    # The Erlang VMs boot in parallel with the Redis work.
    for n in "${RABBIT_NODES[@]}"; do rabbit_spawn "$n"; done
    for port in "${REDIS_PORTS[@]}"; do redis_launch "$port"; done
    for n in "${RABBIT_NODES[@]}"; do rabbit_launched "$n"; done
    log "creating the Redis Cluster"
    local addrs=()
    for port in "${REDIS_PORTS[@]}"; do addrs+=("127.0.0.1:$port"); done
    timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$STATE/redis-cluster-create.log" 2>&1 ||
        die "redis-cli --cluster create failed; see $STATE/redis-cluster-create.log"
    for port in "${REDIS_PORTS[@]}"; do redis_ready "$port"; done
    log "Redis Cluster ok after $((SECONDS - started)) s"

    for n in "${RABBIT_NODES[@]}"; do rabbit_await "$n" 120; done
    log "RabbitMQ nodes booted after $((SECONDS - started)) s"
    rabbit_join 2
    rabbit_join 3
    wait_until 60 "3 running RabbitMQ cluster members" three_running || exit 1
    touch "$STATE/formed"
    healthy -v >&2 || die "cluster formed but not healthy"
    log "up in $((SECONDS - started)) s"
    urls
}

usage() {
    sed -n '2,/^# State:/s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

node_command() {  # kill|start rabbit N | kill|start redis PORT
    local action="$1" kind="${2:-}" which="${3:-}"
    [ -f "$STATE/formed" ] || die "no cluster in $STATE: run 'up' first"
    case "$kind" in
        rabbit)
            [[ "$which" =~ ^[123]$ ]] || die "RabbitMQ node must be 1, 2 or 3"
            "rabbit_$action" "$which" ;;
        redis)
            [[ " ${REDIS_PORTS[*]} " == *" $which "* ]] || die "Redis port must be one of ${REDIS_PORTS[*]}"
            "redis_$action" "$which" ;;
        *) usage ;;
    esac
}

# Commands that change the cluster take a lock, so two callers (two test sessions, say) never
# start or stop nodes at the same time. It is a file beside the state dir and stays there.
# Every node is started with fd 9 closed: a daemon that inherited it would hold the lock forever.
case "${1:-}" in
    up | down | kill | start)
        mkdir -p "$(dirname "$STATE")"
        exec 9>"$STATE.lock"
        flock -w 600 9 || die "another scripts/cluster.sh has held $STATE.lock for 10 minutes" ;;
esac

case "${1:-}" in
    up) up ;;
    down) down ;;
    status)
        [ -f "$STATE/formed" ] || { echo "no cluster in $STATE"; exit 1; }
        healthy -v ;;
    env) urls ;;
    ctl)
        [[ "${2:-}" =~ ^[123]$ ]] || die "usage: scripts/cluster.sh ctl N rabbitmqctl-args..."
        n="$2"
        shift 2
        ctl "$n" 120 "$@" ;;
    kill | start) node_command "$@" ;;
    *) usage ;;
esac
