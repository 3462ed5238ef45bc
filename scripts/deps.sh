#!/usr/bin/env bash
# Installs what building and testing need, idempotently: Debian packages (nginx + Lua stack,
# nginx headers, libclang for bindgen, load tools, the language runtimes' libraries) and the
# Rust toolchain components.
set -euo pipefail

PACKAGES=(
  nginx libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-resty-lrucache
  lua-cjson luajit2 libluajit2-5.1-dev nginx-dev libclang-dev pkg-config ca-certificates
  util-linux
  dpkg-dev lintian curl patchelf  # make deb: dpkg-shlibdeps, lintian, the packaged loaders' RUNPATH; the package test's calls
  python3-dev python3-cffi  # loaders/python: libpython3.11 to embed, cffi for raw-style runtimes
  golang-go  # Go runtimes: runtimes/go (the echo example and the restyffi helper)
  default-jdk-headless  # the Java loader: JVM (libjvm) and javac, at /usr/lib/jvm/default-java
  # Node.js loader: what Debian's libnode108 links and the JS packages it reads at start-up from
  # /usr/share/nodejs (libnode108 and libnode-dev themselves: see install_libnode below)
  libuv1-dev libc-ares2 libicu72 libbrotli1 libnghttp2-14 libssl-dev zlib1g node-acorn node-cjs-module-lexer node-undici
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Debian starts a system nginx on :80 after installing it; the project never uses it.
  if pgrep -x nginx >/dev/null && [ -f /run/nginx.pid ]; then
    $SUDO nginx -s stop 2>/dev/null || true
  fi
fi

# The Node.js loader (loaders/nodejs) builds against Debian's shared libnode108 (Node 18) and
# its headers (libnode-dev). Where apt can install them (Debian's own nodejs, or none), it does.
# Next to NodeSource's nodejs it cannot: libnode108 conflicts with the nodejs-legacy that
# package provides, and the only apt way is downgrading nodejs to Debian's, which removes
# NodeSource's npm. Then the two .debs of the version apt offers are fetched with
# `apt-get download` and unpacked (`dpkg-deb -x`) into LIBNODE_CACHE, outside the repository and
# kept between runs; loaders/nodejs/build.rs looks there after /usr and gives the loader an rpath
# to it. Their dependencies are ordinary packages (PACKAGES above): the shared libraries, and
# node-acorn, node-cjs-module-lexer and node-undici, whose files libnode reads by absolute path.
LIBNODE_CACHE=${RESTY_LIBNODE_CACHE:-/var/cache/resty-grpc-zc/libnode108}
install_libnode() {
  local SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if dpkg-query -W -f='${Status}' libnode-dev 2>/dev/null | grep -q "install ok installed"; then
    return
  fi
  local plan
  if plan=$(apt-get install -s --no-install-recommends libnode-dev 2>/dev/null) &&
    ! grep -q '^Remv ' <<<"$plan"; then
    echo "deps: installing libnode-dev"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libnode-dev
    return
  fi
  local version
  version=$(apt-cache policy libnode108 | awk '/Candidate:/ { print $2 }')
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    echo "deps: no libnode108 in apt's lists; the Node.js loader cannot be built" >&2
    return 1
  fi
  if [ "$(cat "$LIBNODE_CACHE/.version" 2>/dev/null)" = "$version" ]; then
    return
  fi
  echo "deps: unpacking libnode108 $version into $LIBNODE_CACHE (apt cannot install it here)"
  local tmp
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root \
    "libnode108=$version" "libnode-dev=$version" 2>/dev/null); then
    $SUDO apt-get update -qq
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root \
      "libnode108=$version" "libnode-dev=$version")
  fi
  $SUDO rm -rf "$LIBNODE_CACHE.new"
  $SUDO mkdir -p "$LIBNODE_CACHE.new"
  for deb in "$tmp"/*.deb; do
    $SUDO dpkg-deb -x "$deb" "$LIBNODE_CACHE.new"
  done
  echo "$version" | $SUDO tee "$LIBNODE_CACHE.new/.version" >/dev/null
  $SUDO rm -rf "$LIBNODE_CACHE"
  $SUDO mv "$LIBNODE_CACHE.new" "$LIBNODE_CACHE"
  rm -rf "$tmp"
}
install_libnode

if ! command -v cargo >/dev/null; then
  echo "deps: cargo not found; install Rust with rustup first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c" >/dev/null 2>&1 || echo "deps: could not add rustup component $c" >&2
  fi
done
