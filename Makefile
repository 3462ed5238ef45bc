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
# Loaders of runtimes in other languages (docs/runtimes.md).
LIBS += libffi_nodejs.so
# Integration tests start real nginx instances; on 2 cores two at a time keeps timings sane.
TEST_THREADS ?= 2

.PHONY: all deps nginx-tree build test lint gen gen-check demo bench fuzz miri install uninstall clean

all: build

deps:
	@scripts/deps.sh

nginx-tree: deps
	@scripts/nginx-tree.sh $(NGINX_TREE)

build: nginx-tree
	$(CARGO) build --release --workspace --bins --lib

# FlatBuffers code generated from schema/ is checked in; `make gen` regenerates it.
gen:
	scripts/gen.sh

gen-check:
	scripts/gen.sh --check

lint: nginx-tree gen-check
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --release --workspace --no-deps

test: build lint
	lua/t/run.sh
	$(CARGO) test --release --workspace -- --test-threads=$(TEST_THREADS)

demo: build
	@scripts/demo.sh

bench: build
	$(CARGO) bench --bench transport
	$(CARGO) bench --bench grpc
	$(CARGO) bench --bench fleet

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
	install -m 0644 lua/resty_ffi.lua $(DESTDIR)$(LUA_DIR)/resty_ffi.lua
	if [ -d lua/resty ]; then cp -r lua/resty $(DESTDIR)$(LUA_DIR)/ ; fi
	-[ -z "$(DESTDIR)" ] && ldconfig

uninstall:
	for l in $(LIBS); do rm -f $(DESTDIR)$(LIB_DIR)/$$l; done
	rm -f $(DESTDIR)$(LUA_DIR)/resty_ffi.lua

clean:
	$(CARGO) clean
