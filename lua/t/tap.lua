-- lua/t's shared pieces: TAP-style results, and the codec set up on the test protos.
--
--   local tap = require "t.tap"          (package.path has lua/?.lua: see tap.setup_path)
--   tap.result(ok, name, detail?)        prints "ok - name" or "not ok - name" (+ detail)
--   tap.done()                           prints the counts and exits (1 on any failure)
--   tap.pb_with_protos(arg)              resty.grpc_zc.pb with t/proto/pbtest*.proto and
--                                        helloworld.proto loaded; arg[1] the library (default
--                                        target/release/libresty_grpc_zc.so), arg[2] a library
--                                        to preload with global symbols first; returns pb, repo

local _M = { passed = 0, failed = 0 }

-- jit.v aborts that are part of forming traces (LuaJIT tries again elsewhere, with a randomised
-- penalty, so which of them a run shows varies from run to run): the JIT tests accept these in
-- a module, and nothing else (no NYI, no blacklisting).
_M.TRACE_FORMATION = {
    ["loop unroll limit reached"] = true, ["trace too long"] = true,
    ["inner loop in root trace"] = true, ["leaving loop in root trace"] = true,
    ["down-recursion, restarting"] = true, ["call unroll limit reached"] = true,
}

function _M.result(ok, name, detail)
    if ok then
        _M.passed = _M.passed + 1
        print("ok - " .. name)
    else
        _M.failed = _M.failed + 1
        print("not ok - " .. name .. (detail and ("\n  " .. detail) or ""))
    end
end

function _M.done()
    print(string.format("%d passed, %d failed", _M.passed, _M.failed))
    os.exit(_M.failed == 0 and 0 or 1)
end

function _M.pb_with_protos(arg, dir)
    local ffi = require "ffi"
    local pb = require "resty.grpc_zc.pb"
    local repo = dir == "lua" and "." or dir:match("^(.*)/lua$") or "."
    if arg[2] and arg[2] ~= "" then
        _G.PB_TEST_PRELOAD = ffi.load(arg[2], true) -- kept: a collected clib is dlclosed
    end
    pb.libpath = arg[1] or (repo .. "/target/release/libresty_grpc_zc.so")
    assert(pb.load_proto({ "pbtest.proto", "pbtest2.proto", "helloworld.proto" },
                         { import_paths = { repo .. "/t/proto", repo .. "/testkit/proto" } }))
    return pb, repo
end

return _M
