#!/usr/bin/env bash
# Builds the production images of the relay and the operator without any registry:
#   runtime   a Debian bookworm `minbase` rootfs made with debootstrap from the machine's
#             apt mirror (no mail software, no apt lists, docs, man pages or locales), with
#             the user nonroot (65532) and its spool directory, imported with `docker import`
#   relay     the host's `cargo build --release` relay binary (debug info stripped, symbols
#             kept) on that runtime, user 65532
#   operator  likewise for the operator
# The builder stage is the host itself: its glibc must not be newer than the runtime's, which
# the script checks before it builds anything.
#
# Each image is tagged with the workspace version (`smtprelay-relay:0.1.0`, the tag deploy/
# uses) and with that version and a hash of its inputs (`smtprelay-relay:0.1.0-<hash>`); an
# image whose inputs have not changed is not rebuilt.
#
# usage: images/build.sh [runtime|relay|operator|all]...   (default: all = relay operator)
# Prints `name=image:tag` lines on standard output (the content-hash tag, then
# `name-version=` with the version tag); progress goes to standard error.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${SMTPRELAY_IMAGE_CACHE:-$root/target/images}
suite=bookworm
uid=65532
mkdir -p "$cache"

. "$here/lib.sh"
version() { awk '/^\[workspace.package\]/ {p=1} p && /^version/ {gsub(/"/, "", $3); print $3; exit}' "$root/Cargo.toml"; }

# The runtime's recipe is this function's text: changing it changes the tag.
build_runtime() {
  local tag="smtprelay-runtime:$suite-$( (echo "$suite $uid"; declare -f build_runtime) | hash_of)"
  if ! have_image "$tag"; then
    need_debootstrap
    local dir="$cache/runtime-$suite"
    rm -rf "$dir"
    log "debootstrap --variant=minbase $suite from $(mirror) (about a minute)"
    DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase "$suite" "$dir" "$(mirror)" >&2
    # Nothing of this is read at run time (the packages' copyright files stay).
    rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/cache/debconf/*-old \
      "$dir"/var/log/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/* \
      "$dir"/usr/share/lintian "$dir"/tmp/* 2>/dev/null || true
    find "$dir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
    # The unprivileged user both programs run as, and the relay's spool (a volume in a pod).
    echo "nonroot:x:$uid:$uid:nonroot:/nonexistent:/usr/sbin/nologin" >>"$dir/etc/passwd"
    echo "nonroot:x:$uid:" >>"$dir/etc/group"
    echo "nonroot:!:1::::::" >>"$dir/etc/shadow"
    mkdir -p "$dir/var/spool/smtprelay" "$dir/etc/smtprelay"
    chown "$uid:$uid" "$dir/var/spool/smtprelay"
    chmod 0750 "$dir/var/spool/smtprelay"
    tar -C "$dir" --numeric-owner -c . | docker import \
      -c "USER $uid:$uid" -c "ENV LANG=C.UTF-8" \
      -c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" - "$tag" >&2
    rm -rf "$dir"
  fi
  echo "$tag"
}

# The glibc the runtime ships must be at least the builder's (the host's), or the binaries
# may need symbols it lacks.
check_glibc() {
  local runtime=$1 host image
  host=$(dpkg-query -W -f='${Version}' libc6 2>/dev/null || ldd --version | awk 'NR==1 {print $NF}')
  image=$(docker run --rm --entrypoint /usr/bin/dpkg-query "$runtime" -W -f='${Version}' libc6)
  if ! dpkg --compare-versions "$image" ge "$host" 2>/dev/null; then
    log "the runtime's glibc ($image) is older than the builder's ($host): build on $suite"
    exit 1
  fi
  log "glibc: builder $host, runtime $image"
}

# build_binary NAME PACKAGE RUNTIME: the release binary NAME of PACKAGE on RUNTIME.
build_binary() {
  local name=$1 package=$2 runtime=$3 ver
  ver=$(version)
  log "building the release $name binary"
  (cd "$root" && cargo build --release -p "$package" --bin "$name" >&2)
  local ctx="$cache/$name-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$here/$name/Dockerfile" "$ctx/"
  cp "$root/target/release/$name" "$ctx/$name"
  # Line tables are for local debugging; the image keeps symbol names (backtraces name
  # functions) at a fifth of the size.
  if command -v strip >/dev/null; then strip --strip-debug "$ctx/$name"; fi
  local tag
  tag="smtprelay-$name:$ver-$( (echo "$runtime $ver"; cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | hash_of)"
  if ! have_image "$tag"; then
    log "building $tag"
    DOCKER_BUILDKIT=0 docker build -q --build-arg "RUNTIME=$runtime" --build-arg "VERSION=$ver" \
      -t "$tag" "$ctx" >&2
  fi
  docker tag "$tag" "smtprelay-$name:$ver" >&2
  echo "$name=$tag"
  echo "$name-version=smtprelay-$name:$ver"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
runtime=$(build_runtime)
check_glibc "$runtime"
echo "runtime=$runtime"
for t in "${targets[@]}"; do
  case "$t" in
    runtime) ;;
    relay) build_binary relay relay "$runtime" ;;
    operator) build_binary operator operator "$runtime" ;;
    all)
      build_binary relay relay "$runtime"
      build_binary operator operator "$runtime"
      ;;
    *) log "unknown image $t (expected runtime, relay, operator or all)"; exit 2 ;;
  esac
done
