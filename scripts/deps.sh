# Installs the host packages Stockade needs, when missing. Sourced by
# scripts/up and scripts/test. Only acts as root on Debian/Ubuntu; elsewhere
# it says what is missing.

stockade_missing_packages() {
    local missing=()
    have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || have postgres || missing+=(postgresql)
    have busybox || missing+=(busybox-static)
    have mkfs.ext4 || missing+=(e2fsprogs)
    have ip || missing+=(iproute2)
    have nft || missing+=(nftables)
    have haproxy || missing+=(haproxy)
    have tar || missing+=(tar)
    have useradd || missing+=(passwd)
    for extra in "$@"; do
        case "$extra" in
            chromium) have chromium || missing+=(chromium) ;;
            chromedriver) have chromedriver || missing+=(chromium-driver) ;;
            pebble) have pebble || missing+=(pebble) ;;
            ssh) { have ssh && have sftp && have ssh-keygen; } || missing+=(openssh-client) ;;
            btrfs) have mkfs.btrfs || missing+=(btrfs-progs) ;;
            registry) have docker-registry || missing+=(docker-registry) ;;
            *) ;;
        esac
    done
    echo "${missing[@]}"
}

stockade_install_deps() {
    local missing
    missing="$(stockade_missing_packages "$@")"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing: $missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # shellcheck disable=SC2086
        apt-get install -y -qq --no-install-recommends $missing
    else
        echo "missing packages: $missing (install them, then run this again)" >&2
        return 1
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo (the Rust toolchain) is needed to build Stockade" >&2
        return 1
    fi
}

# Schemathesis checks the API against its own OpenAPI description in the tests.
stockade_install_schemathesis() {
    command -v schemathesis >/dev/null 2>&1 && return 0
    if command -v python3 >/dev/null 2>&1; then
        echo "installing: schemathesis (pip)"
        python3 -m pip install --quiet --disable-pip-version-check schemathesis
        hash -r
    else
        echo "python3 is needed for the API's Schemathesis test" >&2
        return 1
    fi
}

# moto's S3 server stands in for an object store in the backup tests.
stockade_install_moto() {
    python3 -c 'import moto.server' >/dev/null 2>&1 && return 0
    if command -v python3 >/dev/null 2>&1; then
        echo "installing: moto[server] (pip)"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
        hash -r
    else
        echo "python3 is needed for the backup tests' S3 server" >&2
        return 1
    fi
}

# axe-core checks the panel's pages for accessibility in the browser tests.
stockade_install_axe() {
    [ -f target/js/node_modules/axe-core/axe.min.js ] && return 0
    if command -v npm >/dev/null 2>&1; then
        echo "installing: axe-core (npm)"
        npm install --silent --no-audit --no-fund --prefix target/js axe-core@4 >/dev/null
    else
        echo "npm is needed for the browser tests' accessibility checks" >&2
        return 1
    fi
}
