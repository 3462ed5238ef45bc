#!/usr/bin/env bash
# `make deb`: Debian binary packages of what `make build` made, for the system nginx.
#
#   resty-grpc-zc      the ngx.load_ffi host, the gRPC runtime, the echo runtimes and the Lua
#                      modules: libraries in the multiarch library folder (the dynamic loader's
#                      default search, so ngx.load_ffi("resty_grpc_zc") needs no
#                      LD_LIBRARY_PATH), Lua in /usr/share/lua/5.1 (LuaJIT's default path)
#   resty-ffi-python3  the Python loader (libffi_python3.so, also as libresty_ffi_python.so)
#                      and the resty_ffi helper module in Debian's dist-packages
#   resty-ffi-nodejs   the Node.js loader (libffi_nodejs.so, which carries require('resty_ffi')),
#                      over Debian's libnode108
#   resty-ffi-java     the Java loader (libffi_java.so, which carries the resty.ffi classes)
#                      and resty-ffi.jar in /usr/share/java to compile runtimes against
#
# Each language loader is a package of its own, as Debian splits plugins by what they pull in:
# installing the gRPC client does not install a Python, a JVM or Node.js.
#
# Built with dpkg-deb from a staged tree; the control files, changelog, copyright and docs are
# in packaging/deb. Depends is what dpkg-shlibdeps reads off the libraries plus the Lua stack.
# Output: target/debian/<package>_<version>_<arch>.deb; `--lintian` then runs lintian on them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
release=target/release
out=target/debian
run_lintian=0
[ "${1:-}" = "--lintian" ] && run_lintian=1

version=$(sed -n '/^\[package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
libdir="usr/lib/$multiarch"

rm -rf "$out/stage"
mkdir -p "$out/stage"

# stage_lib PKG FILE...: stripped shared libraries, mode 0644 (Debian's rule for libraries).
stage_lib() {
  local pkg=$1
  shift
  install -d -m 0755 "$out/stage/$pkg/$libdir"
  for f in "$@"; do
    install -m 0644 "$release/$f" "$out/stage/$pkg/$libdir/$f"
    strip --strip-unneeded --remove-section=.comment --remove-section=.note \
      "$out/stage/$pkg/$libdir/$f"
  done
}

# stage_docs PKG: copyright, the changelog (gzipped, as Debian ships it), the man page.
stage_docs() {
  local pkg=$1 doc="$out/stage/$1/usr/share/doc/$1"
  install -d -m 0755 "$doc"
  install -m 0644 packaging/deb/copyright "$doc/copyright"
  gzip -9n <packaging/deb/changelog >"$doc/changelog.gz"
  chmod 0644 "$doc/changelog.gz"
  for page in packaging/deb/"$pkg"/*.[1-8]; do
    [ -e "$page" ] || continue
    local sec=${page##*.}
    install -d -m 0755 "$out/stage/$pkg/usr/share/man/man$sec"
    sed "s|@MULTIARCH@|$multiarch|g" "$page" | gzip -9n \
      >"$out/stage/$pkg/usr/share/man/man$sec/$(basename "$page").gz"
    chmod 0644 "$out/stage/$pkg/usr/share/man/man$sec/$(basename "$page").gz"
  done
}

# shlibs PKG [dpkg-shlibdeps options]: the Depends dpkg-shlibdeps derives from the package's
# ELF files.
shlibs() {
  local pkg=$1 work
  shift
  work=$(mktemp -d)
  mkdir "$work/debian"
  printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$pkg" "$pkg" >"$work/debian/control"
  local files
  files=$(find "$repo/$out/stage/$pkg" -name '*.so' -type f)
  (cd "$work" && dpkg-shlibdeps -O "$@" -e $files 2>/dev/null) | sed -n 's/^shlibs:Depends=//p'
  rm -rf "$work"
}

# build_pkg PKG [dpkg-shlibdeps options]: control file (from packaging/deb/PKG/control.in),
# md5sums, triggers, .deb.
build_pkg() {
  local pkg=$1 root="$out/stage/$1"
  shift
  install -d -m 0755 "$root/DEBIAN"
  local deps
  deps=$(shlibs "$pkg" "$@")
  local size
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@SHLIBS@|$deps|" \
    packaging/deb/"$pkg"/control.in >"$root/DEBIAN/control"
  echo "Installed-Size: $size" >>"$root/DEBIAN/control"
  # New libraries in the system folder: refresh ld.so.cache after install and removal.
  echo "activate-noawait ldconfig" >"$root/DEBIAN/triggers"
  chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/triggers"
  (cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
  chmod 0644 "$root/DEBIAN/md5sums"
  find "$root" -type d -exec chmod 0755 {} +
  dpkg-deb --root-owner-group -Zxz --build "$root" "$out/${pkg}_${version}_${arch}.deb" >/dev/null
  echo "deb: $out/${pkg}_${version}_${arch}.deb"
}

# --- resty-grpc-zc ------------------------------------------------------------------------
pkg=resty-grpc-zc
stage_lib $pkg libresty_ffi.so libresty_grpc_zc.so libresty_ffi_echo.so
# The Go echo runtime (Go needs no loader: a c-shared library is a runtime).
[ -f "$release/libffi_go_echo.so" ] && stage_lib $pkg libffi_go_echo.so
lua="$out/stage/$pkg/usr/share/lua/5.1"
install -d -m 0755 "$lua"
install -m 0644 lua/resty_ffi.lua "$lua/resty_ffi.lua"
(cd lua && find resty -name '*.lua' -print0) | while IFS= read -r -d '' f; do
  install -D -m 0644 "lua/$f" "$lua/$f"
done
stage_docs $pkg
doc="$out/stage/$pkg/usr/share/doc/$pkg"
install -d -m 0755 "$doc/examples"
install -m 0644 packaging/deb/$pkg/grpc.conf "$doc/examples/grpc.conf"
# The Go runtime sources users copy: the restyffi helper and the echo runtime.
(cd runtimes && find go -type f \( -name '*.go' -o -name '*.c' -o -name '*.h' -o -name go.mod \
   -o -name build.sh \) ! -path '*/internal/*' ! -name '*_test.go' -print0) |
  while IFS= read -r -d '' f; do
    install -D -m 0644 "runtimes/$f" "$doc/examples/$f"
  done
for d in README.md docs/grpc_zc.md docs/fleet.md docs/host.md docs/protobuf.md docs/runtimes.md docs/debian.md; do
  gzip -9n <"$d" >"$doc/$(basename "$d").gz"
  chmod 0644 "$doc/$(basename "$d").gz"
done
build_pkg $pkg

# --- resty-ffi-python3 ----------------------------------------------------------------------
if [ -f "$release/libffi_python3.so" ]; then
  pkg=resty-ffi-python3
  stage_lib $pkg libffi_python3.so
  ln -s libffi_python3.so "$out/stage/$pkg/$libdir/libresty_ffi_python.so"
  py="$out/stage/$pkg/usr/lib/python3/dist-packages/resty_ffi"
  install -d -m 0755 "$py"
  install -m 0644 loaders/python/resty_ffi/__init__.py "$py/__init__.py"
  stage_docs $pkg
  build_pkg $pkg
fi

# --- resty-ffi-nodejs -------------------------------------------------------------------------
if [ -f "$release/libffi_nodejs.so" ]; then
  pkg=resty-ffi-nodejs
  stage_lib $pkg libffi_nodejs.so
  # A build against the libnode unpacked in the cache (scripts/deps.sh) carries a RUNPATH to it;
  # the packaged loader finds Debian's libnode108 in the system folder.
  patchelf --remove-rpath "$out/stage/$pkg/$libdir/libffi_nodejs.so"
  stage_docs $pkg
  # libnode.so.108 may not belong to an installed package here: its Depends is in control.in.
  cache=/var/cache/resty-grpc-zc/libnode108/usr/lib/$multiarch
  build_pkg $pkg --ignore-missing-info -l"$cache" -xlibnode108
fi

# --- resty-ffi-java ---------------------------------------------------------------------------
if [ -f "$release/libffi_java.so" ]; then
  pkg=resty-ffi-java
  stage_lib $pkg libffi_java.so
  if [ -f "$release/resty-ffi.jar" ]; then
    install -d -m 0755 "$out/stage/$pkg/usr/share/java"
    # Debian's Java habit: the versioned jar, and the plain name as a link to it.
    install -m 0644 "$release/resty-ffi.jar" "$out/stage/$pkg/usr/share/java/resty-ffi-$version.jar"
    ln -s "resty-ffi-$version.jar" "$out/stage/$pkg/usr/share/java/resty-ffi.jar"
  fi
  stage_docs $pkg
  build_pkg $pkg
fi

if ((run_lintian)); then
  # Errors fail the build; warnings are printed (docs/debian.md says which remain and why).
  lintian --fail-on error --no-tag-display-limit "$out"/*_"${version}"_"$arch".deb
fi
