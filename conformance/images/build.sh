#!/usr/bin/env bash
# Builds the project's container images without any container registry:
#   base     Debian bookworm rootfs made with debootstrap from the machine's apt mirror,
#            imported with `docker import` (postfix with the Cyrus SASL modules and
#            saslpasswd2, swaks, openssl, dnsmasq, haproxy, and python3-dkim with
#            python3-nacl for an independent DKIM verifier, RSA and Ed25519, inside;
#            debootstrap does not resolve virtual packages, so python3-cffi-backend, which
#            python3-nacl needs, is listed by name)
#   postfix  Postfix as a relay client (relayhost) or as a downstream server
#   dns      dnsmasq serving the MX records a scenario needs
#   haproxy  HAProxy in front of the relay, sending PROXY protocol headers
#   filters  rspamd and clamav-milter (with clamd), content filters over the milter protocol,
#            on a rootfs of their own (rspamd, clamav-daemon, clamav-milter)
#   relay    the production relay image, as images/build.sh makes it (FROM scratch: the
#            static binary, CA roots and nothing else; user 65532): scenarios run what a
#            cluster runs
#   operator the production operator image, likewise
# Each image is tagged with a hash of its inputs and rebuilt only when they change.
#
# usage: conformance/images/build.sh [base|postfix|dns|haproxy|filters|relay|operator|all]...   (default: all)
# Prints `name=image:tag` lines on standard output; progress goes to standard error.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${SMTPRELAY_IMAGE_CACHE:-$root/target/images}
suite=bookworm
filter_packages=rspamd,clamav-daemon,clamav-milter,ca-certificates
packages=postfix,swaks,openssl,ca-certificates,dnsmasq-base,iproute2,procps,bsd-mailx,libsasl2-modules,sasl2-bin,haproxy,python3-dkim,python3-nacl,python3-cffi-backend
mkdir -p "$cache"

. "$root/images/lib.sh"

# build_rootfs NAME PACKAGES: a Debian rootfs with PACKAGES (comma separated) made with
# debootstrap and imported as smtprelay-NAME:<hash of suite and packages>.
build_rootfs() {
  local name=$1 pkgs=$2
  local tag="smtprelay-$name:$(printf '%s %s' "$suite" "$pkgs" | hash_of)"
  if ! have_image "$tag"; then
    need_debootstrap
    local dir="$cache/rootfs-$name-$suite"
    rm -rf "$dir"
    log "debootstrap $suite with $pkgs from $(mirror) (about a minute)"
    DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase --include="$pkgs" \
      "$suite" "$dir" "$(mirror)" >&2
    # debootstrap can finish with a package left unconfigured (a dependency on a virtual
    # package, say): such a rootfs is never imported.
    local broken
    broken=$(chroot "$dir" dpkg-query -W -f '${Package} ${Status}\n' | grep -v ' install ok installed$' || true)
    for p in ${pkgs//,/ }; do
      chroot "$dir" dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' \
        || broken="$broken"$'\n'"$p not installed"
    done
    if [ -n "${broken//[[:space:]]/}" ]; then
      log "debootstrap left packages unusable; not importing $tag:$broken"
      rm -rf "$dir"
      exit 1
    fi
    # Keep the image small: package lists and caches are not needed at run time.
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
    tar -C "$dir" -c . | docker import - "$tag" >&2
    rm -rf "$dir"
  fi
  echo "$tag"
}

build_base() { build_rootfs base "$packages"; }

# The content filters' rootfs: kept apart from the base, which every other image uses.
build_filters() {
  local rootfs
  rootfs=$(build_rootfs filters-rootfs "$filter_packages")
  build_from filters "$here/filters" "$rootfs"
}

# build_from NAME CONTEXT_DIR BASE_TAG: docker build with the base passed as a build arg.
build_from() {
  local name=$1 context=$2 base=$3
  local tag="smtprelay-$name:$( (echo "$base"; cd "$context" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | hash_of)"
  if ! have_image "$tag"; then
    log "building $tag"
    DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$tag" "$context" >&2
  fi
  echo "$tag"
}

# production NAME: the production image NAME built (or found) by images/build.sh, by its
# content-hash tag.
production() {
  local tag
  tag=$("$root/images/build.sh" "$1" | awk -F= -v name="$1" '$1 == name {print $2}')
  [ -n "$tag" ] || { log "images/build.sh printed no $1= line"; exit 1; }
  echo "$tag"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
base=$(build_base)
echo "base=$base"
for t in "${targets[@]}"; do
  case "$t" in
    base) ;;
    postfix) echo "postfix=$(build_from postfix "$here/postfix" "$base")" ;;
    dns) echo "dns=$(build_from dns "$here/dns" "$base")" ;;
    haproxy) echo "haproxy=$(build_from haproxy "$here/haproxy" "$base")" ;;
    filters) echo "filters=$(build_filters)" ;;
    relay) tag=$(production relay); echo "relay=$tag" ;;
    operator) tag=$(production operator); echo "operator=$tag" ;;
    all)
      echo "postfix=$(build_from postfix "$here/postfix" "$base")"
      echo "dns=$(build_from dns "$here/dns" "$base")"
      echo "haproxy=$(build_from haproxy "$here/haproxy" "$base")"
      echo "filters=$(build_filters)"
      tag=$(production relay); echo "relay=$tag"
      tag=$(production operator); echo "operator=$tag"
      ;;
    *) log "unknown image $t (expected base, postfix, dns, haproxy, filters, relay, operator or all)"; exit 2 ;;
  esac
done
