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
