-- resty.grpc_zc.lib: the one door to libresty_grpc_zc.so, as lua-resty-core's resty.core.base.
--
-- The only ffi.load of the runtime library (one search rule), every ffi.cdef of its functions
-- and types (each once), the C ABI check, the big-copy helper and the constants that Lua and
-- the library share. Other modules take C functions from lib.load() and cache them in locals.
--
--     lib.path         explicit library path (pb.libpath sets it); nil: the search below
--     lib.load()       -> clib | nil, err: loads and checks the library once (later calls: the
--                      same clib); the functions and the arena types are declared from then on
--     lib.big_copy(dst, src, n)   copy of a message of at least lib.BIG_COPY bytes
--
-- Search rule: lib.path when set, else the dynamic loader's search for "resty_grpc_zc"
-- (LD_LIBRARY_PATH, ld.so.cache after `make install`), the very name ngx.load_ffi opens, so
-- both always get the same library; only when the loader finds none, libresty_grpc_zc.so
-- through package.cpath (plain LuaJIT, a library next to the Lua modules).
--
-- Loading is lazy so that resty.grpc_zc.pb works without the library (plain LuaJIT, no
-- load_proto); resty.grpc_zc loads it when it is required and raises if it cannot.

local ffi = require "ffi"

local ffi_copy = ffi.copy
local ffi_string = ffi.string
local tostring = tostring
local pcall = pcall

local _M = {
    version = "0.1.0",
    -- The C ABI this Lua code speaks (grpc_zc_abi_version()).
    C_ABI_VERSION = 2,
    -- Arena header: "GRPCZCAR" little-endian, layout 1 (src/arena).
    ARENA_MAGIC = 0x5241435a43505247ULL,
    ARENA_LAYOUT_VERSION = 1,
    -- The arena's largest slot is max_message plus this (src/runtime: ENVELOPE_SLACK).
    ENVELOPE_SLACK = 4096,
    -- Messages of at least BIG_COPY bytes are copied with the library's grpc_zc_copy: glibc's
    -- memcpy is ~15x slower here for some buffer distances (src/copy.rs).
    BIG_COPY = 2048,
    path = nil,
}

-- What can be declared before the library is loaded: it does not use the library's own types.
ffi.cdef [[
    int grpc_zc_abi_version(void);
    const char *grpc_zc_cdef(void);
    void grpc_zc_copy(void *dst, const void *src, size_t len);
    int grpc_zc_proto_compile(const char *files, const char *import_paths,
                              uint8_t **out, size_t *out_len);
    void grpc_zc_free(void *p);
    typedef struct {
        uint32_t slot_offset;
        uint32_t slot_gen;
        uint32_t buf_offset;
        uint32_t buf_len;
    } grpc_zc_desc_t;
]]

-- What uses the arena header, handle and stats types, which the library declares itself
-- (grpc_zc_cdef(): one source of truth); declared right after them.
local CDEF_WITH_LIB_TYPES = [[
    void *grpc_zc_instance(const char *name);
    uint8_t *grpc_zc_arena_base(void *inst);
    int grpc_zc_call_begin(void *inst, uint32_t len, grpc_zc_handle_t *out);
    int grpc_zc_call_end(void *inst, const grpc_zc_handle_t *req, int posted, int abandoned);
    int grpc_zc_stats(void *inst, grpc_zc_arena_stats_t *out);
    const char *grpc_zc_strerror(int code);
    int grpc_zc_stream_cancel(void *inst, uint64_t id);
    int grpc_zc_streams_open(void *inst);
    int grpc_zc_busy_polled_us(void *inst, uint64_t *us);
    typedef struct { uint64_t id; } grpc_zc_stream_ref_t;
    typedef struct {
        grpc_zc_handle_t h;     /* the request slot: identifies the call */
        int32_t posted;         /* the descriptor went into the queue */
        int32_t active;         /* begun and not finished (else: in the pool, or never used) */
    } grpc_zc_call_t;
]]

local clib

-- The library by the search rule above, or nil, err.
local function open()
    if _M.path then
        return pcall(ffi.load, _M.path)
    end
    local ok, l = pcall(ffi.load, "resty_grpc_zc")
    if ok then
        return ok, l
    end
    local path = package.searchpath("libresty_grpc_zc", package.cpath)
                 or package.searchpath("resty_grpc_zc", package.cpath)
    if not path then
        return false, l
    end
    return pcall(ffi.load, path)
end

function _M.load()
    if clib then
        return clib
    end
    -- In nginx, the host library (loaded with global symbols by resty_ffi) defines the
    -- ngx_http_lua_ffi_* functions the runtime library is linked against.
    if ngx ~= nil and package.loaded.resty_ffi == nil then
        pcall(require, "resty_ffi")
    end
    local ok, l = open()
    if not ok then
        return nil, "cannot load libresty_grpc_zc: " .. tostring(l)
    end
    local abi = l.grpc_zc_abi_version()
    if abi ~= _M.C_ABI_VERSION then
        return nil, "libresty_grpc_zc.so C ABI " .. tostring(abi)
                    .. " does not match resty.grpc_zc's " .. _M.C_ABI_VERSION
    end
    ffi.cdef(ffi_string(l.grpc_zc_cdef()))
    ffi.cdef(CDEF_WITH_LIB_TYPES)
    clib = l
    return clib
end

-- The big copy: grpc_zc_copy once the library is loaded (the first big copy tries to load
-- it), else ffi.copy.
local copy_impl
function _M.big_copy(dst, src, n)
    local f = copy_impl
    if f == nil then
        local l = _M.load()
        f = l and l.grpc_zc_copy or ffi_copy
        copy_impl = f
    end
    f(dst, src, n)
end

return _M
