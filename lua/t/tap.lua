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

-- Reads jit.v output `out`: counts the traces, and those `in_module(line)` marks; a line is bad
-- when it is an NYI, a blacklisting `blacklisted_at(line)` marks (default: in_module), or an
-- abort in the module that is not part of trace formation. Other aborts are printed.
-- Returns traces, module_traces, bad (a list of lines), benign, others.
function _M.classify_traces(out, in_module, blacklisted_at)
    blacklisted_at = blacklisted_at or in_module
    local traces, module_traces, bad, benign, others = 0, 0, {}, 0, 0
    for line in out:gmatch("[^\n]+") do
        if line:find("^%[TRACE%s+%d+") then
            traces = traces + 1
            if in_module(line) then
                module_traces = module_traces + 1
            end
        end
        local reason = line:match("^%[TRACE %-%-%- .- %-%- (.-)%]$")
        if reason then
            reason = reason:gsub(" at %S+$", "")
        end
        if line:find("NYI", 1, true) then
            bad[#bad + 1] = line
        elseif reason and reason:find("blacklisted", 1, true) and blacklisted_at(line) then
            bad[#bad + 1] = line
        elseif reason and in_module(line) then
            if _M.TRACE_FORMATION[reason] then
                benign = benign + 1
            else
                bad[#bad + 1] = line
            end
        elseif reason then
            others = others + 1
            print("# abort outside the module: " .. line)
        end
    end
    return traces, module_traces, bad, benign, others
end

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
