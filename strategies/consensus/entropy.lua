-- entropy: agreement from the Shannon entropy of the position distribution.
--
-- Reads ballot.position (non-empty string, normalised as in majority:
-- trimmed, whitespace collapsed, ASCII lower-cased). With p_j the share of
-- counted ballots holding position j, H = -sum_j p_j ln p_j and the largest
-- entropy possible is ln K, where K is #opts.options when given, else the
-- number of counted ballots (each expert could have said something else).
--
-- level    1 - H / ln K: 1 when everyone holds one position, 0 when the
--          ballots are spread evenly over as many positions as possible.
--          K = 1 (one ballot, or one option) gives 1.
-- position the plurality position (tie-break as in majority: most ballots,
--          then larger summed confidence, then smaller normalised position).
-- dissent  counted ballots not holding that position.
-- details  entropy, max_entropy, shares {position = p}, n, ignored.
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
    return nil, 0
  end
  local set, k = {}, 0
  for _, o in ipairs(options) do
    local _, key = clean(o)
    if key and not set[key] then
      set[key] = true
      k = k + 1
    end
  end
  return set, k
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local allowed, k_options = allowed_set(opts.options)
  local groups, order, n, ignored = {}, {}, 0, 0
  for _, b in ipairs(ballots) do
    local shown, key = clean(type(b) == "table" and b.position or nil)
    if key and (not allowed or allowed[key]) then
      n = n + 1
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
  if n == 0 then
    return { algorithm = "entropy", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, ignored = ignored, entropy = 0, max_entropy = 0, shares = {} } }
  end
  local h, shares = 0, {}
  for _, g in ipairs(order) do
    local p = g.count / n
    shares[g.position] = p
    h = h - p * math.log(p)
  end
  local k = allowed and k_options or n
  local hmax = k > 1 and math.log(k) or 0
  local level = hmax > 0 and 1 - h / hmax or 1
  table.sort(order, function(a, b)
    if a.count ~= b.count then
      return a.count > b.count
    end
    if a.confidence ~= b.confidence then
      return a.confidence > b.confidence
    end
    return a.key < b.key
  end)
  local winner = order[1]
  local dissent = json.array()
  for _, b in ipairs(ballots) do
    local shown, key = clean(type(b) == "table" and b.position or nil)
    if key and key ~= winner.key and (not allowed or allowed[key]) then
      dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = shown, reason = b.reason }
    end
  end
  return {
    algorithm = "entropy",
    level = math.max(0, math.min(1, level)),
    position = winner.position,
    dissent = dissent,
    details = { entropy = h, max_entropy = hmax, shares = shares, n = n, ignored = ignored },
  }
end
