# Shell functions shared by images/build.sh and conformance/images/build.sh (sourced).

log() { printf '%s\n' "$*" >&2; }
hash_of() { sha256sum | cut -c1-16; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The machine's Debian mirror, for debootstrap.
mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
  fi
  printf '%s' "${m:-http://deb.debian.org/debian}"
}

# Installs debootstrap when it is missing, so a fresh machine needs nothing beforehand.
# The host's CA roots, which the production images carry: installed when missing, as the
# test command must get them by itself on a fresh machine.
need_ca_roots() {
  if [ ! -r "$1" ] && [ "$1" = /etc/ssl/certs/ca-certificates.crt ]; then
    log "installing ca-certificates"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >&2
  fi
}

need_debootstrap() {
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
  fi
}
