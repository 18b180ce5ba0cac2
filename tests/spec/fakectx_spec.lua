-- Specs for the fake host itself: if it is wrong, every strategy spec is.
local fakectx = dofile("tests/spec/support/fakectx.lua")
local json = fakectx.json

local function write(path, src)
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
end

describe("fakectx sandbox", function()
  local tmp = os.tmpname()
  after_each(function()
    os.remove(tmp)
  end)

  it("hides io, os, require and debug", function()
    write(tmp, "return { io = rawget(_ENV, 'io'), os = rawget(_ENV, 'os'), req = rawget(_ENV, 'require'), dbg = rawget(_ENV, 'debug') }")
    assert.are.same({}, fakectx.load(tmp))
  end)

  it("fails on reading an undefined global", function()
    write(tmp, "return function() return undefined_thing end")
    local f = fakectx.load(tmp)
    assert.has_error(f, nil)
    local ok, err = pcall(f)
    assert.is_false(ok)
    assert.matches("undefined global 'undefined_thing'", err)
  end)

  it("fails on assigning a global", function()
    write(tmp, "counter = 1 return {}")
    local ok, err = pcall(fakectx.load, tmp)
    assert.is_false(ok)
    assert.matches("assigned global 'counter'", err)
  end)
end)

describe("fakectx json", function()
  it("round-trips nested values with unicode", function()
    local v = { a = { 1, 2.5, "Zoë \"q\"\n" }, b = true, c = { d = "承認" } }
    assert.are.same(v, json.decode(json.encode(v)))
  end)

  it("encodes a marked empty table as an array, and marks decoded arrays", function()
    assert.are.equal("[]", json.encode(json.array()))
    assert.are.equal("{}", json.encode({}))
    assert.are.equal('{"a":[]}', json.encode(json.decode('{"a":[]}')))
  end)

  it("refuses NaN, functions and mixed tables", function()
    assert.has_error(function() json.encode({ x = 0 / 0 }) end)
    assert.has_error(function() json.encode({ f = print }) end)
    assert.has_error(function() json.encode({ 1, 2, x = 3 }) end)
  end)
end)

describe("fakectx simulated expert", function()
  local experts = fakectx.roster(3)
  local schema = {
    type = "object",
    properties = {
      position = { type = "string", enum = { "a", "b", "c" } },
      estimate = { type = "number", minimum = 10, maximum = 20 },
      confidence = { type = "number", minimum = 0, maximum = 1 },
      ranking = { type = "array", items = { type = "string", enum = { "x", "y", "z" } }, minItems = 3, maxItems = 3 },
      n = { type = "integer", minimum = 1, maximum = 5 },
    },
  }

  it("honours the schema", function()
    for _, e in ipairs(experts) do
      local text, d = fakectx.simulate(e, "Q", { schema = schema })
      assert.are.same(d, json.decode(text))
      assert.truthy(({ a = true, b = true, c = true })[d.position])
      assert.is_true(d.estimate >= 10 and d.estimate <= 20)
      assert.is_true(d.confidence >= 0 and d.confidence <= 1)
      table.sort(d.ranking)
      assert.are.same({ "x", "y", "z" }, d.ranking)
      assert.are.equal("integer", math.type(d.n))
    end
  end)

  it("is deterministic and differs between experts", function()
    local _, d1 = fakectx.simulate(experts[1], "Q", { schema = schema })
    local _, d1b = fakectx.simulate(experts[1], "Q", { schema = schema })
    local _, d2 = fakectx.simulate(experts[2], "Q", { schema = schema })
    assert.are.same(d1, d1b)
    assert.are_not.same(d1, d2)
  end)

  it("moves estimates toward 'Group median:' and raises confidence", function()
    local s = { type = "object", properties = { estimate = { type = "number", minimum = 0, maximum = 100 },
                                                confidence = { type = "number", minimum = 0, maximum = 1 } } }
    for _, e in ipairs(experts) do
      local _, before = fakectx.simulate(e, "Q", { schema = s })
      local _, after = fakectx.simulate(e, "Q\nGroup median: 50\n", { schema = s })
      assert.is_true(math.abs(after.estimate - 50) <= 0.5 * math.abs(before.estimate - 50) + 1e-9)
      assert.is_true(after.confidence >= before.confidence)
    end
  end)

  it("picks a free position among 'Options:'", function()
    local s = { type = "object", properties = { position = { type = "string" } } }
    local _, d = fakectx.simulate(experts[1], "Q\nOptions: red | green | blue", { schema = s })
    assert.truthy(({ red = true, green = true, blue = true })[d.position])
  end)
end)

describe("fakectx runner", function()
  local tmp = os.tmpname()
  after_each(function()
    os.remove(tmp)
  end)

  local function strategy(body)
    local path = tmp .. "_x.lua"
    local name = path:match("([^/]+)%.lua$")
    write(path, "local M = { name = '" .. name .. "', description = 'test', start = 'a', nodes = {}, params = {"
      .. " n = { type = 'integer', default = 2, min = 1, max = 3, description = 'n' } } }\n" .. body .. "\nreturn M")
    return path
  end

  it("rejects unknown and out-of-range params naming the param", function()
    local path = strategy("function M.nodes.a(ctx) return ctx:done({}) end")
    assert.matches("unknown param 'zz'", fakectx.run({ path = path, params = { zz = 1 } }).error)
    assert.matches("param 'n' out of range", fakectx.run({ path = path, params = { n = 9 } }).error)
    os.remove(path)
  end)

  it("fails on an unknown next node and on reserved event types", function()
    local path = strategy("function M.nodes.a(ctx) return 'nowhere' end")
    assert.matches("returned unknown node 'nowhere'", fakectx.run({ path = path }).error)
    write(path, (io.open(path):read("a"):gsub("return 'nowhere'", "ctx:emit('consensus', {}) return nil")))
    assert.matches("reserved", fakectx.run({ path = path }).error)
    os.remove(path)
  end)

  it("checkpoints state as JSON between nodes", function()
    local path = strategy("function M.nodes.a(ctx) ctx.state.f = function() end return 'a' end")
    assert.matches("unserialisable state", fakectx.run({ path = path }).error)
    os.remove(path)
  end)
end)
