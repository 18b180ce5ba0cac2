-- fakectx: a pure-Lua stand-in for the engine's script host, for busted specs.
--
-- It implements the ctx API of the script contract (docs/scripting.md) closely
-- enough that a strategy which passes here runs unchanged in the engine:
--   * strategy and consensus files are loaded with loadfile in a strict
--     sandbox env (no io/os/require/debug; reading or writing an undefined
--     global raises), freshly for every node, so module-level state is caught;
--   * every script sees the read-only `panel` helper library, loaded from
--     strategies/lib/panel.lua, the file the engine embeds (one copy);
--   * params are validated and defaulted like the host does;
--   * ctx.state is JSON round-tripped after every node (the checkpoint), so
--     functions, cycles, sparse arrays and NaN in state fail the run;
--   * reserved event types and malformed names are refused;
--   * consensus results are checked (algorithm string, finite level in [0,1]).
--
-- The simulated expert is deterministic per (seed, expert, prompt, schema) and
-- follows the rules of the engine's simulated provider: schema-valid JSON,
-- persona-biased enum choices, numbers within bounds, arrays of enum strings as
-- permutations, a `Group median: <n>` line pulls fields named *estimate*
-- toward the median (and raises *confidence*), an `Options: a | b` line picks
-- "position" among the options. One extension used by delphi: a line
-- `Previous estimate: <n>` replaces the expert's initial estimate, so
-- repeated rounds keep converging.
--
-- Test hooks: expert.sim = { <property> = value } forces a property value;
-- expert.fail = "error text" | "invalid" | "garbage" makes every answer of that
-- expert fail; run options `fail = function(expert, prompt, opts, n)` does the
-- same per call (n counts that expert's calls); `answer = function(expert,
-- prompt, opts)` may return a table used as the answer data; `inputs` is the
-- queue ctx:await_input reads from (a run stops in "awaiting_input" when it is
-- empty; run:resume(input) continues).
local M = {}

local ROOT = (debug.getinfo(1, "S").source:match("^@(.*)tests/spec/support/fakectx%.lua$") or "")
M.root = ROOT

---------------------------------------------------------------------------
-- JSON (sorted keys so encodings are deterministic)
---------------------------------------------------------------------------
local json = {}
M.json = json

-- Marks a table as a JSON array so an empty one encodes as [] (the host's json.array).
local ARRAY = { __metatable = "json.array", __name = "json.array" }

function json.array(t)
  t = t or {}
  if getmetatable(t) ~= nil then
    error("json.array: the table already has a metatable", 2)
  end
  return setmetatable(t, ARRAY)
end

local function is_array(t)
  local n = 0
  for k in pairs(t) do
    if math.type(k) ~= "integer" or k < 1 then
      return false
    end
    n = n + 1
  end
  return n == #t
end

local function enc_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local map = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
    return map[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function encode(v, seen)
  local t = type(v)
  if v == nil or v == json.null then
    return "null"
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("json: cannot encode non-finite number", 0)
    end
    if math.type(v) == "integer" then
      return string.format("%d", v)
    end
    return string.format("%.17g", v)
  elseif t == "string" then
    return enc_string(v)
  elseif t == "table" then
    if seen[v] then
      error("json: cycle", 0)
    end
    if next(v) == nil then
      return getmetatable(v) == "json.array" and "[]" or "{}"
    end
    seen[v] = true
    local out = {}
    if next(v) ~= nil and is_array(v) then
      for i = 1, #v do
        out[i] = encode(v[i], seen)
      end
      seen[v] = nil
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do
      if type(k) ~= "string" then
        error("json: non-string key " .. tostring(k) .. " in object (sparse or mixed table?)", 0)
      end
      keys[#keys + 1] = k
    end
    table.sort(keys)
    for i, k in ipairs(keys) do
      out[i] = enc_string(k) .. ":" .. encode(v[k], seen)
    end
    seen[v] = nil
    return "{" .. table.concat(out, ",") .. "}"
  end
  error("json: cannot encode " .. t, 0)
end

function json.encode(v)
  return encode(v, {})
end

json.null = setmetatable({}, { __tostring = function()
  return "null"
end })

local function decoder(s)
  local i = 1
  local value
  local function ws()
    i = s:find("[^ \t\r\n]", i) or #s + 1
  end
  local function fail(msg)
    error("json: " .. msg .. " at " .. i, 0)
  end
  local function str()
    local out = {}
    i = i + 1
    while true do
      local c = s:sub(i, i)
      if c == "" then
        fail("unterminated string")
      elseif c == '"' then
        i = i + 1
        return table.concat(out)
      elseif c == "\\" then
        local e = s:sub(i + 1, i + 1)
        local map = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
        if map[e] then
          out[#out + 1] = map[e]
          i = i + 2
        elseif e == "u" then
          local cp = tonumber(s:sub(i + 2, i + 5), 16) or fail("bad \\u escape")
          out[#out + 1] = utf8.char(cp)
          i = i + 6
        else
          fail("bad escape")
        end
      else
        out[#out + 1] = c
        i = i + 1
      end
    end
  end
  function value()
    ws()
    local c = s:sub(i, i)
    if c == "{" then
      local t = {}
      i = i + 1
      ws()
      if s:sub(i, i) == "}" then
        i = i + 1
        return t
      end
      while true do
        ws()
        if s:sub(i, i) ~= '"' then
          fail("expected key")
        end
        local k = str()
        ws()
        if s:sub(i, i) ~= ":" then
          fail("expected ':'")
        end
        i = i + 1
        t[k] = value()
        ws()
        local d = s:sub(i, i)
        i = i + 1
        if d == "}" then
          return t
        elseif d ~= "," then
          fail("expected ',' or '}'")
        end
      end
    elseif c == "[" then
      local t = json.array()
      i = i + 1
      ws()
      if s:sub(i, i) == "]" then
        i = i + 1
        return t
      end
      while true do
        t[#t + 1] = value()
        ws()
        local d = s:sub(i, i)
        i = i + 1
        if d == "]" then
          return t
        elseif d ~= "," then
          fail("expected ',' or ']'")
        end
      end
    elseif c == '"' then
      return str()
    elseif s:sub(i, i + 3) == "true" then
      i = i + 4
      return true
    elseif s:sub(i, i + 4) == "false" then
      i = i + 5
      return false
    elseif s:sub(i, i + 3) == "null" then
      i = i + 4
      return nil
    end
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
    if not num or num == "" then
      fail("unexpected character")
    end
    i = i + #num
    return math.tointeger(tonumber(num)) or tonumber(num) or fail("bad number")
  end
  return function()
    local v = value()
    ws()
    if i <= #s then
      fail("trailing data")
    end
    return v
  end
end

function json.decode(s)
  if type(s) ~= "string" then
    error("json.decode expects a string", 2)
  end
  return decoder(s)()
end

local function copy(v)
  if v == nil then
    return nil
  end
  return json.decode(json.encode(v))
end
M.copy = copy

---------------------------------------------------------------------------
-- Sandbox
---------------------------------------------------------------------------
local function shallow(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = v
  end
  return c
end

local library -- the helper library, loaded once from the file the engine embeds

-- Like the host: every chunk gets its own empty proxy of the one library
-- table, so writing to `panel` fails and rawset shadows only in that chunk.
local function panel_proxy()
  return setmetatable({}, {
    __index = library,
    __newindex = function(_, k)
      error("panel is read-only (cannot set '" .. tostring(k) .. "')", 2)
    end,
    __metatable = "panel",
  })
end

function M.sandbox(extra)
  local env = {
    string = shallow(string), table = shallow(table), math = shallow(math), utf8 = shallow(utf8),
    json = { encode = json.encode, decode = json.decode, array = json.array },
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs, pcall = pcall,
    select = select, tonumber = tonumber, tostring = tostring, type = type, xpcall = xpcall,
    rawequal = rawequal, rawget = rawget, rawlen = rawlen, rawset = rawset,
    setmetatable = setmetatable, getmetatable = getmetatable, print = function() end,
    panel = library and panel_proxy() or nil,
  }
  for k, v in pairs(extra or {}) do
    env[k] = v
  end
  return setmetatable(env, {
    __index = function(_, k)
      error("script read undefined global '" .. tostring(k) .. "'", 2)
    end,
    __newindex = function(_, k)
      error("script assigned global '" .. tostring(k) .. "'", 2)
    end,
  })
end

-- Loads a file in a fresh sandbox and returns what its chunk returns.
function M.load(path)
  local chunk, err = loadfile(path, "t", M.sandbox())
  if not chunk then
    error(err, 0)
  end
  return chunk()
end

M.library_path = ROOT .. "strategies/lib/panel.lua"
do
  local chunk, err = loadfile(M.library_path, "t", M.sandbox())
  if not chunk then
    error(err, 0)
  end
  library = chunk()
end

function M.strategy_path(name)
  return ROOT .. "strategies/" .. name .. ".lua"
end

function M.consensus_path(name)
  return ROOT .. "strategies/consensus/" .. name .. ".lua"
end

-- Runs a consensus script directly: fakectx.consensus("borda", ballots, opts).
function M.consensus(name, ballots, opts)
  return M.load(M.consensus_path(name))(ballots, opts)
end

---------------------------------------------------------------------------
-- Params (as the host validates them)
---------------------------------------------------------------------------
local function check_param(name, spec, v)
  local t = spec.type
  if t == "integer" then
    if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
      return "param '" .. name .. "' must be an integer"
    end
  elseif t == "number" then
    if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
      return "param '" .. name .. "' must be a finite number"
    end
  elseif t == "string" then
    if type(v) ~= "string" then
      return "param '" .. name .. "' must be a string"
    end
    if spec.enum then
      local ok = false
      for _, e in ipairs(spec.enum) do
        ok = ok or e == v
      end
      if not ok then
        return "param '" .. name .. "' must be one of " .. table.concat(spec.enum, ", ")
      end
    end
  elseif t == "boolean" then
    if type(v) ~= "boolean" then
      return "param '" .. name .. "' must be a boolean"
    end
  elseif t == "array" then
    if type(v) ~= "table" or (next(v) ~= nil and not is_array(v)) then
      return "param '" .. name .. "' must be an array of strings"
    end
    for _, e in ipairs(v) do
      if type(e) ~= "string" then
        return "param '" .. name .. "' must be an array of strings"
      end
    end
    if spec.min_items and #v < spec.min_items or spec.max_items and #v > spec.max_items then
      return "param '" .. name .. "' has the wrong number of items"
    end
  else
    return "param '" .. name .. "' has unknown type " .. tostring(t)
  end
  if (t == "integer" or t == "number") and (spec.min and v < spec.min or spec.max and v > spec.max) then
    return "param '" .. name .. "' out of range"
  end
  return nil
end

function M.validate_params(strategy, given)
  local out = {}
  for name in pairs(given or {}) do
    if not (strategy.params or {})[name] then
      return nil, "unknown param '" .. tostring(name) .. "'"
    end
  end
  for name, spec in pairs(strategy.params or {}) do
    local v = (given or {})[name]
    if v == nil then
      v = copy(spec.default)
    end
    if v == nil then
      return nil, "param '" .. name .. "' has no value and no default"
    end
    local err = check_param(name, spec, v)
    if err then
      return nil, err
    end
    if spec.type == "integer" then
      v = math.tointeger(v)
    end
    out[name] = v
  end
  for name, spec in pairs(strategy.params or {}) do
    local other = spec.above
    if other and type(out[name]) == "number" and type(out[other]) == "number" and not (out[name] > out[other]) then
      return nil, string.format("param '%s' (%g) must be greater than param '%s' (%g)", name, out[name], other, out[other])
    end
  end
  return out
end

-- Checks the shape of a strategy module the way the host does on load.
function M.check_strategy(mod, name)
  assert(type(mod) == "table", "strategy must return a table")
  assert(mod.name == name, "strategy name '" .. tostring(mod.name) .. "' must equal the file name '" .. name .. "'")
  assert(type(mod.description) == "string" and mod.description ~= "", "description missing")
  assert(type(mod.nodes) == "table", "nodes missing")
  assert(type(mod.nodes[mod.start]) == "function", "start node missing")
  for pname, spec in pairs(mod.params or {}) do
    assert(check_param(pname, spec, spec.default) == nil, "default of param '" .. pname .. "' is invalid")
    assert(type(spec.description) == "string", "param '" .. pname .. "' needs a description")
  end
  return true
end

---------------------------------------------------------------------------
-- The simulated expert
---------------------------------------------------------------------------
local fnv = library.fnv1a

local function rng(seed_string)
  local state = fnv(seed_string) | 1
  return function()
    state = (state * 6364136223846793005 + 1442695040888963407)
    return ((state >> 33) & 0x7fffffff) / 0x80000000
  end
end

local VOCAB = {
  "run a pilot with two regional sites first",
  "partner with an established distributor",
  "secure early scientific advice from the regulator",
  "collect real-world evidence after launch",
  "price against the current standard of care",
  "narrow the initial indication to reduce risk",
  "invest in patient support programmes",
  "stage the investment behind clear go/no-go gates",
  "build the safety database before scaling",
  "engage payers before the pivotal trial",
  "hire a dedicated market access lead",
  "license the technology instead of building it",
}

local function unit(expert, key)
  return fnv(table.concat({ expert.id, expert.persona or "", expert.role or "", key }, "|")) / 0xffffffff
end

local function prompt_number(prompt, label)
  local v = prompt:match(label .. ":%s*(-?[%d%.]+[eE]?[-+]?%d*)")
  return v and tonumber(v)
end

local function prompt_options(prompt)
  local line = prompt:match("Options:%s*([^\n]+)")
  if not line then
    return nil
  end
  local out = {}
  for o in (line .. "|"):gmatch("%s*(.-)%s*|") do
    if o ~= "" then
      out[#out + 1] = o
    end
  end
  return #out > 0 and out or nil
end

local generate

local function gen_string(schema, ctx, name)
  if schema.enum then
    return schema.enum[math.floor(unit(ctx.expert, ctx.path .. "#enum") * #schema.enum) % #schema.enum + 1]
  end
  local opts = name == "position" and prompt_options(ctx.prompt)
  if opts then
    return opts[math.floor(unit(ctx.expert, ctx.path .. "#opt") * #opts) % #opts + 1]
  end
  local phrase = VOCAB[math.floor(ctx.rand() * #VOCAB) + 1]
  -- List items (ideas, assumptions) are bare phrases so experts overlap;
  -- free-text fields carry the speaker's voice.
  local s = ctx.path:find("%]$") and phrase
    or string.format("%s (%s): %s", ctx.expert.name or ctx.expert.id, ctx.expert.role or "expert", phrase)
  if schema.maxLength and utf8.len(s) and utf8.len(s) > schema.maxLength then
    s = s:sub(1, utf8.offset(s, schema.maxLength + 1) - 1)
  end
  return s
end

local function gen_number(schema, ctx, name)
  local lo = schema.minimum or 0
  local hi = schema.maximum or (name:find("confidence") and 1 or 100)
  local v
  if name:find("estimate") then
    local base = prompt_number(ctx.prompt, "Previous estimate") or lo + unit(ctx.expert, name) * (hi - lo)
    local median = prompt_number(ctx.prompt, "Group median")
    if median then
      base = base + (0.5 + 0.3 * unit(ctx.expert, "factor")) * (median - base)
    end
    v = base
  elseif name:find("confidence") then
    v = lo + (0.4 + 0.4 * unit(ctx.expert, name)) * (hi - lo)
    if prompt_number(ctx.prompt, "Group median") then
      v = v + 0.15 * (hi - lo)
    end
  else
    v = lo + ctx.rand() * (hi - lo)
  end
  v = math.max(lo, math.min(hi, v))
  if schema.type == "integer" then
    v = math.max(math.ceil(lo), math.min(math.floor(hi), math.floor(v + 0.5)))
  end
  return v
end

local function gen_array(schema, ctx, name)
  local items = schema.items or { type = "string" }
  local min, max = schema.minItems or 0, schema.maxItems or math.max(schema.minItems or 0, 3)
  local n = math.max(min, math.min(max, 3))
  local out = {}
  if items.enum then
    local perm = {}
    for i, e in ipairs(items.enum) do
      perm[i] = e
    end
    local r = rng(ctx.expert.id .. "|" .. ctx.path .. "|" .. ctx.prompt)
    for i = #perm, 2, -1 do
      local j = math.floor(r() * i) + 1
      perm[i], perm[j] = perm[j], perm[i]
    end
    for i = 1, math.min(n, #perm) do
      out[i] = perm[i]
    end
    return out
  end
  local used = {}
  for i = 1, n do
    local sub = { expert = ctx.expert, prompt = ctx.prompt, rand = ctx.rand, path = ctx.path .. "[" .. i .. "]" }
    local v = generate(items, sub, name)
    if type(v) == "string" then
      local tries = 0
      while used[v] and tries < 20 do
        v = generate(items, sub, name)
        tries = tries + 1
      end
      used[v] = true
    end
    out[i] = v
  end
  return out
end

function generate(schema, ctx, name)
  local t = schema.type
  if schema.enum and t == nil then
    t = "string"
  end
  if t == "object" then
    local out, names = {}, {}
    for k in pairs(schema.properties or {}) do
      names[#names + 1] = k
    end
    table.sort(names)
    for _, k in ipairs(names) do
      local forced = ctx.expert.sim and ctx.expert.sim[k]
      if forced ~= nil and ctx.path == "" then
        out[k] = copy(forced)
      else
        local sub = { expert = ctx.expert, prompt = ctx.prompt, rand = ctx.rand, path = ctx.path .. "." .. k }
        out[k] = generate(schema.properties[k], sub, k)
      end
    end
    return out
  elseif t == "string" then
    return gen_string(schema, ctx, name or "")
  elseif t == "number" or t == "integer" then
    return gen_number(schema, ctx, name or "")
  elseif t == "boolean" then
    return unit(ctx.expert, ctx.path .. "#bool") < 0.5
  elseif t == "array" then
    return gen_array(schema, ctx, name or "")
  end
  return nil
end

-- The answer of the simulated expert: text, and data when a schema is given.
function M.simulate(expert, prompt, opts, seed)
  opts = opts or {}
  local schema_key = opts.schema and json.encode(opts.schema) or ""
  local rand = rng(table.concat({ tostring(seed or 1), expert.id, prompt, schema_key }, "\0"))
  if opts.schema then
    local data = generate(opts.schema, { expert = expert, prompt = prompt, rand = rand, path = "" }, "")
    return json.encode(data), data
  end
  local phrase = VOCAB[math.floor(rand() * #VOCAB) + 1]
  local text = string.format("Speaking as %s, %s would %s. The evidence is mixed, so I would measure progress early.",
    expert.role or "an expert", expert.name or expert.id, phrase)
  return text, nil
end

---------------------------------------------------------------------------
-- A default roster
---------------------------------------------------------------------------
local ROSTER = {
  { id = "e1", name = "Dr. Ada Chair", role = "chair", persona = "measured, synthesising" },
  { id = "e2", name = "Zoë Ångström", role = "regulatory affairs", persona = "cautious, precise" },
  { id = "e3", name = "Kenji Watanabe", role = "clinical development", persona = "pragmatic" },
  { id = "e4", name = "Priya Raman", role = "health economics", persona = "numbers first" },
  { id = "e5", name = "Marcus Stone", role = "red team", persona = "sceptical, adversarial" },
  { id = "e6", name = "Amara Okafor", role = "patient advocate", persona = "patient centred" },
  { id = "e7", name = "Lars Nilsson", role = "statistician", persona = "rigorous" },
}

-- roster(n) -> the first n default experts (fresh copies), weight 1.
function M.roster(n)
  local out = {}
  for i = 1, n or 5 do
    local e = copy(ROSTER[(i - 1) % #ROSTER + 1])
    if i > #ROSTER then
      e.id = e.id .. "_" .. i
    end
    e.expertise = { e.role }
    e.model = "sim"
    e.weight = 1
    out[i] = e
  end
  return out
end

---------------------------------------------------------------------------
-- ctx and the runner
---------------------------------------------------------------------------
local RESERVED = {
  ["panel.status"] = true, ["panel.completed"] = true, ["panel.failed"] = true, ["expert.delta"] = true,
  ["expert.message"] = true, consensus = true, ["input.requested"] = true, ["input.received"] = true,
}
local LEVELS = { debug = true, info = true, warn = true, error = true }

-- ^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$, checked part by part.
local function valid_event_type(t)
  if type(t) ~= "string" or t == "" then
    return false
  end
  local first = true
  for part in (t .. "."):gmatch("([^.]*)%.") do
    if first and not part:match("^[a-z][a-z0-9_]*$") or not first and not part:match("^[a-z0-9_]+$") then
      return false
    end
    first = false
  end
  return true
end

local Ctx = {}
Ctx.__index = Ctx

local function host_event(run, type_, data)
  run.seq = run.seq + 1
  run.events[#run.events + 1] = { seq = run.seq, type = type_, data = copy(data) }
  return run.seq
end

local function find_expert(run, e)
  local id = type(e) == "table" and e.id or e
  for _, x in ipairs(run.experts) do
    if x.id == id then
      return x
    end
  end
  error("ask: unknown expert '" .. tostring(id) .. "'", 3)
end

local function answer(run, expert, prompt, opts)
  if type(prompt) ~= "string" or prompt == "" then
    error("ask: prompt must be a non-empty string", 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("ask: opts must be a table", 3)
  end
  opts = opts or {}
  if opts.schema then
    json.encode(opts.schema)
  end
  run.calls_by[expert.id] = (run.calls_by[expert.id] or 0) + 1
  run.calls[#run.calls + 1] = { expert = expert.id, prompt = prompt, opts = copy(opts) }
  local failure = expert.fail or (run.opts.fail and run.opts.fail(expert, prompt, opts, run.calls_by[expert.id]))
  local text, data
  if failure == "invalid" and opts.schema then
    data = { position = 42, confidence = "very", estimate = "n/a", ranking = "first", reason = false }
    text = json.encode(data)
  elseif failure == "garbage" then
    text = "I'm sorry, I cannot answer in JSON today."
  elseif failure then
    return { expert = expert.id, error = tostring(failure) }
  else
    local scripted = run.opts.answer and run.opts.answer(expert, prompt, opts)
    if scripted ~= nil then
      data = copy(scripted)
      text = json.encode(data)
    else
      text, data = M.simulate(expert, prompt, opts, run.opts.seed)
    end
  end
  host_event(run, "expert.message", { expert = expert.id, name = expert.name, round = opts.round, text = text, data = data })
  local usage = { prompt_tokens = #prompt // 4, completion_tokens = #text // 4 }
  return { expert = expert.id, text = text, data = opts.schema and data or nil, usage = usage }
end

function Ctx:ask(expert, prompt, opts)
  return answer(self._run, find_expert(self._run, expert), prompt, opts)
end

function Ctx:ask_all(experts, prompt_or_fn, opts)
  local out = {}
  for i, e in ipairs(experts) do
    local ex = find_expert(self._run, e)
    local prompt = prompt_or_fn
    if type(prompt_or_fn) == "function" then
      prompt = prompt_or_fn(e)
    end
    out[i] = answer(self._run, ex, prompt, opts)
  end
  return out
end

function Ctx:emit(type_, data)
  if not valid_event_type(type_) then
    error("emit: invalid event type '" .. tostring(type_) .. "'", 2)
  end
  if RESERVED[type_] then
    error("emit: event type '" .. type_ .. "' is reserved for the host", 2)
  end
  return host_event(self._run, type_, data)
end

function Ctx:consensus(algorithm, ballots, opts)
  algorithm = algorithm or self.consensus_algorithm
  if type(algorithm) ~= "string" or not algorithm:match("^[a-z][a-z0-9_]*$") then
    error("consensus: bad algorithm name '" .. tostring(algorithm) .. "'", 2)
  end
  local path
  for _, dir in ipairs(self._run.consensus_dirs) do
    local p = dir .. algorithm .. ".lua"
    local f = loadfile(p)
    if f then
      path = p
      break
    end
  end
  if not path then
    error("consensus: unknown algorithm '" .. algorithm .. "'", 2)
  end
  local result = M.load(path)(copy(ballots) or {}, copy(opts) or {})
  local lvl = type(result) == "table" and result.level
  if type(result) ~= "table" or type(result.algorithm) ~= "string" or type(lvl) ~= "number"
    or lvl ~= lvl or lvl < 0 or lvl > 1 or type(result.dissent) ~= "table" or type(result.details) ~= "table" then
    error("consensus '" .. algorithm .. "' returned a malformed result", 2)
  end
  host_event(self._run, "consensus", { algorithm = algorithm, result = result })
  return copy(result)
end

function Ctx:await_input(request)
  if type(request) ~= "table" or type(request.prompt) ~= "string" then
    error("await_input: request needs a prompt", 2)
  end
  local run = self._run
  host_event(run, "input.requested", { request = request })
  local input
  if #run.inputs > 0 then
    input = table.remove(run.inputs, 1)
  else
    run.pending = copy(request)
    input = coroutine.yield("awaiting_input")
  end
  host_event(run, "input.received", { input = input })
  return copy(input)
end

function Ctx:log(level, msg)
  if not LEVELS[level] then
    error("log: bad level '" .. tostring(level) .. "'", 2)
  end
  self._run.logs[#self._run.logs + 1] = { level = level, msg = tostring(msg) }
end

function Ctx:done(result)
  if type(result) ~= "table" then
    error("done: result must be a table", 2)
  end
  json.encode(result)
  self._run.result = copy(result)
  self._run.done = true
  return nil
end

local Run = {}
Run.__index = Run

local function fail_run(run, msg)
  run.status = "failed"
  run.error = msg
  host_event(run, "panel.failed", { error = msg })
  return run
end

-- Drives nodes until done, failure, or a wait for input.
local function drive(run, resume_value)
  while run.node do
    if run.steps >= run.max_steps then
      return fail_run(run, "step limit reached")
    end
    if not run.co then
      local ok, mod = pcall(M.load, run.path) -- fresh module per node, like a resumed panel
      if not ok then
        return fail_run(run, tostring(mod))
      end
      local fn = mod.nodes[run.node]
      local ctx = setmetatable({
        question = run.question, params = copy(run.params), experts = copy(run.experts), tenant = copy(run.tenant),
        consensus_algorithm = run.consensus_algorithm, panel_id = run.panel_id, state = run.state, _run = run,
      }, Ctx)
      run.co = coroutine.create(function()
        return fn(ctx)
      end)
      run.ctx = ctx
    end
    local ok, a = coroutine.resume(run.co, resume_value)
    resume_value = nil
    if not ok then
      return fail_run(run, "node '" .. run.node .. "': " .. tostring(a))
    end
    if coroutine.status(run.co) == "suspended" then
      run.status = "awaiting_input"
      host_event(run, "panel.status", { status = "awaiting_input" })
      return run
    end
    run.co = nil
    run.steps = run.steps + 1
    local okc, state = pcall(copy, run.ctx.state) -- the checkpoint
    if not okc then
      return fail_run(run, "node '" .. run.node .. "' left unserialisable state: " .. tostring(state))
    end
    run.state = state or {}
    if run.done or a == nil then
      run.node = nil
    elseif type(a) ~= "string" or not run.module.nodes[a] then
      return fail_run(run, "node '" .. run.node .. "' returned unknown node '" .. tostring(a) .. "'")
    else
      run.node = a
    end
  end
  run.status = "completed"
  host_event(run, "panel.completed", { result = run.result })
  return run
end

function Run:resume(input)
  assert(self.status == "awaiting_input", "run is not awaiting input")
  self.status = "running"
  self.pending = nil
  return drive(self, input)
end

-- Events of one type, in order.
function Run:events_of(type_)
  local out = {}
  for _, e in ipairs(self.events) do
    if e.type == type_ then
      out[#out + 1] = e
    end
  end
  return out
end

-- run{ strategy = name | path = file, question, experts, params, tenant,
--      consensus_algorithm, seed, inputs, fail, answer, consensus_dirs,
--      max_steps } -> run (status, result, events, calls, logs, error)
function M.run(o)
  local path = o.path or M.strategy_path(o.strategy)
  local name = path:match("([^/]+)%.lua$")
  local mod = M.load(path)
  M.check_strategy(mod, name)
  local experts = o.experts or M.roster(5)
  local run = setmetatable({
    opts = o, path = path, module = mod, question = o.question or "Should we launch product X in the EU next year?",
    experts = copy(experts), tenant = o.tenant or { slug = "acme", flags = {} },
    consensus_algorithm = o.consensus_algorithm or mod.consensus or "majority", panel_id = o.panel_id or "p-0001",
    state = {}, events = {}, calls = {}, calls_by = {}, logs = {}, seq = 0, steps = 0, max_steps = o.max_steps or 200,
    inputs = copy(o.inputs or {}), node = mod.start, status = "running",
    consensus_dirs = o.consensus_dirs or { ROOT .. "strategies/consensus/" },
  }, Run)
  local params, err = M.validate_params(mod, o.params)
  if not params then
    return fail_run(run, err)
  end
  run.params = params
  host_event(run, "panel.status", { status = "running" })
  return drive(run)
end

return M
