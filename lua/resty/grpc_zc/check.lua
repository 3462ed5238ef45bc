-- resty.grpc_zc.check: the one check of every numeric option and argument.
--
-- NaN is in no range, so every test here is written as `not (v >= min and v <= max)`, never
-- as `v < min` (which NaN passes); infinities, huge values and negative ones fail the range,
-- fractions fail where an integer is expected. Every other module (options of grpc.init,
-- grpc.connect, calls, grpc.echo; the codec's lengths) checks its numbers through here.
--
--     check.in_range(v, min, max, integer) -> boolean (no error; for callers with their own
--                                             message shape, e.g. "bad argument #3 to ...")
--     check.number(v, name, min, max, integer, level) -> v, or raises
--         "bad option <name>: a number|an integer from <min> to <max> expected, got <v>"
--     check.ms(v, name, level) -> whole milliseconds (nil: 0; fractions round up, so 0.4 ms is
--                                 1 ms, never 0, which means "none"; -0 is 0)
--     check.size(v, name, level) -> bytes (nil: 0, the default; else an integer >= 1)
--
-- `level` is error()'s level counted from the function that calls check.number / ms / size:
-- 2 (the default) blames that function's caller.

local type = type
local error = error
local tostring = tostring
local format = string.format
local ceil = math.ceil

local _M = {
    version = "0.1.0",
    -- Largest millisecond option: the envelope's fields are u32.
    MAX_MS = 4294967295,
    -- Largest byte-size option (u32 fields, u32 arena offsets).
    MAX_SIZE = 4294967295,
}
local MAX_MS, MAX_SIZE = _M.MAX_MS, _M.MAX_SIZE


-- Whether `v` is a number in [min, max] (an integer when `integer` is true).
local function in_range(v, min, max, integer)
    return type(v) == "number" and v >= min and v <= max and not (integer and v % 1 ~= 0)
end
_M.in_range = in_range


local function number(v, name, min, max, integer, level)
    if not in_range(v, min, max, integer) then
        error(format("bad option %s: %s from %.17g to %.17g expected, got %s", name,
                     integer and "an integer" or "a number", min, max, tostring(v)),
              (level or 2) + 1)
    end
    return v
end
_M.number = number


function _M.ms(v, name, level)
    if v == nil then
        return 0
    end
    return ceil(number(v, name, 0, MAX_MS, false, (level or 2) + 1))
end


function _M.size(v, name, level)
    if v == nil then
        return 0
    end
    local n = number(v, name, 1, MAX_SIZE, true, (level or 2) + 1)
    return n     -- not a tail call: it would drop this frame from the error level
end


return _M
