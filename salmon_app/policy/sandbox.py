"""The Lua state a hook runs in: a pinned Lua 5.4, a whitelisted environment, and limits.

The host code below runs once per Lua state in the real global environment, keeps what it
needs in locals, and hands hooks only a fresh environment of safe functions: no io, os
beyond time/clock/date, debug, package, string.dump, collectgarbage or Python. The runtime is
created without an encoding, so Lua strings reach Python as bytes (a hook may handle binary
data) and Python strings are always sent as bytes (a ``str`` would arrive as a Python object).
No Python object is ever handed to a hook: callbacks are wrapped in Lua closures and their
errors become strings; the attribute filter refuses everything in case one slips through.

Limits: ``max_memory`` caps the state; a count hook checks a wall-clock deadline every
``COUNT`` instructions, on the main thread and on every coroutine a hook creates. Once it
fires, a kill flag makes every later check, and every wrapped ``pcall``/``xpcall``/
``coroutine.resume``, raise again, so a hook cannot swallow it. ``__gc`` metamethods are
refused because finalizers run with debug hooks off, out of reach of the deadline. A single
long call into a C function (``table.move`` over a huge range, a quadratic ``gsub``) runs no
instructions and is not interrupted here: its result is discarded as a time-out, and the
daemon bounds the call itself by running the state in a process it kills (``process.py``).
"""
import time

import lupa.lua54 as lua54

COUNT = 10000   # instructions between two deadline checks (about 0.1 ms of Lua)

HOST = r"""
local P, RANKS, COUNT = ...

local type, next, ipairs, select, error, pcall, xpcall, tostring, setmetatable, rawget, rawset, load =
      type, next, ipairs, select, error, pcall, xpcall, tostring, setmetatable, rawget, rawset, load
local tpack, tunpack, slower, sfind = table.pack, table.unpack, string.lower, string.find
local sethook, traceback = debug.sethook, debug.traceback
local cocreate, coresume, coclose = coroutine.create, coroutine.resume, coroutine.close
local collect, huge, mtype = collectgarbage, math.huge, math.type
local now, MEMORY = P.now, "not enough memory"

local function copy(t, skip)
  local c = {}
  for k, v in next, t do if not (skip and skip[k]) then c[k] = v end end
  return c
end

-- Strings index this copy: it has no dump, and a hook editing it cannot reach the host's.
local STRING = copy(string, {dump = true})
local smeta = getmetatable("")
smeta.__index, smeta.__metatable = STRING, false

-- Limits ------------------------------------------------------------------------------
local KILL = setmetatable({}, {__metatable = false, __tostring = function() return "stopped" end})
local killed, deadline = nil, huge

local function count_hook()
  if not killed and now() > deadline then killed = "time limit exceeded" end
  if killed then error(KILL, 0) end
end

-- After every protected call a hook makes: a kill keeps unwinding, memory errors are kills.
local function check(ok, ...)
  if not ok and ... == MEMORY then killed = killed or "memory limit exceeded" end
  if killed then error(KILL, 0) end
  return ok, ...
end

local function s_pcall(f, ...) return check(pcall(f, ...)) end
local function s_xpcall(f, handler, ...)
  return check(xpcall(f, function(e) if killed then return e end return handler(e) end, ...))
end
local function s_create(f)
  local co = cocreate(f)
  sethook(co, count_hook, "", COUNT)   -- hooks are per thread: a coroutine needs its own
  return co
end
local function s_resume(co, ...) return check(coresume(co, ...)) end
local function s_close(co) return check(coclose(co)) end
local function s_wrap(f)
  local co = s_create(f)
  return function(...)
    local r = tpack(s_resume(co, ...))
    if r[1] then return tunpack(r, 2, r.n) end
    error(r[2], 0)
  end
end
local function s_setmetatable(t, mt)
  -- Finalizers run with debug hooks off, where no deadline could stop them.
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available to hooks", 2)
  end
  return setmetatable(t, mt)
end

local function stop_reason(e)   -- message handler: runs where the error was raised
  if killed or e == KILL then return KILL end
  local ok, text = pcall(tostring, e)
  return traceback(ok and text or "(an error object that is not a string)", 2)
end

local function guarded(limit_at, f, ...)
  killed, deadline = nil, limit_at
  sethook(count_hook, "", COUNT)
  local r = tpack(xpcall(f, stop_reason, ...))
  sethook()
  deadline = huge
  -- A single C call (table.move, string.rep, a slow gsub) runs no instructions, so no
  -- count hook fires in it: a result that arrives late is still a time-out, never used.
  local why = killed or (not r[1] and r[2] == MEMORY and "memory limit exceeded")
              or (now() > limit_at and "time limit exceeded")
  killed = nil
  if why then return false, why end
  return tunpack(r, 1, r.n)
end

-- Python calls ------------------------------------------------------------------------
-- Callbacks answer (true, values...) or (false, message). The error points at the hook's
-- line, two levels up: callers must not tail-call call() (that would drop a level).
local function call(f, ...)
  local r = tpack(pcall(f, ...))
  if r[1] and r[2] then return tunpack(r, 3, r.n) end
  local e = r[1] and r[3] or r[2]
  if e == MEMORY then error(e, 0) end
  error(type(e) == "string" and e or "internal error in a host function", 3)
end

local function flag_bits(flags)
  if flags == nil then return 0 end
  if type(flags) == "table" then return flags.ignore_case and 1 or 0 end
  if mtype(flags) == "integer" then return flags end
  error("regex flags must be a table such as {ignore_case = true}", 3)
end

local function strings(v, what)   -- a string or an array of strings, as several values
  if type(v) == "string" then return v end
  if type(v) == "table" and #v > 0 then
    local r = {}
    for i = 1, #v do
      if type(v[i]) ~= "string" then r = nil break end
      r[i] = v[i]
    end
    if r then return tunpack(r) end
  end
  error(what .. " must be a string or an array of strings", 3)
end

-- The drweb module and the environment --------------------------------------------------
local function new_drweb()
  local d = {regex = {ignore_case = 1}}
  function d.log(level, msg) call(P.log, tostring(level), tostring(msg)) end
  for _, level in ipairs{"debug", "info", "notice", "warning", "error"} do
    d[level] = function(msg) call(P.log, level, tostring(msg)) end
  end
  for _, how in ipairs{"search", "match"} do
    d.regex[how] = function(pattern, text, flags)
      if type(text) ~= "string" then error("regex." .. how .. ": text must be a string", 2) end
      return (call(P.regex, how, text, flag_bits(flags), strings(pattern, "a regex pattern")))
    end
  end
  function d.load_array(file) return {call(P.read_list, tostring(file))} end
  function d.load_set(file)
    local set = {}
    for _, line in ipairs{call(P.read_list, tostring(file))} do set[line] = true end
    return set
  end
  return d
end

local function new_env()
  local drweb = new_drweb()
  local modules = {drweb = drweb, ["drweb.regex"] = drweb.regex}
  local env = {
    string = STRING, table = copy(table), math = copy(math), utf8 = copy(utf8),
    os = {time = os.time, clock = os.clock, date = os.date},
    coroutine = {create = s_create, resume = s_resume, wrap = s_wrap, close = s_close,
                 yield = coroutine.yield, status = coroutine.status,
                 running = coroutine.running, isyieldable = coroutine.isyieldable},
    assert = assert, error = error, getmetatable = getmetatable, ipairs = ipairs,
    next = next, pairs = pairs, pcall = s_pcall, xpcall = s_xpcall, rawequal = rawequal,
    rawget = rawget, rawlen = rawlen, rawset = rawset, select = select,
    setmetatable = s_setmetatable, tonumber = tonumber, tostring = tostring, type = type,
    unpack = tunpack, _VERSION = _VERSION, drweb = drweb,
  }
  env._G = env
  -- Text only, and the hook's own environment unless it passes one.
  function env.load(chunk, name, mode, e) return load(chunk, name, "t", e or env) end
  -- Policies written for the original product start with require "drweb".
  function env.require(name)
    local m = modules[name]
    if m == nil then error("module '" .. tostring(name) .. "' is not available to hooks", 2) end
    return m
  end
  return env
end

-- ctx -----------------------------------------------------------------------------------
local FILTERS = {name_re = true, name_re_not = true}
local function filters(f)
  if f == nil then return nil, nil end
  if type(f) ~= "table" then error("a filter must be a table such as {name_re = [[.*\\.exe]]}", 3) end
  for k in next, f do
    if not FILTERS[k] then error("unknown filter '" .. tostring(k) .. "'", 3) end
  end
  return f.name_re and tostring(f.name_re), f.name_re_not and tostring(f.name_re_not)
end

local BODY_KEYS = {raw = true, decoded = true, text = true, md5 = true, sha1 = true, sha256 = true}

local function new_message(vx_by_path)
  local cache, meta = {}, {__metatable = false}
  local function proxy(path)   -- one table per part, however it is reached
    local p = cache[path]
    if p == nil then
      p = setmetatable({path = path}, meta)
      cache[path] = p
    end
    return p
  end
  local function searcher(path, scope)
    return function(pattern, flags)
      return (call(P.search, path, scope, flag_bits(flags), strings(pattern, "a pattern")))
    end
  end
  local function iterator(path, kind)
    return function(filter)
      local paths = tpack(call(P.select, path, kind, filters(filter)))
      local i = 0
      return function()
        i = i + 1
        if i <= paths.n then return proxy(paths[i]), paths[i] end
      end
    end
  end
  local function tester(path, kind)
    return function(filter)
      local a, b = filters(filter)
      return call(P.select, path, kind, a, b, true) ~= nil
    end
  end
  local function info(t, path, other)
    local ctype, name = call(P.info, path)
    rawset(t, "content_type", ctype)
    rawset(t, "name", name)
    return rawget(t, other)
  end
  local BUILD = {
    header = function(path)
      local flat, field = tpack(call(P.fields, path)), {}
      for i = 1, flat.n, 2 do field[#field + 1] = {name = flat[i], value = flat[i + 1]} end
      local header = {field = field, search = searcher(path, "header")}
      function header.value(name)
        name = slower(tostring(name))
        for i = 1, #field do
          if slower(field[i].name) == name then return field[i].value end
        end
        return nil
      end
      return header
    end,
    body = function(path)
      return setmetatable({search = searcher(path, "body")}, {__metatable = false,
        __index = function(t, k)
          if BODY_KEYS[k] then
            local v = call(P.body, path, k)
            rawset(t, k, v)
            return v
          end
        end})
    end,
    part = function(path)
      local r, parts = tpack(call(P.info, path)), {}
      for i = 3, r.n do parts[#parts + 1] = proxy(r[i]) end
      return parts
    end,
    raw = function(path) return (call(P.raw, path)) end,
    content_type = function(path, t) return info(t, path, "content_type") end,
    name = function(path, t) return info(t, path, "name") end,
    vxcube = function(path) return vx_by_path[path] end,
    search = function(path) return searcher(path, "all") end,
    part_at = function(path)
      return function(p)
        local found = call(P.part_at, path, tostring(p))
        return found and proxy(found)
      end
    end,
    has_file = function(path) return tester(path, "files") end,
    has_part = function(path) return tester(path, "parts") end,
  }
  for _, kind in ipairs{"files", "parts", "attachments", "leaf_parts", "text_parts"} do
    BUILD[kind] = function(path) return iterator(path, kind) end
  end
  meta.__index = function(t, k)
    local build = BUILD[k]
    if build == nil then return nil end
    local v = build(rawget(t, "path"), t)
    rawset(t, k, v)
    return v
  end
  return proxy(call(P.part_at, "", ""))
end

local function header_args(name, value)
  if type(name) ~= "string" or not sfind(name, "^[!-9;-~]+$") then
    error("invalid header field name " .. tostring(name), 3)
  end
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" then error("a header field value must be a string", 3) end
  return name, value
end

local function new_modifier(ops)
  local m = {repack_message = ""}
  function m.add_header_field(name, value)
    name, value = header_args(name, value)
    ops[#ops + 1] = {op = "add_header_field", name = name, value = value}
  end
  function m.change_header_field(name, value)
    name, value = header_args(name, value)
    ops[#ops + 1] = {op = "change_header_field", name = name, value = value}
  end
  function m.repack(path)
    if path == "" then path = nil end
    if path ~= nil then
      path = tostring(path)
      if call(P.part_at, "", path) == nil then error("no MIME part at path '" .. path .. "'", 2) end
    end
    ops[#ops + 1] = {op = "repack", path = path}
  end
  function m.modifications()
    local list = {}
    for i, op in ipairs(ops) do
      list[i] = {op = op.op, name = op.name, value = op.value, path = op.path}
    end
    return list
  end
  return m
end

local function verdict_test(verdict)
  return function(wanted)
    local rank = RANKS[wanted]
    if rank == nil then error("unknown verdict '" .. tostring(wanted) .. "'", 2) end
    return RANKS[verdict] >= rank
  end
end

local function new_ctx(data)
  local vx, by_path, message = data.vxcube, {}, nil
  vx.has_verdict = verdict_test(vx.verdict)
  for _, f in ipairs(vx.files) do
    f.has_verdict = verdict_test(f.verdict)
    if f.path then by_path[f.path] = f end
  end
  local ops = {}
  local ctx = setmetatable({
    sender = data.sender, helo = data.helo, from = data.from, to = data.to,
    queue_id = data.queue_id, vxcube = vx, modifier = new_modifier(ops),
  }, {__metatable = false, __index = function(t, k)
    if k == "message" then   -- parsed only when a hook looks at it
      message = message or new_message(by_path)
      rawset(t, k, message)
      return message
    end
  end})
  return ctx, ops, ctx.modifier
end

-- Results: copied with raw access only, so no metamethod of the hook runs outside the limits.
local function plain(v, depth)
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" or t == "nil" then return v end
  -- Anything else arrives in Python as a table, which no field accepts: an error there.
  if t ~= "table" or depth == 0 then return {["<lua>"] = t} end
  local c = {}
  for k, x in next, v do
    local kt = type(k)
    c[(kt == "string" or kt == "number") and k or "<" .. kt .. ">"] = plain(x, depth - 1)
  end
  return c
end

local function run_hook(hook, data)
  local ctx, ops, modifier = new_ctx(data)
  local result = hook(ctx)
  return plain(result, 3), plain(ops, 2),
         plain(rawget(modifier, "repack_password"), 0), plain(rawget(modifier, "repack_message"), 0)
end

local function compile(source, chunkname, limit_at)
  local env = new_env()
  local chunk, err = load(source, chunkname, "t", env)
  if not chunk then return false, err end
  local ok, e = guarded(limit_at, chunk)
  if not ok then return false, e end
  local hook = rawget(env, "smtp_hook")
  if type(hook) ~= "function" then
    return false, "the hook must define a global function smtp_hook(ctx)"
  end
  return true, hook
end

return {
  compile = compile,
  run = function(limit_at, hook, data) return guarded(limit_at, run_hook, hook, data) end,
  collect = function() collect("collect") end,
}
"""


def _deny(obj, name, is_setting):
    raise AttributeError("Python attributes are not available to hooks")


def to_python(value):
    """A plain Lua value (as ``plain()`` above makes them) as Python data, strings decoded."""
    if lua54.lua_type(value) == "table":
        items = dict(value.items())
        if all(isinstance(k, int) for k in items) and \
                sorted(items) == list(range(1, len(items) + 1)):
            return [to_python(items[i]) for i in range(1, len(items) + 1)]
        return {to_python(k): to_python(v) for k, v in items.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class Host:
    """One Lua state with the host code loaded; ``callbacks`` maps names to Python callables."""

    def __init__(self, memory_limit, callbacks, ranks):
        self.lua = lua54.LuaRuntime(encoding=None, register_eval=False,
                                    register_builtins=False, unpack_returned_tuples=True,
                                    attribute_filter=_deny, max_memory=memory_limit)
        callbacks = dict(callbacks, now=time.monotonic)
        api = self.lua.execute(HOST.encode(), self.lua.table_from(
            {k.encode(): v for k, v in callbacks.items()}),
            self.lua.table_from({k.encode(): v for k, v in ranks.items()}), COUNT,
            name=b"=vxgate")
        self.compile_chunk, self.run_hook = api[b"compile"], api[b"run"]
        self.collect = api[b"collect"]

    def table(self, data):
        return self.lua.table_from(data, recursive=True)

    def memory_used(self):
        return self.lua.get_memory_used()

    def memory_left(self):
        return self.lua.get_max_memory() - self.lua.get_memory_used()
