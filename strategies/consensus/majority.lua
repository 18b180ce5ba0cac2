-- majority: plurality over discrete positions.
--
-- Reads ballot.position (a non-empty string). Positions are compared after
-- trimming and collapsing whitespace and lower-casing ASCII letters, so
-- "Approve" and " approve " are one position; the first spelling seen is the
-- one reported. Other bytes (any UTF-8) are compared as they are.
--
-- opts.options (optional array of strings): only these positions count; a
-- ballot for anything else is ignored.
--
-- level    share of counted ballots that hold the winning position.
-- position the winning position (nil when nothing was counted).
-- dissent  every counted ballot whose position is not the winner.
-- Tie-break (deterministic, independent of ballot order): most ballots, then
-- the larger summed finite confidence, then the smaller normalised position
-- in byte order. details.tie lists the positions that shared the top count.
local function clean(s)
  if type(s) ~= "string" then
    return nil
  end
  s = s:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
  if s == "" then
    return nil
  end
  return s, s:lower()
end

local function finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function allowed_set(options)
  if type(options) ~= "table" or #options == 0 then
    return nil
  end
  local set = {}
  for _, o in ipairs(options) do
    local _, key = clean(o)
    if key then
      set[key] = true
    end
  end
  return set
end

local function tally(ballots, allowed)
  local groups, order, ignored = {}, {}, 0
  for _, b in ipairs(ballots) do
    local shown, key = clean(type(b) == "table" and b.position or nil)
    if key and (not allowed or allowed[key]) then
      local g = groups[key]
      if not g then
        g = { key = key, position = shown, count = 0, confidence = 0 }
        groups[key] = g
        order[#order + 1] = g
      end
      g.count = g.count + 1
      if finite(b.confidence) then
        g.confidence = g.confidence + math.max(0, math.min(1, b.confidence))
      end
    else
      ignored = ignored + 1
    end
  end
  return order, ignored
end

local function ranked(order)
  table.sort(order, function(a, b)
    if a.count ~= b.count then
      return a.count > b.count
    end
    if a.confidence ~= b.confidence then
      return a.confidence > b.confidence
    end
    return a.key < b.key
  end)
  return order
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local allowed = allowed_set(opts.options)
  local order, ignored = tally(ballots, allowed)
  local counted = #ballots - ignored
  local counts, tie = {}, {}
  for _, g in ipairs(order) do
    counts[g.position] = g.count
  end
  if counted == 0 then
    return { algorithm = "majority", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, ignored = ignored, counts = counts, tie = json.array() } }
  end
  ranked(order)
  local winner = order[1]
  for _, g in ipairs(order) do
    if g.count == winner.count then
      tie[#tie + 1] = g.position
    end
  end
  local dissent = json.array()
  for _, b in ipairs(ballots) do
    local shown, key = clean(type(b) == "table" and b.position or nil)
    if key and key ~= winner.key and (not allowed or allowed[key]) then
      dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = shown, reason = b.reason }
    end
  end
  return {
    algorithm = "majority",
    level = winner.count / counted,
    position = winner.position,
    dissent = dissent,
    details = { n = counted, ignored = ignored, counts = counts, votes = winner.count,
                tie = #tie > 1 and tie or json.array() },
  }
end
