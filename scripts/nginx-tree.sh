#!/usr/bin/env bash
# Configures a private copy of Debian's nginx source tree (package nginx-dev) with Debian's own
# flags, so nginx-sys generates bindings for exactly the nginx that runs here.
set -euo pipefail
out=${1:-target/nginx}
if [ -f "$out/objs/ngx_auto_config.h" ]; then
  exit 0
fi
rm -rf "$out"
mkdir -p "$out"
cp -a /usr/share/nginx/src "$out/src"
objs=$(cd "$out" && pwd)/objs
cd "$out/src"
# shellcheck disable=SC1091
. ./conf_flags
./configure --with-cc-opt="$(dpkg-buildflags --get CFLAGS) -fPIC $(dpkg-buildflags --get CPPFLAGS)" \
  --with-ld-opt="$(dpkg-buildflags --get LDFLAGS) -fPIC" "${NGX_CONF_FLAGS[@]}" \
  --builddir="$objs" >"$objs.configure.log" 2>&1 || { cat "$objs.configure.log"; exit 1; }
