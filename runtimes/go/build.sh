#!/usr/bin/env bash
# Builds a Go runtime as a c-shared library, offline: build.sh OUT.so PKG_DIR [go build args...]
# PKG_DIR is the main package's directory (its module is found from there). The module proxy
# and checksum database are off, and a newer Go must not fetch a toolchain. OUT.so is replaced
# by a rename, and only when it changed: a library that a running nginx has mapped must never
# be rewritten in place.
set -euo pipefail
out=$(realpath -m "$1"); pkg=$2; shift 2
export GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=1 GOWORK=off
if [ -z "${GOCACHE:-}" ] && [ -z "${XDG_CACHE_HOME:-}" ] && [ -z "${HOME:-}" ]; then
  export GOCACHE="$(dirname "$out")/go-cache"
fi
stage="$(dirname "$out")/.go-build/$(basename "$out" .so)"
mkdir -p "$stage"
# The library is named by its SONAME, the output's file name (Debian keeps libraries in the
# system folder only with one); a later -ldflags among the arguments replaces this one.
soname="-ldflags=-extldflags=-Wl,-soname,$(basename "$out")"
(cd "$pkg" && "${GO:-go}" build -buildmode=c-shared -trimpath -o "$stage/lib.so" "$soname" "$@" .)
if ! cmp -s "$stage/lib.so" "$out"; then
  cp "$stage/lib.so" "$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
fi
