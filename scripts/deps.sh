#!/usr/bin/env bash
# Installs what building and testing need, idempotently: Debian packages (nginx + Lua stack,
# nginx headers, libclang for bindgen, load tools) and the Rust toolchain components.
set -euo pipefail

PACKAGES=(
  nginx libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-resty-lrucache
  lua-cjson luajit2 libluajit2-5.1-dev nginx-dev libclang-dev pkg-config ca-certificates
  util-linux
  dpkg-dev lintian curl   # make deb: dpkg-shlibdeps, lintian; the package test's calls
  python3-dev python3-cffi  # loaders/python: libpython3.11 to embed, cffi for raw-style runtimes
  golang-go  # Go runtimes: runtimes/go (the echo example and the restyffi helper)
  default-jdk-headless  # the Java loader: JVM (libjvm) and javac, at /usr/lib/jvm/default-java
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

if ! command -v cargo >/dev/null; then
  echo "deps: cargo not found; install Rust with rustup first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    rustup component add "$c" >/dev/null 2>&1 || echo "deps: could not add rustup component $c" >&2
  fi
done
