# resty_grpc_zc: the two commands a fresh machine needs are `make demo` and `make test`.
# Every target installs what it needs first (scripts/deps.sh is idempotent).

SHELL := /bin/bash
PREFIX ?= /usr/local
LUA_DIR ?= $(PREFIX)/share/lua/5.1
LIB_DIR ?= $(PREFIX)/lib
CARGO ?= cargo
NGINX_TREE := target/nginx
RELEASE := target/release
LIBS := libresty_ffi.so libresty_ffi_echo.so libresty_grpc_zc.so
LIBS += libffi_python3.so
# Debian's python3 finds packages here (the resty_ffi helper of loaders/python).
PYTHON_DIR ?= /usr/lib/python3/dist-packages
# The Go echo runtime (runtimes/go/echo), built by go-build.
LIBS += libffi_go_echo.so
LIBS += libffi_java.so
# The Java loader's classes as a jar to compile Java runtimes against (the loader embeds its own
# copy); Debian's JDK, never whatever javac is first on PATH.
JAVA_HOME_DEBIAN := /usr/lib/jvm/default-java
JAVA_JAR := $(RELEASE)/resty-ffi.jar
JAVA_DIR ?= $(PREFIX)/share/java
# Loaders of runtimes in other languages (docs/runtimes.md).
LIBS += libffi_nodejs.so
# Integration tests start real nginx instances; on 2 cores two at a time keeps timings sane.
TEST_THREADS ?= 2

.PHONY: all deps nginx-tree build go-build go-lint go-test test lint gen gen-check demo bench deb fuzz miri install uninstall clean

all: build

deps:
	@scripts/deps.sh

nginx-tree: deps
	@scripts/nginx-tree.sh $(NGINX_TREE)

build: nginx-tree go-build
	$(CARGO) build --release --workspace --bins --lib
	$(MAKE) --no-print-directory $(JAVA_JAR)

$(JAVA_JAR): $(wildcard loaders/java/java/resty/ffi/*.java)
	rm -rf $(RELEASE)/resty-ffi-classes && mkdir -p $(RELEASE)/resty-ffi-classes
	$(JAVA_HOME_DEBIAN)/bin/javac --release 11 -encoding UTF-8 -d $(RELEASE)/resty-ffi-classes $^
	$(JAVA_HOME_DEBIAN)/bin/jar --create --file $@ -C $(RELEASE)/resty-ffi-classes .

# Go runtimes are c-shared libraries built by go (offline: no module proxy, no toolchain
# download); see runtimes/go/build.sh.
go-build: deps
	runtimes/go/build.sh $(RELEASE)/libffi_go_echo.so runtimes/go/echo

# Go without the network: no module proxy, no checksum database, no toolchain download.
GO_ENV := GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GOFLAGS=-mod=mod

# restyffi's unit tests, against a mock host (no nginx), under the race detector.
go-test: deps
	cd runtimes/go && $(GO_ENV) go test -race -count=1 ./...

go-lint: deps
	@out=$$(gofmt -l runtimes/go t/runtimes/go); [ -z "$$out" ] || { echo "gofmt: $$out"; exit 1; }
	cd runtimes/go && $(GO_ENV) go vet ./...
	cd t/runtimes/go && $(GO_ENV) go vet ./...

# FlatBuffers code generated from schema/ is checked in; `make gen` regenerates it.
gen:
	scripts/gen.sh

gen-check:
	scripts/gen.sh --check

lint: nginx-tree gen-check go-lint
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --release --workspace --no-deps

test: build lint go-test
	lua/t/run.sh
	$(CARGO) test --release --workspace -- --test-threads=$(TEST_THREADS)
	scripts/deb-test.sh

# Debian packages for the system nginx (target/debian/*.deb), checked by lintian; see
# docs/debian.md. `apt install ./target/debian/resty-grpc-zc_*.deb` installs it.
deb: build
	scripts/deb.sh --lintian

demo: build
	@scripts/demo.sh

bench: build
	$(CARGO) bench --bench transport
	$(CARGO) bench --bench grpc
	$(CARGO) bench --bench fleet
	$(CARGO) bench --bench runtimes
	$(CARGO) bench --bench cpu
	python3 benches/budget.py

# Fuzzes the envelope verifier/decoder and the runtime's serving path (cargo-fuzz, nightly
# toolchain; not part of CI). FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 120
fuzz: nginx-tree
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in envelope serve; do \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

# Miri on the modules whose unsafe code it can run (the arena, the wire format, the copy
# loop; tests that spawn processes or map 64 MiB skip themselves). Nightly; not part of CI.
miri:
	rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri' \
	  || rustup component add --toolchain nightly miri
	$(CARGO) +nightly miri test -p resty_grpc_zc --lib -- arena wire:: copy::

install: build
	install -d $(DESTDIR)$(LIB_DIR) $(DESTDIR)$(LUA_DIR)
	for l in $(LIBS); do install -m 0755 $(RELEASE)/$$l $(DESTDIR)$(LIB_DIR)/$$l; done
	install -d $(DESTDIR)$(JAVA_DIR) && install -m 0644 $(JAVA_JAR) $(DESTDIR)$(JAVA_DIR)/resty-ffi.jar
	install -m 0644 lua/resty_ffi.lua $(DESTDIR)$(LUA_DIR)/resty_ffi.lua
	if [ -d lua/resty ]; then cp -r lua/resty $(DESTDIR)$(LUA_DIR)/ ; fi
	ln -sf libffi_python3.so $(DESTDIR)$(LIB_DIR)/libresty_ffi_python.so
	install -d $(DESTDIR)$(PYTHON_DIR)/resty_ffi
	install -m 0644 loaders/python/resty_ffi/__init__.py $(DESTDIR)$(PYTHON_DIR)/resty_ffi/
	-[ -z "$(DESTDIR)" ] && ldconfig

uninstall:
	for l in $(LIBS); do rm -f $(DESTDIR)$(LIB_DIR)/$$l; done
	rm -f $(DESTDIR)$(LUA_DIR)/resty_ffi.lua
	rm -f $(DESTDIR)$(LIB_DIR)/libresty_ffi_python.so
	rm -rf $(DESTDIR)$(PYTHON_DIR)/resty_ffi
	rm -f $(DESTDIR)$(JAVA_DIR)/resty-ffi.jar

clean:
	$(CARGO) clean
