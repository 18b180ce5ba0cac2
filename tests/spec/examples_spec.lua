-- Runs the specs that ship with the examples (examples/*/spec/*_spec.lua),
-- so ctest's spec/lua covers them; each also runs alone with
-- `busted examples/<name>/spec` from the repo root.
local SPECS = {
  "examples/tenant-override/spec/delphi_override_spec.lua",
  "examples/debate/spec/debate_spec.lua",
  "examples/tutorial/spec/premortem_spec.lua",
}

describe("examples", function()
  for _, path in ipairs(SPECS) do
    local chunk = assert(loadfile(path, "t", _ENV))
    chunk()
  end
end)

describe("docs/scripting-tutorial.md", function()
  it("shows node listings that are the tested example's code", function()
    local doc = io.open("docs/scripting-tutorial.md"):read("a")
    local src = io.open("examples/tutorial/premortem.lua"):read("a")
    local checked = 0
    for block in doc:gmatch("```lua\n(.-)```") do
      if block:find("^function M%.nodes%.") then -- full node listings, not the skeleton
        assert(src:find(block, 1, true), "tutorial listing differs from premortem.lua:\n" .. block)
        checked = checked + 1
      end
    end
    assert.are.equal(2, checked)
  end)
end)
