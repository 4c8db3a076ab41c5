#!/usr/bin/env bash
# Deploys a Unibus cluster over SSH: certificates, the unibusd binary, the
# hardened systemd unit, each node's /etc/unibus/unibusd.json and data
# directory; then starts the nodes, the first one first.
#
#   deploy/deploy-cluster.sh [--yes] [NODES_ENV]      (NODES_ENV: ./nodes.env)
#
# NODES_ENV is a copy of deploy/nodes.env.example with every CHANGE_ME
# replaced; while one is left the script refuses (exit 2) and names it.
# Without --yes it is a dry run: it prints every command it would run, one a
# line, shell-quoted (the other lines start with #), writes nothing and runs
# nothing (but `unibus identity nkey`, to show the root admin's nkey when the
# identity exists). With --yes it prints and runs them, and stops at the
# first that fails. A re-run is safe (see "Re-running").
#
# Made here, in DEPLOY_DIR (default ./unibus-deploy, 0700):
#   certs/            deploy/make-certs.sh: the client CA and the cluster CA
#                     (their keys in certs/private: move them offline) and
#                     each node's client and route certificates
#   genesis/          the first node's membership log (see below)
#   config/NODE.json  each node's /etc/unibus/unibusd.json
# and ADMIN_IDENTITY (nodes.env; default DEPLOY_DIR/admin.json), the root
# admin, created here by `unibusd init` if it does not exist.
#
# The admin identity never leaves this machine. `unibusd init
# --admin-identity` needs the admin's secret key to sign the log's first
# operation, and a running node takes operations only from its users, so
# there is no way to bootstrap the first node remotely without the key.
# So init runs here, into genesis/, and only the signed log
# (genesis/membership.sqlite3: public keys and signatures) goes to the first
# node. Every node, the first included, then runs `unibusd init --data-dir
# /var/lib/unibus --root ROOT` on its own host: that makes the node's key
# there (node keys never travel either) and, on the first node, checks that
# the copied log was started by that root.
#
# On each node, as root (through `sudo -n` when SSH_USER is not root):
#   user and group unibus (system, no login shell)
#   /etc/unibus 0755, /etc/unibus/tls 0750 root:unibus, /var/lib/unibus 0700 unibus
#   the files are copied into /var/lib/unibus-deploy (0700, removed after),
#   then installed with their modes: /usr/local/bin/unibusd 0755,
#   /etc/systemd/system/unibusd.service 0644, /etc/unibus/unibusd.json 0640
#   root:unibus, certificates 0644, keys 0600 unibus
#   `unibusd init` as unibus, only while /var/lib/unibus holds no
#   membership.sqlite3: an initialised node's data is never touched
# then, once every node is installed: `systemctl daemon-reload && systemctl
# enable --now unibusd`, the first node first (the order is explained at the
# end of the output).
#
# The binary must run on the nodes and here (the local init and nkey): a
# release build for the nodes' architecture with the Swift runtime linked in
# (swift build -c release --static-swift-stdlib), and libsodium, libsqlite3
# and OpenSSL 3 installed on the nodes (deploy/install-deps.sh).
#
# Re-running: certificates are made only for nodes that have none, the
# first node's log only once, and a node's data directory is initialised
# only once; every other file is installed again. A running node keeps
# running: `systemctl reload unibusd` re-reads its configuration, and
# `systemctl restart unibusd`, one node at a time, drains it and starts the
# new binary.
#
# Environment:
#   DEPLOY_BIN_DIR    holds the unibusd to deploy (default REPO/.build/release)
#   DEPLOY_LOCAL_BIN_DIR  unibusd and unibus to run here (default DEPLOY_BIN_DIR)
#   DEPLOY_DIR        the local directory above
#   DEPLOY_SSH        remote shell, called as $DEPLOY_SSH HOST COMMAND
#                     (default: ssh -o BatchMode=yes)
#   DEPLOY_COPY       copy, called as $DEPLOY_COPY LOCALFILE HOST:REMOTEPATH
#                     (default: scp -q)
#   DEPLOY_SYSTEMCTL  the systemctl command on the nodes (default: systemctl)
#   DEPLOY_PREFIX     a rehearsal into local directories (the tests): every
#                     path of node NODE is under DEPLOY_PREFIX/NODE, in the
#                     commands and in its configuration, and no user, owner
#                     or sudo is involved (files stay the invoking user's)
set -Eeuo pipefail
umask 077

repo=$(cd "$(dirname "$0")/.." && pwd)
placeholder=CHANGE_ME

die() { echo "deploy-cluster.sh: $*" >&2; exit 2; }

apply=no
env_file=./nodes.env
while [ $# -gt 0 ]; do
    case $1 in
        --yes) apply=yes ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) die "unknown option $1 (usage: deploy-cluster.sh [--yes] [NODES_ENV])" ;;
        *) env_file=$1 ;;
    esac
    shift
done

# --- settings ------------------------------------------------------------

[ -f "$env_file" ] || die "no $env_file: copy deploy/nodes.env.example to it and replace every $placeholder"
# shellcheck disable=SC1090
source "$env_file"

# Every variable the file assigns, in order, then the ones every node needs.
names=$(sed -nE 's/^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=.*/\2/p' "$env_file" | awk '!seen[$0]++')
left=()
for name in $names; do
    if [[ "${!name-}" == *"$placeholder"* ]]; then left+=("$name"); fi
done
[ ${#left[@]} -eq 0 ] || die "$env_file still has $placeholder in ${left[*]}: give each its real value (or delete the lines of a node not in NODES)"
# And anywhere else in the file (two assignments on one line, declare, …):
# a placeholder is never sent to a host.
if grep -v '^[[:space:]]*#' "$env_file" | grep -q "$placeholder"; then
    die "$env_file still has $placeholder on a line: $(grep -n -v '^[[:space:]]*#' "$env_file" | grep "$placeholder" | head -3 | tr '\n' ' ')"
fi

[ -n "${NODES-}" ] || die "$env_file sets no NODES (the nodes' names, separated by spaces)"
[ -n "${CLUSTER_NAME-}" ] || die "$env_file sets no CLUSTER_NAME"
[[ "$CLUSTER_NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || die "CLUSTER_NAME must be letters, digits, _ . -; got $CLUSTER_NAME"
SSH_USER=${SSH_USER:-root}
[[ "$SSH_USER" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "SSH_USER must be a user name; got $SSH_USER"
CLIENT_PORT=${CLIENT_PORT:-4222}
CLUSTER_PORT=${CLUSTER_PORT:-6222}
CONTROL_PORT=${CONTROL_PORT:-4280}
LISTEN_HOST=${LISTEN_HOST:-0.0.0.0}
[[ "$LISTEN_HOST" =~ ^[A-Za-z0-9.:-]+$ ]] || die "LISTEN_HOST must be an address; got $LISTEN_HOST"
DEPLOY_DIR=${DEPLOY_DIR:-./unibus-deploy}
ADMIN_IDENTITY=${ADMIN_IDENTITY:-$DEPLOY_DIR/admin.json}
ADMIN_HANDLE=${ADMIN_HANDLE:-admin}
DEPLOY_BIN_DIR=${DEPLOY_BIN_DIR:-$repo/.build/release}
DEPLOY_LOCAL_BIN_DIR=${DEPLOY_LOCAL_BIN_DIR:-$DEPLOY_BIN_DIR}
DEPLOY_PREFIX=${DEPLOY_PREFIX:-}
DEPLOY_SYSTEMCTL=${DEPLOY_SYSTEMCTL:-systemctl}
read -ra ssh_command <<< "${DEPLOY_SSH:-ssh -o BatchMode=yes}"
read -ra copy_command <<< "${DEPLOY_COPY:-scp -q}"
if [ -n "$DEPLOY_PREFIX" ]; then
    [[ "$DEPLOY_PREFIX" =~ ^/[A-Za-z0-9_./-]*$ ]] || die "DEPLOY_PREFIX must be an absolute path of letters, digits, _ . / -; got $DEPLOY_PREFIX"
fi

# A node's setting: NODE_<node>_<what>, or the cluster-wide default.
setting() {
    local name="NODE_$1_$2"
    printf '%s' "${!name:-${3-}}"
}

seen=" "
for node in $NODES; do
    [[ "$node" =~ ^[A-Za-z0-9_]+$ ]] || die "node names are letters, digits and _ (they name NODE_<name>_HOST); got $node in NODES"
    [[ "$seen" != *" $node "* ]] || die "node $node is listed twice in NODES"
    seen+="$node "
    for what in HOST ADDR; do
        [ -n "$(setting "$node" "$what")" ] || die "$env_file sets no NODE_${node}_$what"
    done
    [[ "$(setting "$node" HOST)" =~ ^[][A-Za-z0-9._:-]+$ ]] || die "NODE_${node}_HOST must be a host name or address"
    [[ "$(setting "$node" ADDR)" =~ ^[A-Za-z0-9.:-]+$ ]] || die "NODE_${node}_ADDR must be an IP address or a DNS name"
    for what in CLIENT CLUSTER CONTROL; do
        default="${what}_PORT"
        port=$(setting "$node" "${what}_PORT" "${!default}")
        if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
            die "the ${what,,} port of node $node must be 1 to 65535; got $port"
        fi
    done
done
read -ra nodes <<< "$NODES"
first=${nodes[0]}

# --- printing and running --------------------------------------------------

# One word for a POSIX shell: as it is when that is safe, else single-quoted.
quote() {
    case $1 in
        '') printf "''" ;;
        *[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
        *) printf '%s' "$1" ;;
    esac
}

show() {
    local word line=""
    for word in "$@"; do line+="${line:+ }$(quote "$word")"; done
    printf '%s\n' "$line"
}

# Prints a command; runs it with --yes.
run() {
    show "$@"
    if [ "$apply" = yes ]; then "$@"; fi
}

# Prints the command that writes CONTENT (one line) to FILE; writes it with --yes.
write_file() {
    printf "printf '%%s\\\\n' %s > %s\n" "$(quote "$2")" "$(quote "$1")"
    if [ "$apply" = yes ]; then printf '%s\n' "$2" > "$1"; fi
}

trap 'echo "deploy-cluster.sh: stopped: the last command above failed" >&2' ERR

# Where node NODE keeps its files: / on a real host.
root_of() { printf '%s' "${DEPLOY_PREFIX:+$DEPLOY_PREFIX/$1}"; }
# HOST:PORT, with an IPv6 address in brackets.
host_port() { case $1 in *:*) printf '[%s]:%s' "$1" "$2" ;; *) printf '%s:%s' "$1" "$2" ;; esac; }
target_of() { printf '%s@%s' "$SSH_USER" "$(setting "$1" HOST)"; }

if [ -n "$DEPLOY_PREFIX" ]; then
    # A rehearsal: no user, owners or sudo (see the header).
    sudo="" as_unibus="" own_root_group="" own_unibus="" own_login=""
else
    sudo=""
    [ "$SSH_USER" = root ] || sudo="sudo -n"
    as_unibus="runuser -u unibus -- "
    own_root_group="-o root -g unibus "
    own_unibus="-o unibus -g unibus "
    own_login="-o $SSH_USER "
fi

# The commands of a remote script, one after the other.
join() {
    local out="" part
    for part in "$@"; do out+="${out:+; }$part"; done
    printf '%s' "$out"
}

# Prints and runs SCRIPT (commands separated by "; ") on NODE as root.
remote() {
    local script="set -eu; $2"
    if [ -n "$sudo" ]; then script="$sudo sh -euc $(quote "$2")"; fi
    run "${ssh_command[@]}" "$(target_of "$1")" "$script"
}

# Prints and runs the copy of LOCAL_FILE into the node's staging directory as NAME.
copy() {
    run "${copy_command[@]}" "$1" "$target:$stage/$2"
}

if [ "$apply" = yes ]; then
    for program in "$DEPLOY_BIN_DIR/unibusd" "$DEPLOY_LOCAL_BIN_DIR/unibusd" "$DEPLOY_LOCAL_BIN_DIR/unibus"; do
        [ -x "$program" ] || die "no $program: build it (swift build -c release --static-swift-stdlib) or set DEPLOY_BIN_DIR"
    done
    command -v openssl >/dev/null || die "openssl is needed here for the certificates"
    echo "# applying $env_file"
else
    echo "# dry run of $env_file: the commands below are not run and nothing is written; run again with --yes to apply"
fi

# --- here: certificates, the admin's log, configurations ------------------

certs="$DEPLOY_DIR/certs"
genesis="$DEPLOY_DIR/genesis"
echo "# here: certificates, the first node's log, the configurations (in $DEPLOY_DIR)"
run mkdir -p -m 0700 "$DEPLOY_DIR" "$DEPLOY_DIR/config"

missing=()
for node in "${nodes[@]}"; do
    if [ ! -f "$certs/$node-client.pem" ] || [ ! -f "$certs/$node-route.pem" ]; then
        missing+=("$node=$(setting "$node" ADDR)")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    run bash "$repo/deploy/make-certs.sh" "$certs" "${missing[@]}"
fi

if [ ! -f "$genesis/membership.sqlite3" ]; then
    run "$DEPLOY_LOCAL_BIN_DIR/unibusd" init --data-dir "$genesis" --admin-identity "$ADMIN_IDENTITY" --handle "$ADMIN_HANDLE"
    # init also made a node key there; the first node makes its own.
    run rm -f "$genesis/node-identity.json" "$genesis/lock"
    if [ "$apply" = yes ] && [ -s "$genesis/membership.sqlite3-wal" ]; then
        die "$genesis/membership.sqlite3-wal is not empty: the log was not closed cleanly; remove $genesis and run again"
    fi
fi

if [ -f "$ADMIN_IDENTITY" ] && [ -x "$DEPLOY_LOCAL_BIN_DIR/unibus" ]; then
    show "$DEPLOY_LOCAL_BIN_DIR/unibus" identity nkey --identity "$ADMIN_IDENTITY"
    root=$("$DEPLOY_LOCAL_BIN_DIR/unibus" identity nkey --identity "$ADMIN_IDENTITY")
    [[ "$root" =~ ^U[A-Z2-7]{55}$ ]] || die "$ADMIN_IDENTITY gave no user nkey (U…): $root"
    echo "# the root admin: $root"
else
    [ "$apply" = no ] || die "no $ADMIN_IDENTITY: the root admin's identity is needed for the nodes' init"
    root=ROOT_NKEY
    show "$DEPLOY_LOCAL_BIN_DIR/unibus" identity nkey --identity "$ADMIN_IDENTITY"
    echo "# ROOT_NKEY below: what that prints (the root admin's U… nkey), once $ADMIN_IDENTITY exists"
fi

routes=""
for node in "${nodes[@]}"; do
    routes+="${routes:+, }\"tls://$(host_port "$(setting "$node" ADDR)" "$(setting "$node" CLUSTER_PORT "$CLUSTER_PORT")")\""
done
for node in "${nodes[@]}"; do
    r=$(root_of "$node")
    addr=$(setting "$node" ADDR)
    client=$(setting "$node" CLIENT_PORT "$CLIENT_PORT")
    cluster=$(setting "$node" CLUSTER_PORT "$CLUSTER_PORT")
    control=$(setting "$node" CONTROL_PORT "$CONTROL_PORT")
    tls="$r/etc/unibus/tls"
    # `unibusd run` flags in snake_case; every value was checked above to need no JSON escaping.
    json="{\"name\": \"$node\""
    json+=", \"listen\": \"$(host_port "$LISTEN_HOST" "$client")\""
    json+=", \"advertise\": \"tls://$(host_port "$addr" "$client")\""
    json+=", \"control_listen\": \"$(host_port "$LISTEN_HOST" "$control")\""
    json+=", \"advertise_control\": \"https://$(host_port "$addr" "$control")\""
    json+=", \"data_dir\": \"$r/var/lib/unibus\""
    json+=", \"tls_cert\": \"$tls/$node-client.pem\""
    json+=", \"tls_key\": \"file://$tls/$node-client.key\""
    json+=", \"cluster_name\": \"$CLUSTER_NAME\""
    json+=", \"cluster_listen\": \"$(host_port "$LISTEN_HOST" "$cluster")\""
    json+=", \"routes\": [$routes]"
    json+=", \"cluster_cert\": \"$tls/$node-route.pem\""
    json+=", \"cluster_key\": \"file://$tls/$node-route.key\""
    json+=", \"cluster_ca\": \"$tls/cluster-ca.pem\"}"
    write_file "$DEPLOY_DIR/config/$node.json" "$json"
done

# --- each node: user, directories, files, data directory -------------------

for node in "${nodes[@]}"; do
    r=$(root_of "$node")
    stage="$r/var/lib/unibus-deploy"
    target=$(target_of "$node")
    if [ "$node" = "$first" ]; then
        echo "# node $node ($target): the first node, given the admin's log"
    else
        echo "# node $node ($target)"
    fi

    prepare=()
    if [ -z "$DEPLOY_PREFIX" ]; then
        prepare+=("id -u unibus >/dev/null 2>&1 || useradd --system --user-group --home-dir /var/lib/unibus --no-create-home --shell /usr/sbin/nologin unibus")
    fi
    prepare+=("mkdir -p $r/usr/local/bin $r/etc/systemd/system"
              "install -d -m 0755 $r/etc/unibus"
              "install -d -m 0750 ${own_root_group}$r/etc/unibus/tls"
              "install -d -m 0700 ${own_unibus}$r/var/lib/unibus"
              "rm -rf $stage"
              "install -d -m 0700 ${own_login}$stage")
    remote "$node" "$(join "${prepare[@]}")"

    copy "$DEPLOY_BIN_DIR/unibusd" unibusd
    copy "$repo/deploy/systemd/unibusd.service" unibusd.service
    copy "$DEPLOY_DIR/config/$node.json" unibusd.json
    for file in cluster-ca.pem "$node-client.pem" "$node-client.key" "$node-route.pem" "$node-route.key"; do
        copy "$certs/$file" "$file"
    done
    if [ "$node" = "$first" ]; then copy "$genesis/membership.sqlite3" membership.sqlite3; fi

    initialise="${as_unibus}$r/usr/local/bin/unibusd init --data-dir $r/var/lib/unibus --root $root"
    if [ "$node" = "$first" ]; then
        initialise="install -m 0600 ${own_unibus}$stage/membership.sqlite3 $r/var/lib/unibus/membership.sqlite3; $initialise"
    fi
    install=("install -m 0755 $stage/unibusd $r/usr/local/bin/unibusd"
             "install -m 0644 $stage/unibusd.service $r/etc/systemd/system/unibusd.service"
             "install -m 0640 ${own_root_group}$stage/unibusd.json $r/etc/unibus/unibusd.json"
             "install -m 0644 $stage/cluster-ca.pem $stage/$node-client.pem $stage/$node-route.pem $r/etc/unibus/tls/"
             "install -m 0600 ${own_unibus}$stage/$node-client.key $stage/$node-route.key $r/etc/unibus/tls/"
             "if [ ! -e $r/var/lib/unibus/membership.sqlite3 ]; then $initialise; fi"
             "rm -rf $stage")
    remote "$node" "$(join "${install[@]}")"
done

# --- bring-up ----------------------------------------------------------------

echo "# bring-up: $first first, then ${nodes[*]:1}"
for node in "${nodes[@]}"; do
    remote "$node" "$DEPLOY_SYSTEMCTL daemon-reload && $DEPLOY_SYSTEMCTL enable --now unibusd"
done

others="${nodes[*]:1}"
client_url="tls://$(host_port "$(setting "$first" ADDR)" "$(setting "$first" CLIENT_PORT "$CLIENT_PORT")")"
control_url="https://$(host_port "$(setting "$first" ADDR)" "$(setting "$first" CONTROL_PORT "$CONTROL_PORT")")"
echo "# Bring-up order: $first, then ${others:-no other node}."
echo "# $first holds the admin's log and serves on its own from the start."
if [ -n "$others" ]; then
    echo "# The others ($others) hold only the root admin's nkey: each starts at once,"
    echo "# serves, dials its routes in the background (retrying) and takes the membership"
    echo "# log from the first peer it links with (until then its /readyz says it waits for"
    echo "# the log)."
fi
echo "# No node waits for another to start, so no order can deadlock; starting $first first"
echo "# only means the others find the log as soon as they link."
echo "#"
echo "# Clients pin $certs/client-ca.pem and the root admin's nkey $root:"
echo "#   unibus check --identity $ADMIN_IDENTITY --root $root --server $client_url --node $control_url --ca $certs/client-ca.pem"
echo "# Keep $ADMIN_IDENTITY on this machine (and a backup); move $certs/private (the CA keys) offline."
