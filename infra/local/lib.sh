#!/usr/bin/env bash
# Shared helpers for infra/local/* (up, down, scale, services). Source it; do
# not run it. Everything here assumes root (runuser, apt-get, the services).
#
# Secrets rule: a password only ever lives in a 0600 file under
# $STATE_DIR/secrets, in a bash variable, in an environment variable or on a
# pipe. It is never an argument of an external command (argv is world-readable
# in /proc) and never printed.

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    printf 'lib.sh is sourced by infra/local/{up,down,scale,services}, not run\n' >&2
    exit 2
fi
[[ -n ${ADDONREG_LIB_SOURCED:-} ]] && return 0
ADDONREG_LIB_SOURCED=1

# A failure inside $(...) must stop the script too (e.g. a missing secret
# must not become an empty password in a URL).
shopt -s inherit_errexit

# runuser, rabbitmqctl and pg_ctlcluster live in sbin, which a non-login root
# shell (sudo, CI) may lack; rustup puts cargo in ~/.cargo/bin.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if ! command -v cargo >/dev/null 2>&1 && [[ -d ${HOME:-/root}/.cargo/bin ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
export PATH

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
STATE_DIR=${ADDONREG_STATE_DIR:-$REPO_ROOT/.state}
PREFIX=${ADDONREG_PREFIX:-addonreg}
REPLICA_PORT=${ADDONREG_REPLICA_PORT:-5433}
REPLICA_DIR= # set by state_init, once STATE_DIR is absolute
# Where `cargo build --release` (run from the repo root) puts the binaries.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO_ROOT/$TARGET_DIR
RELEASE_DIR=$TARGET_DIR/release

PG_HOST=127.0.0.1
# The machine's primary. Tests and the docs expect 5432; ADDONREG_PG_PORT only
# exists to rehearse these scripts against a scratch cluster.
PG_PORT=${ADDONREG_PG_PORT:-5432}
AMQP_HOSTPORT=127.0.0.1:5672
GATEWAY_LISTEN=127.0.0.1:8080
GATEWAY_METRICS_LISTEN=127.0.0.1:9101
# The edge: Varnish in front of the gateway(s), and the purger's metrics.
EDGE_LISTEN=127.0.0.1:6081
PURGER_METRICS_LISTEN=127.0.0.1:9110
INTAKE_LISTEN=127.0.0.1:8081
# Above the workers' admin ports (9101 + N, N up to 99).
INTAKE_METRICS_LISTEN=127.0.0.1:9300
DB_NAME=addonreg

# ---------------------------------------------------------------- logging ---

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "run as root: it installs packages and runs tools as the postgres user"
}

# Validate the settings that end up inside regexes, URLs and file names.
check_settings() {
    [[ $PREFIX =~ ^[A-Za-z0-9._-]{1,100}$ ]] ||
        die "ADDONREG_PREFIX must be 1 to 100 characters of [A-Za-z0-9._-]"
    if ! [[ $REPLICA_PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((REPLICA_PORT > 65535)); then
        die "ADDONREG_REPLICA_PORT must be a TCP port number"
    fi
    [[ $PG_PORT =~ ^[1-9][0-9]{0,4}$ ]] || die "ADDONREG_PG_PORT must be a TCP port number"
    ((REPLICA_PORT != PG_PORT)) || die "ADDONREG_REPLICA_PORT must differ from the primary's $PG_PORT"
}

# Run "$@" until it succeeds, at most $1 seconds. $2 says what we wait for.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            warn "gave up after ${limit}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# True when something accepts TCP connections on host:port (no ss/netstat
# needed: a fresh minimal machine may lack iproute2).
port_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# ------------------------------------------------------------- state dir ---

# Create the state layout. The state dir itself stays 0755 because the
# replica's data dir lives inside it and postgres must reach it.
state_init() {
    mkdir -p "$STATE_DIR"
    STATE_DIR=$(cd "$STATE_DIR" && pwd -P)
    REPLICA_DIR=$STATE_DIR/replica
    # Marks the directory as ours, so `down --purge` never deletes anything else.
    : >>"$STATE_DIR/.addonreg-state"
    mkdir -p "$STATE_DIR/logs" "$STATE_DIR/pids" "$STATE_DIR/started"
    install -d -m 0700 "$STATE_DIR/secrets" "$STATE_DIR/env"
    chmod 0755 "$STATE_DIR"
}

# ------------------------------------------------------------------- apt ---

APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "cannot install $*: no apt-get (Debian/Ubuntu only)"
    local log=$STATE_DIR/logs/apt.log
    if [[ -z $APT_UPDATED ]]; then
        info "apt-get update"
        apt-get update >>"$log" 2>&1 || {
            tail -n 20 "$log" >&2
            die "apt-get update failed (full output: $log)"
        }
        APT_UPDATED=1
    fi
    info "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >>"$log" 2>&1 || {
        tail -n 20 "$log" >&2
        die "apt-get install $* failed (full output: $log)"
    }
    printf '%s\n' "$@" >>"$STATE_DIR/started/installed-packages"
}

# --------------------------------------------------------------- secrets ---

# Path of secret $1, created once (48 hex digits: safe in URLs, SQL and
# conninfo without any quoting or percent-encoding) and reused afterwards.
secret_file() {
    local f=$STATE_DIR/secrets/$1
    if [[ ! -s $f ]]; then
        (
            umask 077
            od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$f.tmp"
            printf '\n' >>"$f.tmp"
            mv -f "$f.tmp" "$f"
        )
    fi
    chmod 0600 "$f"
    printf '%s\n' "$f"
}

# The value of secret $1. Only ever use it with bash builtins (printf into
# files or pipes, env assignments), never as an external command's argument.
secret_value() {
    local f v
    f=$(secret_file "$1")
    v=$(<"$f")
    [[ $v =~ ^[0-9a-f]{16,}$ ]] || die "secret $f is malformed; delete it and run again"
    printf '%s' "$v"
}

# ------------------------------------------------------------- postgres ---

# Run a command as the postgres OS user, from / so that tools don't complain
# about an unreadable working directory. The environment is kept: that is
# how passwords reach psql and pg_basebackup without touching argv.
as_postgres() {
    (cd / && runuser -u postgres -- "$@")
}

# psql as the superuser through the primary's Unix socket (peer or trust auth
# works on any Debian/Ubuntu default install, unlike TCP). SQL comes as
# arguments (-c ...) or on stdin.
# shellcheck disable=SC2120
pg_super() {
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"
}

# Newest installed server major version, e.g. 15 (empty when none).
pg_installed_major() {
    local d best=
    for d in /usr/lib/postgresql/*/bin/postgres; do
        [[ -x $d ]] || continue
        d=${d#/usr/lib/postgresql/}
        d=${d%%/*}
        if [[ -z $best ]] || ((d > best)); then best=$d; fi
    done
    printf '%s' "$best"
}

# Server binaries (pg_ctl, initdb, pg_basebackup) of major version $1.
pg_bindir() {
    local dir=/usr/lib/postgresql/$1/bin
    if [[ ! -x $dir/pg_ctl ]] && command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir)
    fi
    [[ -x $dir/pg_ctl ]] || die "no pg_ctl for PostgreSQL $1 (looked in /usr/lib/postgresql/$1/bin and pg_config --bindir)"
    printf '%s' "$dir"
}

pg_primary_ready() {
    local major
    major=$(pg_installed_major)
    [[ -n $major ]] && "/usr/lib/postgresql/$major/bin/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT"
}

# Install Postgres if missing, start the 5432 cluster if it is down, wait
# until it accepts connections. A server that already runs is left alone.
ensure_postgres() {
    local major
    major=$(pg_installed_major)
    if [[ -z $major ]] || ! command -v pg_lsclusters >/dev/null 2>&1; then
        step "Installing PostgreSQL"
        apt_install postgresql postgresql-client
        major=$(pg_installed_major)
        [[ -n $major ]] || die "PostgreSQL installed but no server binary under /usr/lib/postgresql"
    fi
    if pg_primary_ready; then
        info "PostgreSQL: running on $PG_HOST:$PG_PORT"
        return 0
    fi

    local ver='' name='' status=''
    read -r ver name status < <(pg_lsclusters -h | awk -v p="$PG_PORT" '$3 == p { print $1, $2, $4; exit }') || true
    if [[ -z $ver ]]; then
        ver=$major name=main
        if pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" { f = 1 } END { exit !f }'; then
            die "cluster $ver/main exists but not on port $PG_PORT; move it (/etc/postgresql/$ver/main/postgresql.conf) or free the port"
        fi
        step "Creating PostgreSQL cluster $ver/$name on port $PG_PORT"
        pg_createcluster "$ver" "$name" --port "$PG_PORT" >>"$STATE_DIR/logs/postgres-setup.log" 2>&1 ||
            die "pg_createcluster failed, see $STATE_DIR/logs/postgres-setup.log"
    fi
    if [[ $status != online* ]]; then
        step "Starting PostgreSQL cluster $ver/$name"
        # Debian's socket dir lives on a tmpfs that nobody recreates without systemd.
        install -d -o postgres -g postgres -m 2775 /var/run/postgresql
        # No systemd here (containers, CI): talk to pg_ctl directly.
        pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start
        printf '%s %s\n' "$ver" "$name" >"$STATE_DIR/started/postgres"
    fi
    wait_until 60 "PostgreSQL on $PG_HOST:$PG_PORT" pg_primary_ready ||
        die "PostgreSQL did not come up; see pg_lsclusters and /var/log/postgresql/"
    info "PostgreSQL: running on $PG_HOST:$PG_PORT"
}

# Server tools the tests run themselves (initdb for their own clusters,
# pg_basebackup for replicas), and runuser to run them as postgres.
ensure_pg_tools() {
    local major bindir tool
    major=$(pg_installed_major)
    bindir=$(pg_bindir "$major")
    for tool in initdb pg_ctl pg_basebackup; do
        [[ -x $bindir/$tool ]] || apt_install "postgresql-$major" "postgresql-client-$major"
        [[ -x $bindir/$tool ]] || die "$bindir/$tool is missing"
    done
    command -v runuser >/dev/null 2>&1 || apt_install util-linux
    command -v runuser >/dev/null 2>&1 || die "runuser is missing (util-linux)"
    info "PostgreSQL tools: $bindir/{initdb,pg_ctl,pg_basebackup}, $(command -v runuser)"
}

pg_super_tcp_ok() {
    psql -X -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1
}

# Tests and sqlx connect as postgres://postgres@127.0.0.1:5432/postgres. When
# pg_hba asks for a password there (scram, the Debian default), give the
# postgres role one and put it in ~/.pgpass, which libpq and sqlx both read.
ensure_pg_superuser_tcp() {
    if pg_super_tcp_ok; then
        info "PostgreSQL: superuser reachable over TCP as postgres@$PG_HOST:$PG_PORT"
        return 0
    fi
    step "Giving role postgres a password for TCP logins (~/.pgpass)"
    local pw pgpass=${HOME:-/root}/.pgpass
    pw=$(secret_value pg_postgres)
    # shellcheck disable=SC2119
    ADDONREG_SECRET=$pw pg_super <<'SQL'
SET log_statement = 'none';
SET log_min_error_statement = 'panic';
SET password_encryption = 'scram-sha-256';
\set pw `printf '%s' "$ADDONREG_SECRET"`
ALTER ROLE postgres PASSWORD :'pw';
SQL
    (
        umask 077
        touch "$pgpass"
        # Replace our earlier lines (a stale password), keep everyone else's.
        grep -vE '^(# added by addonreg|(127\.0\.0\.1|localhost):[^:]*:[^:]*:postgres:)' "$pgpass" >"$pgpass.tmp" || true
        {
            printf '# added by addonreg infra/local/services (secret: %s)\n' "$STATE_DIR/secrets/pg_postgres"
            printf '127.0.0.1:*:*:postgres:%s\n' "$pw"
            printf 'localhost:*:*:postgres:%s\n' "$pw"
        } >>"$pgpass.tmp"
        mv -f "$pgpass.tmp" "$pgpass"
        chmod 0600 "$pgpass"
    )
    pg_super_tcp_ok || die "postgres still cannot log in over TCP; check pg_hba.conf for $PG_HOST (a reject or peer line?)"
    info "PostgreSQL: password set, $pgpass updated"
}

# ------------------------------------------------------------- rabbitmq ---

rabbit_node_up() {
    rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

# Install RabbitMQ if missing, start the node if it is down, wait for it.
ensure_rabbitmq() {
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        step "Installing RabbitMQ"
        apt_install rabbitmq-server
    fi
    if ! rabbit_node_up; then
        step "Starting RabbitMQ"
        # No systemd: run the node detached; it keeps running after we exit.
        rabbitmq-server -detached >>"$STATE_DIR/logs/rabbitmq-start.log" 2>&1 ||
            die "rabbitmq-server -detached failed, see $STATE_DIR/logs/rabbitmq-start.log"
        printf 'rabbit\n' >"$STATE_DIR/started/rabbitmq"
        wait_until 60 "the RabbitMQ node" rabbit_node_up ||
            die "RabbitMQ did not start; see /var/log/rabbitmq/"
    fi
    rabbitmqctl -q await_startup --timeout 60 >/dev/null ||
        die "RabbitMQ did not finish booting; see /var/log/rabbitmq/"
    port_open 127.0.0.1 5672 || wait_until 30 "AMQP on $AMQP_HOSTPORT" port_open 127.0.0.1 5672 ||
        die "RabbitMQ runs but does not listen on $AMQP_HOSTPORT"
    info "RabbitMQ: running on $AMQP_HOSTPORT"
}

# The load test's drivers and baselines: wrk (HTTP load), nginx (the static
# file baseline; only its binary: its own service is never started) and
# pgbench (with PostgreSQL's client tools).
ensure_load_tools() {
    command -v wrk >/dev/null 2>&1 || apt_install wrk
    if ! command -v nginx >/dev/null 2>&1; then
        # A policy that refuses service starts, for this install only, so the
        # package does not start a server on port 80.
        local policy=/usr/sbin/policy-rc.d made=
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1
        fi
        apt_install nginx-light
        [[ -z $made ]] || rm -f "$policy"
    fi
    command -v pgbench >/dev/null 2>&1 || apt_install "postgresql-client-$(pg_installed_major)"
    info "load tools: $(command -v wrk), $(command -v nginx)"
}

# The edge: Varnish and its xkey vmod (varnish-modules). Only the binaries:
# a policy refuses the package's own service start, as for nginx.
ensure_varnish() {
    if ! command -v varnishd >/dev/null 2>&1 || [[ ! -e /usr/lib/varnish/vmods/libvmod_xkey.so ]]; then
        local policy=/usr/sbin/policy-rc.d made=
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1
        fi
        apt_install varnish varnish-modules
        [[ -z $made ]] || rm -f "$policy"
    fi
    info "Varnish: $(command -v varnishd) with xkey"
}

# `infra/local/services ensure`: what the tests and CI need, nothing more.
ensure_services() {
    step "Services"
    ensure_postgres
    ensure_pg_tools
    ensure_pg_superuser_tcp
    ensure_rabbitmq
    ensure_load_tools
    ensure_varnish
}

# ------------------------------------------------------------ processes ---

# Export the variables of env file $1 into the current (sub)shell. The
# settings we manage come only from the file, never from the caller's shell
# (e.g. no ADDONREG_DATABASE_URL for the gateway); others like ADDONREG_LOG
# pass through.
load_env_file() {
    unset ADDONREG_DATABASE_URL ADDONREG_REPLICA_URLS ADDONREG_AMQP_URL \
        ADDONREG_PREFIX ADDONREG_LISTEN ADDONREG_METRICS_LISTEN
    set -a
    # shellcheck source=/dev/null
    . "$1"
    set +a
}

# The binary a process name runs: gateway, worker-1, worker-2, ...
proc_bin() {
    case $1 in
    gateway) printf '%s' "$RELEASE_DIR/api-gateway" ;;
    edge-purger) printf '%s' "$RELEASE_DIR/edge-purger" ;;
    intake) printf '%s' "$RELEASE_DIR/write-worker" ;;
    worker-[1-9] | worker-[1-9]*[0-9]) printf '%s' "$RELEASE_DIR/write-worker" ;;
    *) die "unknown process name: $1" ;;
    esac
}

proc_pidfile() { printf '%s' "$STATE_DIR/pids/$1.pid"; }

# Print the pid of process $1 when it runs: its pid file names a live process
# whose argv[0] is our binary (a recycled pid or a zombie does not count).
proc_pid() {
    local f pid arg0=
    f=$(proc_pidfile "$1")
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    IFS= read -r -d '' arg0 <"/proc/$pid/cmdline" || true
    [[ $arg0 == "$(proc_bin "$1")" ]] || return 1
    printf '%s\n' "$pid"
}

# Names with a pid file, workers in numeric order.
proc_known() {
    local f names=()
    for f in "$STATE_DIR"/pids/*.pid; do
        [[ -e $f ]] || continue
        f=${f##*/}
        names+=("${f%.pid}")
    done
    ((${#names[@]})) && printf '%s\n' "${names[@]}" | sort -t- -k2,2n
    return 0
}

# Start process $1 in the background with the variables of env file $2 and
# arguments "${@:3}", unless it already runs. Logs go to logs/<name>.log.
proc_start() {
    local name=$1 envfile=$2
    shift 2
    local bin pid log
    bin=$(proc_bin "$name")
    [[ -x $bin ]] || die "$bin is missing; run infra/local/up (it builds it)"
    if pid=$(proc_pid "$name"); then
        info "$name: already running (pid $pid)"
        # cargo replaced the file since it started: it runs an older build.
        if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == *" (deleted)" ]]; then
            warn "$name runs an older build of $bin; restart it (infra/local/down, then up) to use the new one"
        fi
        return 0
    fi
    log=$STATE_DIR/logs/$name.log
    (
        load_env_file "$envfile"
        cd "$REPO_ROOT" || exit 1
        # A background subshell is not a process group leader, so setsid
        # execs in place: $! below is the service's own pid. Its own session
        # keeps it alive, and away from our terminal's signals, after we exit.
        exec setsid "$bin" "$@" </dev/null >>"$log" 2>&1
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$(proc_pidfile "$name")"
    # Until exec happens the pid still shows bash; give it a moment.
    wait_until 5 "$name to exec" proc_pid "$name" >/dev/null || true
    info "$name: started (pid $pid), log $log"
}

# Stop process $1 by its pid: SIGTERM, up to 20 s to finish, then SIGKILL.
proc_stop() {
    local name=$1 pid i
    if ! pid=$(proc_pid "$name"); then
        rm -f "$(proc_pidfile "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        proc_pid "$name" >/dev/null || break
        sleep 0.1
    done
    if proc_pid "$name" >/dev/null; then
        warn "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$(proc_pidfile "$name")"
    info "$name: stopped (pid $pid)"
}

# Wait until $2 answers 2xx; if not within $3 seconds (or process $1 died),
# show the end of its log and fail.
wait_http() {
    local name=$1 url=$2 limit=${3:-30}
    local deadline=$((SECONDS + limit))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if ! proc_pid "$name" >/dev/null; then
            warn "$name exited; last lines of $STATE_DIR/logs/$name.log:"
            tail -n 30 "$STATE_DIR/logs/$name.log" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            warn "$name did not answer $url within ${limit}s; last lines of $STATE_DIR/logs/$name.log:"
            tail -n 30 "$STATE_DIR/logs/$name.log" >&2 || true
            return 1
        fi
        sleep 0.5
    done
    info "$name: $url answers"
}

# ------------------------------------------------------------- env files ---

# Write env file $1 (name) from "KEY=value" arguments, 0600. Values are
# hex passwords, host:port and URL characters only: no quoting needed, so
# the file also works for systemd EnvironmentFile= or docker --env-file.
write_env_file() {
    local f=$STATE_DIR/env/$1.env
    shift
    (
        umask 077
        printf '%s\n' '# Written by infra/local; contains secrets (mode 0600).' "$@" >"$f.tmp"
        mv -f "$f.tmp" "$f"
    )
    printf '%s' "$f"
}

worker_metrics_port() { printf '%s' "$((9101 + $1))"; }

# The env file of worker-$1, from the secrets.
write_worker_env() {
    local i=$1 db_pw amqp_pw
    db_pw=$(secret_value pg_addonreg_worker)
    amqp_pw=$(secret_value amqp_addonreg_worker)
    write_env_file "worker-$i" \
        "ADDONREG_DATABASE_URL=postgres://addonreg_worker:$db_pw@$PG_HOST:$PG_PORT/$DB_NAME" \
        "ADDONREG_AMQP_URL=amqp://addonreg_worker:$amqp_pw@$AMQP_HOSTPORT/%2f" \
        "ADDONREG_METRICS_LISTEN=127.0.0.1:$(worker_metrics_port "$i")" \
        "ADDONREG_PREFIX=$PREFIX"
}

# Fail early, with a clear message, when a port we are about to bind is held
# by someone else (else a foreign server could even pass our health check).
require_port_free() {
    local what=$1 hostport=$2
    if port_open "${hostport%:*}" "${hostport##*:}"; then
        die "$hostport (for $what) is already in use by another program; stop it first"
    fi
}

# Start worker-$1 (env file included) and wait for its admin listener.
start_worker() {
    local i=$1 name=worker-$1 envfile port
    port=$(worker_metrics_port "$i")
    envfile=$(write_worker_env "$i")
    if ! proc_pid "$name" >/dev/null; then
        require_port_free "$name metrics" "127.0.0.1:$port"
    fi
    proc_start "$name" "$envfile"
}

wait_worker() {
    wait_http "worker-$1" "http://127.0.0.1:$(worker_metrics_port "$1")/__lbheartbeat__" "${2:-30}"
}

# -------------------------------------------------------------- replica ---

# Server binaries matching the replica's data (its PG_VERSION), else the
# primary's version.
replica_bindir() {
    local major=''
    [[ -r $REPLICA_DIR/PG_VERSION ]] && major=$(<"$REPLICA_DIR/PG_VERSION")
    [[ -n $major ]] || major=$(($(pg_super -Atc 'SHOW server_version_num') / 10000))
    pg_bindir "$major"
}

# Pid of our replica's postmaster when it runs (pg_ctl status checks that
# the pid in postmaster.pid is alive).
replica_pid() {
    [[ -f $REPLICA_DIR/postmaster.pid ]] || return 1
    as_postgres "$(replica_bindir)/pg_ctl" status -D "$REPLICA_DIR" >/dev/null 2>&1 || return 1
    head -n 1 "$REPLICA_DIR/postmaster.pid"
}

# psql as postgres on the replica, through its own socket in its data dir.
pg_replica() {
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -h "$REPLICA_DIR" -p "$REPLICA_PORT" -d postgres "$@"
}

replica_stop() {
    local pid
    if pid=$(replica_pid); then
        as_postgres "$(replica_bindir)/pg_ctl" stop -D "$REPLICA_DIR" -m fast -w -t 60 >/dev/null
        info "replica: stopped (pid $pid)"
    fi
}

# ----------------------------------------------------------------- edge ---

EDGE_DIR= # set by edge_init
edge_init() { EDGE_DIR=$STATE_DIR/varnish; }

edge_pid() {
    local pid
    [[ -r $EDGE_DIR/varnishd.pid ]] || return 1
    pid=$(<"$EDGE_DIR/varnishd.pid")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    grep -qa varnishd "/proc/$pid/cmdline" || return 1
    printf '%s\n' "$pid"
}

# Varnish on $EDGE_LISTEN with infra/varnish/addonreg.vcl in front of the
# gateway, its working dir (varnishd -n) under the state dir.
start_edge() {
    local pid
    edge_init
    if pid=$(edge_pid); then
        info "varnish: already running (pid $pid)"
        return 0
    fi
    require_port_free varnish "$EDGE_LISTEN"
    mkdir -p "$EDGE_DIR"
    cat >"$EDGE_DIR/backends.vcl" <<VCL
# Written by infra/local/up: the gateways behind the edge.
backend gateway {
    .host = "${GATEWAY_LISTEN%:*}";
    .port = "${GATEWAY_LISTEN##*:}";
    .connect_timeout = 1s;
    # The purger repeats each purge after ADDONREG_EDGE_REPURGE_AFTER_MS
    # (10 s): longer than any fetch may take here (docs/edge.md).
    .first_byte_timeout = 5s;
    .between_bytes_timeout = 2s;
    .probe = { .url = "/__lbheartbeat__"; .interval = 1s; .timeout = 500ms; .window = 3; .threshold = 2; .initial = 3; }
}
sub vcl_init { gateways.add_backend(gateway); }
VCL
    varnishd -j none -n "$EDGE_DIR/work" -a "$EDGE_LISTEN" -T none \
        -P "$EDGE_DIR/varnishd.pid" -p "vcl_path=$EDGE_DIR" \
        -f "$REPO_ROOT/infra/varnish/addonreg.vcl" -s malloc,256m \
        >>"$STATE_DIR/logs/varnish.log" 2>&1 || {
        tail -n 20 "$STATE_DIR/logs/varnish.log" >&2
        die "varnishd did not start (log $STATE_DIR/logs/varnish.log)"
    }
    wait_until 10 "varnish on $EDGE_LISTEN" edge_pid >/dev/null || die "varnishd did not start"
    info "varnish: started (pid $(edge_pid)) on http://$EDGE_LISTEN, log $STATE_DIR/logs/varnish.log"
}

stop_edge() {
    local pid
    edge_init
    if pid=$(edge_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        wait_until 10 "varnish to stop" bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
        rm -f "$EDGE_DIR/varnishd.pid"
        info "varnish: stopped (pid $pid)"
    else
        info "varnish: not running"
    fi
}

# --------------------------------------------------------------- status ---

status_row() { printf '    %-10s %-8s %s\n' "$@"; }

print_status() {
    local pid datadir name addr
    status_row COMPONENT PID ADDRESS
    pid=-
    if datadir=$(pg_super -Atc 'SHOW data_directory' 2>/dev/null) && [[ -r $datadir/postmaster.pid ]]; then
        pid=$(head -n 1 "$datadir/postmaster.pid")
    fi
    status_row postgres "$pid" "$PG_HOST:$PG_PORT (primary; database $DB_NAME)"
    pid=$(replica_pid) || pid=-
    status_row replica "$pid" "127.0.0.1:$REPLICA_PORT (streaming standby, data $REPLICA_DIR)"
    pid=$(rabbitmqctl -q eval 'list_to_integer(os:getpid()).' 2>/dev/null) || pid=-
    status_row rabbitmq "$pid" "$AMQP_HOSTPORT (vhost /, prefix $PREFIX)"
    edge_init
    pid=$(edge_pid) || pid=-
    status_row varnish "$pid" "http://$EDGE_LISTEN (the edge, in front of the gateway)"
    while IFS= read -r name; do
        pid=$(proc_pid "$name") || pid=-
        case $name in
        gateway) addr="http://$GATEWAY_LISTEN (metrics http://$GATEWAY_METRICS_LISTEN/metrics)" ;;
        edge-purger) addr="metrics http://$PURGER_METRICS_LISTEN/metrics" ;;
        intake) addr="http://$INTAKE_LISTEN (metrics http://$INTAKE_METRICS_LISTEN/metrics)" ;;
        worker-*) addr="metrics http://127.0.0.1:$(worker_metrics_port "${name#worker-}")/metrics" ;;
        esac
        [[ $pid != - ]] || addr="$addr (not running)"
        status_row "$name" "$pid" "$addr"
    done < <(proc_known)
}
