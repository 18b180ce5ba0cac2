-- Specs for the `panel` helper library (strategies/lib/panel.lua), as scripts see it.
local fakectx = dofile("tests/spec/support/fakectx.lua")

local function write(path, src)
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
end

-- The library as a script sees it: through its read-only global.
local tmp = os.tmpname()
write(tmp, "return panel")
local panel = fakectx.load(tmp)
os.remove(tmp)

local experts = {
  { id = "a", name = "Ann", role = "Economist", weight = 2 },
  { id = "b", name = "Bo", role = "Panel Chair" },
  { id = "c", name = "Cy", role = "Red team critic" },
}

describe("panel library access", function()
  local path = os.tmpname()
  after_each(function()
    os.remove(path)
  end)

  it("is read-only, hides its table and is the same in every script", function()
    write(path, [[
      local ok, err = pcall(function() panel.finite = nil end)
      local ok2 = pcall(setmetatable, panel, nil)
      rawset(panel, "finite", "mine")
      return { ok = ok, err = err, ok2 = ok2, mt = getmetatable(panel), own = panel.finite, n = next(panel) }
    ]])
    local r = fakectx.load(path)
    assert.is_false(r.ok)
    assert.matches("panel is read%-only %(cannot set 'finite'%)", r.err)
    assert.is_false(r.ok2)
    assert.are.equal("panel", r.mt)
    assert.are.equal("mine", r.own)
    -- the next script still sees the real function
    write(path, "return panel.finite(1)")
    assert.is_true(fakectx.load(path))
  end)

  it("is loaded from the file the engine embeds", function()
    assert.matches("strategies/lib/panel%.lua$", fakectx.library_path)
    assert.is_true(panel.version >= 1)
  end)
end)

describe("panel helpers", function()
  it("finite, contains, trim and fnv1a", function()
    assert.is_true(panel.finite(1.5))
    assert.is_false(panel.finite(0 / 0))
    assert.is_false(panel.finite(math.huge))
    assert.is_false(panel.finite("1"))
    assert.is_true(panel.contains({ "x", "y" }, "y"))
    assert.is_false(panel.contains({ "x" }, "z"))
    assert.are.equal("a b", panel.trim("  a b \n"))
    assert.are.equal(2166136261, panel.fnv1a(""))
    assert.are.equal(0xe40c292c, panel.fnv1a("a"))
  end)

  it("finds experts, roles and the moderator", function()
    assert.are.equal("Bo", panel.expert_by_id(experts, "b").name)
    assert.is_nil(panel.expert_by_id(experts, "zz"))
    assert.is_true(panel.role_has(experts[3], { "critic" }))
    assert.is_false(panel.role_has({ id = "x" }, { "critic" }))
    assert.are.equal("c", panel.moderator(experts, "c").id)
    assert.are.equal("b", panel.moderator(experts, "").id)
    assert.are.equal("b", panel.moderator(experts, nil).id)
    assert.are.equal("a", panel.moderator({ experts[1], experts[3] }).id)
  end)

  it("redacts names literally", function()
    assert.are.equal("a panellist said (a panellist) X", panel.redact("Ann said (Bo.) X", { "Ann", "Bo.", "", "X" }))
  end)

  it("reads single-choice answers into ballots", function()
    local options = { "yes", "no" }
    local b = panel.ballot_of({ data = { position = "yes", confidence = 0.5, reason = "r" } }, experts[1], options)
    assert.are.same({ expert = "a", name = "Ann", position = "yes", confidence = 0.5, weight = 2, reason = "r",
                      ranking = { "yes" }, approvals = { "yes" }, distribution = { yes = 0.75, no = 0.25 } }, b)
    local _, why = panel.ballot_of({ error = "timeout" }, experts[1], options)
    assert.are.equal("timeout", why)
    _, why = panel.ballot_of({ text = "x" }, experts[1], options)
    assert.are.equal("answer was not valid JSON", why)
    _, why = panel.ballot_of({ data = { position = "maybe", confidence = 1 } }, experts[1], options)
    assert.matches("position is not one of the options", why)
    _, why = panel.ballot_of({ data = { position = "no", confidence = 2 } }, experts[1], options)
    assert.matches("confidence must be in %[0,1%]", why)
    assert.are.same({ "position", "confidence", "reason" }, panel.ballot_schema(options).required)
  end)

  it("collects ballots, positions and exclusions of an ask_all", function()
    local excluded = {}
    local ballots, positions = panel.collect_ballots({
      { data = { position = "no", confidence = 1, reason = "r" } }, { error = "down" }, { data = {} },
    }, experts, { "yes", "no" }, excluded, { round = 2 })
    assert.are.equal(1, #ballots)
    assert.are.same({ expert = "a", name = "Ann", position = "no", confidence = 1, reason = "r" }, positions[1])
    assert.are.same({ expert = "b", name = "Bo", excluded = true, error = "down" }, positions[2])
    assert.are.same({ expert = "b", name = "Bo", error = "down", round = 2 }, excluded[1])
    assert.are.equal(2, #excluded)
    local final, pos = panel.final_positions(experts, { c = ballots[1] }, "none")
    assert.are.same({ ballots[1] }, final)
    assert.are.equal("none", pos[1].error)
    assert.are.equal("no", pos[3].position)
    assert.are.equal("- Ann: no (confidence 1.00) — r", panel.position_line("Ann", ballots[1]))
  end)

  it("measures word overlap without stop words", function()
    local stop = panel.word_list("the a")
    local set, n = panel.words("The cat, the HAT and a café", stop)
    assert.are.equal(4, n)
    assert.is_true(set["café"] and set.hat and set["and"])
    assert.are.equal(1, panel.jaccard({}, 0, {}, 0))
    assert.are.equal(1 / 3, panel.similarity("red apple", "green apple", stop))
    assert.are.equal(1, panel.similarity("the", "a", stop))
  end)

  it("tallies positions and their dissent", function()
    local allowed, k = panel.option_set({ "Yes", " yes ", "No" })
    assert.are.equal(2, k)
    assert.is_true(allowed.yes and allowed.no)
    assert.is_nil(panel.option_set({}))
    assert.are.same({ "a b", "a b" }, { panel.normalise("  a \t b ") }) -- shown, key
    local ballots = { { expert = "1", position = "No", confidence = 1 }, { expert = "2", position = " yes" },
                      { expert = "3", position = "YES", confidence = 0 / 0 }, "junk", { expert = "4", position = "maybe" } }
    local groups, ignored = panel.tally(ballots, allowed)
    assert.are.equal(2, ignored)
    assert.are.same({ "no", "yes" }, { groups[1].key, groups[2].key })
    panel.by_count(groups)
    assert.are.same({ key = "yes", position = "yes", count = 2, confidence = 0 }, groups[1])
    local dissent = panel.dissent(ballots, "yes", panel.ballot_position, allowed)
    assert.are.same({ { expert = "1", position = "No" } }, dissent)
  end)

  it("lists and sorts ranking options", function()
    local ballots = { { ranking = { "b", { "c", "a" } } }, { ranking = { "d", "b", 7 } }, "junk" }
    assert.are.same({ "b", "d" }, (panel.option_names(ballots, nil, "ranking")))
    local list, seen = panel.option_names(ballots, {}, "ranking", true)
    assert.are.same({ "b", "c", "a", "d" }, list)
    assert.is_true(seen.c)
    assert.are.same({ "x", "y" }, (panel.option_names(ballots, { "x", "y", "x", "" }, "ranking")))
    local score = { a = 1, b = 2, c = 2 }
    local order = panel.sorted_by({ "a", "c", "b" }, function(x, y)
      if score[x] ~= score[y] then
        return score[x] > score[y]
      end
    end)
    assert.are.same({ "b", "c", "a" }, order)
  end)

  it("returns fresh tables", function()
    local s1, s2 = panel.ballot_schema({ "x" }), panel.ballot_schema({ "x" })
    assert.are_not.equal(s1, s2)
    s1.required[1] = "changed"
    assert.are.equal("position", panel.ballot_schema({ "x" }).required[1])
  end)
end)
