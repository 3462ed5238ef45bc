#!/usr/bin/env bash
# The Debian packages on this machine, the way their users get them: builds them
# (scripts/deb.sh, lintian errors fail), installs them with apt, starts the SYSTEM nginx
# (/usr/sbin/nginx) with a Debian-style configuration (modules from /etc/nginx/modules-enabled,
# the package's example as conf.d/grpc.conf) that has no lua_package_path and no
# LD_LIBRARY_PATH, makes a unary gRPC call, a server stream and a metrics scrape through it
# against the test gRPC server, calls the article's Python runtime through the packaged Python
# loader, checks the libraries came from the system folder, then reinstalls over the installed
# packages, removes and purges them and checks every file they had is gone.
#
# It runs nginx on its own prefix and a free port (the machine's /etc/nginx is only read), and
# purges the packages at the end, so the machine is as it was; a package that was installed
# before the test is installed again from the same build at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
pkg=resty-grpc-zc
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

scripts/deb.sh --lintian
# The packages this machine can install: the gRPC client and the loaders whose interpreter
# Debian can give it (not resty-ffi-nodejs: apt refuses Debian's libnode108 next to the
# NodeSource nodejs these machines carry; docs/debian.md).
pkgs=("$pkg")
[ -e target/debian/resty-ffi-python3_*.deb ] && pkgs+=(resty-ffi-python3)
[ -e target/debian/resty-ffi-java_*.deb ] && pkgs+=(resty-ffi-java)
debs=()
for p in "${pkgs[@]}"; do debs+=("./$(ls target/debian/${p}_*.deb | head -1)"); done
was_installed=()
for p in "${pkgs[@]}"; do installed "$p" && was_installed+=("$p"); done

work=$(mktemp -d /tmp/deb-test.XXXXXX)
chmod 0755 "$work"
nginx_pid="" grpc_pid=""
cleanup() {
  [ -n "$nginx_pid" ] && { kill -QUIT "$nginx_pid" 2>/dev/null; wait "$nginx_pid" 2>/dev/null; }
  [ -n "$grpc_pid" ] && { kill "$grpc_pid" 2>/dev/null; wait "$grpc_pid" 2>/dev/null; }
  $SUDO apt-get purge -y -qq "${pkgs[@]}" >/dev/null 2>&1 || true
  if ((${#was_installed[@]})); then
    $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "deb-test: apt-get install ${debs[*]}"
$SUDO apt-get install -y -qq "${debs[@]}" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt install"; }
for p in "${pkgs[@]}"; do installed "$p" || fail "$p not installed after apt install"; done
for p in "${pkgs[@]}"; do dpkg -L "$p"; done | while read -r f; do
  [ -f "$f" ] || [ -L "$f" ] && echo "$f"
done | sort -u >"$work/files"
[ -s "$work/files" ] || fail "dpkg -L lists no files"
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
for f in /usr/lib/$multiarch/libresty_ffi.so /usr/lib/$multiarch/libresty_grpc_zc.so \
         /usr/share/lua/5.1/resty_ffi.lua /usr/share/lua/5.1/resty/grpc_zc.lua \
         /usr/share/doc/$pkg/examples/grpc.conf /usr/share/doc/$pkg/copyright; do
  grep -qx "$f" "$work/files" || fail "$f is not in the package"
done
python=0 java=0
[[ " ${pkgs[*]} " == *" resty-ffi-python3 "* ]] && python=1
[[ " ${pkgs[*]} " == *" resty-ffi-java "* ]] && java=1

# The test gRPC server (Greeter, RouteGuide) on a free port.
target/release/grpc-test-server --listen 127.0.0.1:0 >"$work/grpc.out" 2>&1 &
grpc_pid=$!
grpc_addr=""
for _ in $(seq 100); do
  grpc_addr=$(sed -n 's/^listening //p' "$work/grpc.out")
  [ -n "$grpc_addr" ] && break
  sleep 0.1
done
[ -n "$grpc_addr" ] || fail "the gRPC server did not start"

# A Debian-style nginx layout on a private prefix: the system's modules-enabled, the package's
# example as conf.d/grpc.conf (service address, proto folder and port put in), nothing else.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/conf.d" "$work/proto" "$work/logs" "$work/tmp"
# modules-enabled names modules relative to the prefix, as Debian's /usr/share/nginx has them.
ln -s /usr/lib/nginx/modules "$work/modules"
cp testkit/proto/helloworld.proto testkit/proto/routeguide.proto "$work/proto/"
sed -e "s|127.0.0.1:50051|$grpc_addr|g" -e "s|/etc/nginx/proto|$work/proto|g" \
    -e "s|listen 127.0.0.1:8080;|listen 127.0.0.1:$port;|" \
    "/usr/share/doc/$pkg/examples/grpc.conf" >"$work/conf.d/grpc.conf"
grep -q "listen 127.0.0.1:$port;" "$work/conf.d/grpc.conf" || fail "the example's listen line moved"
# The Go echo runtime from the package (a second server on the same port: only its locations
# are new).
cat >"$work/conf.d/runtimes.conf" <<RT
server {
    listen 127.0.0.1:$port;
    server_name runtimes.test;
    location = /go {
        content_by_lua_block {
            local rt = assert(ngx.load_ffi("ffi_go_echo"))
            local ok, res = rt:echo("hello")
            assert(ok and res == "hello", tostring(res))
            ngx.say(res, " from Go")
        }
    }
}
RT
if ((java)); then
  # A Java runtime on the packaged helper, compiled against the packaged jar.
  mkdir -p "$work/java"
  /usr/lib/jvm/default-java/bin/javac -cp /usr/share/java/resty-ffi.jar -d "$work/java" \
    t/runtimes/java/rt/Echo.java || fail "javac against /usr/share/java/resty-ffi.jar"
  cat >>"$work/conf.d/runtimes.conf" <<RT
server {
    listen 127.0.0.1:$port;
    server_name java.test;
    location = /java {
        content_by_lua_block {
            local rt = assert(ngx.load_ffi("ffi_java", "rt.Echo,init"))
            local ok, res = rt:echo("hello")
            assert(ok and res == "hello", tostring(res))
            ngx.say(res, " from Java")
        }
    }
}
RT
fi
if ((python)); then
  # The article's Python runtime through the packaged loader.
  mkdir -p "$work/python/ffi"
  cp t/runtimes/python/ffi/echo.py "$work/python/ffi/echo.py"
  cat >"$work/conf.d/python.conf" <<PY
server {
    listen 127.0.0.1:$port;
    server_name python.test;
    location = /py {
        content_by_lua_block {
            local demo = ngx.load_ffi("ffi_python3", "ffi.echo?,init", {is_global = true, unpin = true})
            local ok, res = demo:echo("hello")
            assert(ok)
            assert(res == "hello")
            ngx.say(res, " from Python")
        }
    }
}
PY
fi
cat >"$work/nginx.conf" <<CONF
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
worker_processes 2;
pid $work/nginx.pid;
error_log $work/logs/error.log info;
daemon off;
env PYTHONPATH;
env CLASSPATH;
include /etc/nginx/modules-enabled/*.conf;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    access_log $work/logs/access.log;
    client_body_temp_path $work/tmp/body;
    proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fastcgi;
    uwsgi_temp_path $work/tmp/uwsgi;
    scgi_temp_path $work/tmp/scgi;
    include $work/conf.d/*.conf;
}
CONF
cat "$work/nginx.conf" "$work/conf.d/grpc.conf" | grep -v '^ *#' | grep -Eq 'lua_package|LD_LIBRARY_PATH' \
  && fail "the config sets a Lua or library path"
# start_nginx [LD_LIBRARY_PATH]: the system nginx on the prefix, waiting until it answers.
start_nginx() {
  if [ -n "${1:-}" ]; then
    env -u LUA_PATH -u LUA_CPATH LD_LIBRARY_PATH="$1" PYTHONPATH="$work/python" \
      CLASSPATH="$work/java" /usr/sbin/nginx -p "$work" -c "$work/nginx.conf" \
      -g 'env LD_LIBRARY_PATH;' \
      >"$work/logs/stdout" 2>&1 &
  else
    env -u LD_LIBRARY_PATH -u LUA_PATH -u LUA_CPATH PYTHONPATH="$work/python" \
      CLASSPATH="$work/java" /usr/sbin/nginx -p "$work" -c "$work/nginx.conf" >"$work/logs/stdout" 2>&1 &
  fi
  nginx_pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/metrics" && return 0
    kill -0 "$nginx_pid" 2>/dev/null || { cat "$work/logs/stdout" "$work/logs/error.log" 2>/dev/null; fail "nginx exited"; }
    sleep 0.1
  done
  fail "nginx did not answer"
}

# mapped DIR: every libresty_* library the workers mapped comes from DIR (and there is one).
mapped() {
  local n=0 w maps
  for w in $(pgrep -P "$nginx_pid"); do
    maps=$(grep -o '/[^ ]*libresty_[a-z_]*\.so' "/proc/$w/maps" | sort -u || true)
    [ -z "$maps" ] && continue
    n=$((n + 1))
    printf '%s\n' "$maps" | grep -v "^$1/" && fail "worker $w mapped a library outside $1"
  done
  ((n > 0)) || fail "no worker mapped the libraries"
}

stop_nginx() {
  kill -QUIT "$nginx_pid"
  wait "$nginx_pid" || fail "nginx exited with an error"
  nginx_pid=""
  if grep -E '\[(alert|crit|emerg|error)\]' "$work/logs/error.log"; then
    fail "error.log is not clean"
  fi
}

start_nginx
hello=$(curl -s "http://127.0.0.1:$port/hello?name=debian")
echo "deb-test: /hello -> $hello"
[ "$hello" = '{"message":"Hello debian"}' ] || fail "unary call: $hello"
features=$(curl -s "http://127.0.0.1:$port/features")
n=$(printf '%s\n' "$features" | grep -c . || true)
echo "deb-test: /features -> $n features, first: $(printf '%s\n' "$features" | head -1)"
[ "$n" -ge 2 ] || fail "server stream: $features"
printf '%s\n' "$features" | grep -q 'failed' && fail "server stream: $features"
sleep 1.2   # metrics_sync publishes every second
curl -s "http://127.0.0.1:$port/metrics" >"$work/metrics"
grep -q '^grpc_client_attempt_started_total{grpc_method="helloworld.Greeter/SayHello"' "$work/metrics" \
  || { cat "$work/metrics"; fail "no SayHello attempts on /metrics"; }
go=$(curl -s -H 'Host: runtimes.test' "http://127.0.0.1:$port/go")
echo "deb-test: /go -> $go"
[ "$go" = "hello from Go" ] || fail "the Go echo runtime: $go"
if ((java)); then
  j=$(curl -s -H 'Host: java.test' "http://127.0.0.1:$port/java")
  echo "deb-test: /java -> $j"
  [ "$j" = "hello from Java" ] || fail "the Java runtime: $j"
fi
if ((python)); then
  py=$(curl -s -H 'Host: python.test' "http://127.0.0.1:$port/py")
  echo "deb-test: /py -> $py"
  [ "$py" = "hello from Python" ] || fail "the Python runtime: $py"
fi
mapped "/usr/lib/$multiarch"
echo "deb-test: the workers run the system folder's libraries"
stop_nginx

# A build tree still wins over the package through LD_LIBRARY_PATH (and `env LD_LIBRARY_PATH;`).
start_nginx "$repo/target/release"
hello=$(curl -s "http://127.0.0.1:$port/hello?name=tree")
[ "$hello" = '{"message":"Hello tree"}' ] || fail "unary call on the build tree: $hello"
mapped "$repo/target/release"
echo "deb-test: with LD_LIBRARY_PATH the workers run the build tree's libraries"
stop_nginx

echo "deb-test: reinstall over the installed packages"
$SUDO apt-get install -y -qq --reinstall "${debs[@]}" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "reinstall"; }
for p in "${pkgs[@]}"; do installed "$p" || fail "$p not installed after reinstall"; done
while read -r f; do [ -e "$f" ] || fail "$f missing after reinstall"; done <"$work/files"

echo "deb-test: apt-get remove ${pkgs[*]}"
$SUDO apt-get remove -y -qq "${pkgs[@]}" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "remove"; }
while read -r f; do [ -e "$f" ] || [ -L "$f" ] && fail "$f left after remove"; done <"$work/files"
$SUDO apt-get install -y -qq "${debs[@]}" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "install after remove"; }
echo "deb-test: apt-get purge ${pkgs[*]}"
$SUDO apt-get purge -y -qq "${pkgs[@]}" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "purge"; }
while read -r f; do [ -e "$f" ] || [ -L "$f" ] && fail "$f left after purge"; done <"$work/files"
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^i' && fail "$p still known to dpkg"
  [ -e "/usr/share/doc/$p" ] && fail "/usr/share/doc/$p left after purge"
done
echo "deb-test: ok (${pkgs[*]}: $(wc -l <"$work/files") files installed and gone again)"
