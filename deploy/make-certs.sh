#!/usr/bin/env bash
# Makes the two certificate authorities a Unibus cluster needs, kept apart on
# purpose (a client certificate must never open a route), and one certificate
# per node from each:
#
#   deploy/make-certs.sh OUT_DIR NODE=ADDR[,ADDR...] [NODE=ADDR...]
#
#   OUT_DIR/client-ca.pem              clients pin it (unibus --ca, nats clients)
#   OUT_DIR/NODE-client.pem/.key       --tls-cert/--tls-key (clients and control plane)
#   OUT_DIR/cluster-ca.pem             --cluster-ca on every node
#   OUT_DIR/NODE-route.pem/.key        --cluster-cert/--cluster-key (server and client auth)
#   OUT_DIR/user-NAME.pem/.key         for an argument user:NAME: a client certificate from the
#                                      client CA, for nodes run with --tls-client-ca (unibus --cert/--key)
#
# ADDR is an IP address or a DNS name the node is reached at; list every one
# that appears in --listen/--advertise and in the route URLs. Keys are
# written 0600; the CA keys stay in OUT_DIR/private (move them offline).
# Example: deploy/make-certs.sh certs a=10.0.0.1,a.bus.example b=10.0.0.2 c=10.0.0.3
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,19p' "$0"; exit 2; }
out="$1"; shift
mkdir -p "$out/private"
chmod 700 "$out/private"
umask 077

ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
days=825

make_ca() {
    local name="$1" subject="$2"
    if [ ! -f "$out/$name.pem" ]; then
        openssl req -x509 "${ec[@]}" -keyout "$out/private/$name.key" -out "$out/$name.pem" \
            -days 3650 -subj "/CN=$subject" >/dev/null 2>&1
        chmod 644 "$out/$name.pem"
        echo "made $out/$name.pem"
    fi
}

issue() {
    local ca="$1" file="$2" cn="$3" sans="$4" usage="$5"
    local ext
    ext=$(mktemp)
    if [ -n "$sans" ]; then
        printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$sans" "$usage" > "$ext"
    else
        printf 'extendedKeyUsage=%s\n' "$usage" > "$ext"
    fi
    openssl req "${ec[@]}" -keyout "$out/$file.key" -out "$out/$file.csr" -subj "/CN=$cn" >/dev/null 2>&1
    openssl x509 -req -in "$out/$file.csr" -CA "$out/$ca.pem" -CAkey "$out/private/$ca.key" -CAcreateserial \
        -out "$out/$file.pem" -days "$days" -extfile "$ext" >/dev/null 2>&1
    rm -f "$out/$file.csr" "$ext"
    chmod 600 "$out/$file.key"
    chmod 644 "$out/$file.pem"
    echo "made $out/$file.pem ($sans)"
}

make_ca client-ca "Unibus client CA"
make_ca cluster-ca "Unibus cluster CA"
for spec in "$@"; do
    if [[ "$spec" == user:* ]]; then
        user="${spec#user:}"
        [[ "$user" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "expected user:NAME with NAME of [A-Za-z0-9_-], got $spec" >&2; exit 2; }
        issue client-ca "user-$user" "$user" "" clientAuth
        continue
    fi
    node="${spec%%=*}"
    addresses="${spec#*=}"
    [ -n "$node" ] && [ "$node" != "$spec" ] || { echo "expected NODE=ADDR[,ADDR...], got $spec" >&2; exit 2; }
    sans=""
    IFS=, read -ra list <<< "$addresses"
    for address in "${list[@]}"; do
        if [[ "$address" =~ ^[0-9.]+$ || "$address" == *:* ]]; then entry="IP:$address"; else entry="DNS:$address"; fi
        sans="${sans:+$sans,}$entry"
    done
    issue client-ca "$node-client" "$node" "$sans" serverAuth
    issue cluster-ca "$node-route" "$node" "$sans" serverAuth,clientAuth
done
