#!/usr/bin/env bash
# Builds the production images of the relay and the operator without any registry. Each
# image holds a statically linked binary, the CA roots and nothing else: no shell, no
# package manager, no setuid file, no libc to patch. It is made `FROM scratch` (nothing
# pulled) from a root filesystem this script stages:
#
#   /usr/local/bin/<name>               the release binary, statically linked
#                                       (`-C target-feature=+crt-static` on the host's gnu
#                                       target; debug info stripped, symbols kept)
#   /etc/ssl/certs/ca-certificates.crt  the host's CA roots (the relay has webpki's compiled
#                                       in; this file is for anything that reads the system
#                                       store, and SSL_CERT_FILE names it)
#   /etc/passwd, /etc/group             root and nonroot (65532), the user both run as
#   /tmp                                1777 (a pod mounts an emptyDir there)
#   relay only: /var/spool/smtprelay (65532, 0750: the spool, a volume in a pod) and
#               /etc/smtprelay (where the pod mounts config and Secrets)
#
# Each image is tagged with the workspace version (`smtprelay-relay:0.1.0`, the tag deploy/
# uses) and with that version and a hash of its inputs (`smtprelay-relay:0.1.0-<hash>`); an
# image whose inputs have not changed is not rebuilt. Its size is printed.
#
# usage: images/build.sh [relay|operator|all]...     (default: all = relay operator)
#        images/build.sh context NAME DIR            only stage the build context of image
#                                                    NAME in DIR (Dockerfile + rootfs.tar),
#                                                    for building it elsewhere (docker,
#                                                    podman, buildah, kaniko: nothing pulled)
# Prints `name=image:tag` lines on standard output (the content-hash tag, then
# `name-version=` with the version tag); progress goes to standard error.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${SMTPRELAY_IMAGE_CACHE:-$root/target/images}
target=x86_64-unknown-linux-gnu
uid=65532
ca_roots=${SMTPRELAY_CA_ROOTS:-/etc/ssl/certs/ca-certificates.crt}
mkdir -p "$cache"

. "$here/lib.sh"
version() { awk '/^\[workspace.package\]/ {p=1} p && /^version/ {gsub(/"/, "", $3); print $3; exit}' "$root/Cargo.toml"; }

# package_of NAME: the cargo package of binary NAME.
package_of() {
  case "$1" in
    relay) echo relay ;;
    operator) echo operator ;;
    *) log "unknown image $1 (expected relay or operator)"; exit 2 ;;
  esac
}

# static_binary NAME: builds the statically linked release binary NAME; prints its path.
static_binary() {
  local name=$1 start=$SECONDS
  log "building the static release $name binary (--target $target, +crt-static)"
  (cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked -p "$(package_of "$name")" --bin "$name" --target "$target" >&2)
  local bin="$root/target/$target/release/$name"
  if ! file "$bin" 2>/dev/null | grep -q 'static'; then
    # `file` may be missing; ldd is the second opinion.
    if ldd "$bin" >/dev/null 2>&1; then
      log "$bin is dynamically linked; a scratch image cannot run it"
      exit 1
    fi
  fi
  log "$name built in $(( SECONDS - start ))s"
  echo "$bin"
}

# stage_context NAME BINARY DIR: the Dockerfile and rootfs.tar of image NAME in DIR.
stage_context() {
  local name=$1 bin=$2 dir=$3
  need_ca_roots "$ca_roots"
  [ -r "$ca_roots" ] || { log "no CA roots at $ca_roots (install ca-certificates, or set SMTPRELAY_CA_ROOTS)"; exit 1; }
  rm -rf "$dir" && mkdir -p "$dir"
  local fs="$dir/rootfs"
  mkdir -p "$fs/usr/local/bin" "$fs/etc/ssl/certs" "$fs/tmp"
  cp "$bin" "$fs/usr/local/bin/$name"
  # Line tables are for local debugging; the image keeps symbol names (backtraces name
  # functions).
  if command -v strip >/dev/null; then strip --strip-debug "$fs/usr/local/bin/$name"; fi
  cp "$ca_roots" "$fs/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/nonexistent:/sbin/nologin\n' \
    "$uid" "$uid" >"$fs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$uid" >"$fs/etc/group"
  if [ "$name" = relay ]; then
    mkdir -p "$fs/var/spool/smtprelay" "$fs/etc/smtprelay"
  fi
  # Owners and modes are set in the archive, not on disk: no root needed.
  local owners=(--numeric-owner --owner=0 --group=0)
  local fixed=(--sort=name --mtime=@0 --format=gnu)
  find "$fs" -type d -exec chmod 0755 {} +
  chmod 0755 "$fs/usr/local/bin/$name"
  chmod 0644 "$fs/etc/ssl/certs/ca-certificates.crt" "$fs/etc/passwd" "$fs/etc/group"
  chmod 1777 "$fs/tmp"
  local exclude=()
  [ "$name" = relay ] && exclude=(--exclude=./var/spool/smtprelay)
  tar -C "$fs" "${owners[@]}" "${fixed[@]}" "${exclude[@]}" -cf "$dir/rootfs.tar" .
  if [ "$name" = relay ]; then
    chmod 0750 "$fs/var/spool/smtprelay"
    tar -C "$fs" --numeric-owner --owner="$uid" --group="$uid" "${fixed[@]}" \
      -rf "$dir/rootfs.tar" ./var/spool/smtprelay
  fi
  rm -rf "$fs"
  cp "$here/$name/Dockerfile" "$dir/Dockerfile"
}

# build_image NAME: the image NAME, built unless its inputs are unchanged.
build_image() {
  local name=$1 ver bin ctx tag
  ver=$(version)
  bin=$(static_binary "$name")
  ctx="$cache/$name-context"
  stage_context "$name" "$bin" "$ctx"
  tag="smtprelay-$name:$ver-$( (echo "$ver"; cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | hash_of)"
  if ! have_image "$tag"; then
    log "building $tag (FROM scratch: nothing is pulled)"
    DOCKER_BUILDKIT=0 docker build -q --build-arg "VERSION=$ver" -t "$tag" "$ctx" >&2
  fi
  docker tag "$tag" "smtprelay-$name:$ver" >&2
  local size
  size=$(docker image inspect --format '{{.Size}}' "$tag")
  log "smtprelay-$name:$ver: $(( size / 1024 / 1024 )) MiB ($size bytes)"
  echo "$name=$tag"
  echo "$name-version=smtprelay-$name:$ver"
  echo "$name-size=$size"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
if [ "${targets[0]}" = context ]; then
  [ ${#targets[@]} -eq 3 ] || { log "usage: images/build.sh context NAME DIR"; exit 2; }
  package_of "${targets[1]}" >/dev/null
  stage_context "${targets[1]}" "$(static_binary "${targets[1]}")" "${targets[2]}"
  log "build context of ${targets[1]} in ${targets[2]}: docker build ${targets[2]}"
  exit 0
fi
for t in "${targets[@]}"; do
  case "$t" in
    # The Debian runtime of earlier versions is gone: nothing to build.
    runtime) ;;
    relay|operator) build_image "$t" ;;
    all)
      build_image relay
      build_image operator
      ;;
    *) log "unknown image $t (expected relay, operator or all)"; exit 2 ;;
  esac
done
