-- panel: the helper library every strategy and consensus script sees as the
-- read-only global `panel` (docs/scripting.md, section 5).
--
-- The engine compiles this file into its binary and loads it inside each
-- panel's sandbox, with the same limits as the scripts and no more reach than
-- they have. The busted fake host (tests/spec/support/fakectx.lua) loads this
-- same file, so specs and the engine run one copy.
--
-- Stability: pinned panels run the strategy version they started with, and
-- that version does not include this file. So a released function never
-- changes what it returns; a different behaviour gets a new name and
-- `version` goes up. tests/unit/script_sandbox_test.c holds the file's
-- SHA-256 so no edit slips through unnoticed.
--
-- Every function is pure: it returns fresh tables and keeps no state.
local P = {}

P.version = 1

-- ---- values and lists ----------------------------------------------------

-- True for a number that is neither NaN nor infinite.
function P.finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

-- FNV-1a (32 bit) of a string: a cheap, well-mixed hash for deterministic
-- shuffles.
function P.fnv1a(s)
  local h = 2166136261
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end

-- True when the array `list` holds `v`.
function P.contains(list, v)
  for _, x in ipairs(list) do
    if x == v then
      return true
    end
  end
  return false
end

-- `s` without leading and trailing whitespace.
function P.trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- ---- experts -------------------------------------------------------------

-- The expert whose id is `id`, or nil.
function P.expert_by_id(experts, id)
  for _, e in ipairs(experts) do
    if e.id == id then
      return e
    end
  end
  return nil
end

-- True when the expert's role (lower-cased) contains one of `words` literally.
function P.role_has(expert, words)
  local role = type(expert.role) == "string" and expert.role:lower() or ""
  for _, w in ipairs(words) do
    if role:find(w, 1, true) then
      return true
    end
  end
  return false
end

-- The moderator: the expert with id `id` (nil or "" skips that), else the
-- first whose role mentions chair or moderator, else the first expert.
function P.moderator(experts, id)
  local chosen = id ~= nil and id ~= "" and P.expert_by_id(experts, id) or nil
  if chosen then
    return chosen
  end
  for _, e in ipairs(experts) do
    if P.role_has(e, { "chair", "moderat" }) then
      return e
    end
  end
  return experts[1]
end

-- `text` with every literal occurrence of the given strings (longer than one
-- byte) replaced by "a panellist", in list order.
function P.redact(text, list)
  for _, x in ipairs(list) do
    if type(x) == "string" and #x > 1 then
      text = text:gsub(x:gsub("%p", "%%%0"), "a panellist")
    end
  end
  return text
end

-- ---- single-choice ballots -----------------------------------------------

-- The JSON schema of a single-choice answer: position among `options`,
-- confidence in [0,1] and a reason.
function P.ballot_schema(options)
  return {
    type = "object",
    required = { "position", "confidence", "reason" },
    properties = {
      position = { type = "string", enum = options },
      confidence = { type = "number", minimum = 0, maximum = 1 },
      reason = { type = "string", maxLength = 600 },
    },
  }
end

-- A single choice read as every ballot shape, so whichever consensus
-- algorithm a panel picks has something to count: a truncated ranking, one
-- approval, and a distribution that moves from uniform (confidence 0) to
-- certain (confidence 1) on the choice. Fills in `b` and returns it.
function P.as_ballot(b, options)
  local k = #options
  local p = 1 / k + b.confidence * (1 - 1 / k)
  b.ranking, b.approvals, b.distribution = { b.position }, { b.position }, {}
  for _, o in ipairs(options) do
    b.distribution[o] = o == b.position and p or (1 - p) / math.max(k - 1, 1)
  end
  return b
end

-- The decoded data of an answer to an ask with a schema (a ctx:ask result),
-- or nil and why there is none.
function P.answer_data(result)
  if result.error then
    return nil, result.error
  end
  if type(result.data) ~= "table" then
    return nil, "answer was not valid JSON"
  end
  return result.data
end

-- The decoded data of a single-choice answer, or nil and why it cannot count.
function P.choice_of(result, options)
  local d, why = P.answer_data(result)
  if not d then
    return nil, why
  end
  if type(d.position) ~= "string" or not P.contains(options, d.position) then
    return nil, "answer failed validation: position is not one of the options"
  end
  if not P.finite(d.confidence) or d.confidence < 0 or d.confidence > 1 then
    return nil, "answer failed validation: confidence must be in [0,1]"
  end
  return d
end

-- The ballot of `expert` from a single-choice answer, or nil and why.
function P.ballot_of(result, expert, options)
  local d, why = P.choice_of(result, options)
  if not d then
    return nil, why
  end
  return P.as_ballot({ expert = expert.id, name = expert.name, position = d.position, confidence = d.confidence,
                       weight = expert.weight or 1, reason = type(d.reason) == "string" and d.reason or "" }, options)
end

-- The ballots of an ask_all over `experts`, in roster order; `excluded`
-- gets { expert, name, error } plus the fields of `extra` for every answer
-- that cannot count. Returns the ballots and the positions (see position_of).
function P.collect_ballots(results, experts, options, excluded, extra)
  local ballots, positions = {}, {}
  for k, r in ipairs(results) do
    local e = experts[k]
    local b, why = P.ballot_of(r, e, options)
    if b then
      ballots[#ballots + 1] = b
      positions[#positions + 1] = P.position_of(e, b)
    else
      local x = { expert = e.id, name = e.name, error = why }
      for key, v in pairs(extra or {}) do
        x[key] = v
      end
      excluded[#excluded + 1] = x
      positions[#positions + 1] = P.excluded_position(e, why)
    end
  end
  return ballots, positions
end

-- ---- result positions ----------------------------------------------------

-- The entry of result.positions for an expert who holds ballot `b`.
function P.position_of(expert, b)
  return { expert = expert.id, name = expert.name, position = b.position, confidence = b.confidence, reason = b.reason }
end

-- The entry of result.positions for an expert without a valid answer.
function P.excluded_position(expert, why)
  return { expert = expert.id, name = expert.name, excluded = true, error = why }
end

-- The final ballots and result.positions in roster order: `by_expert` maps
-- expert id to ballot; experts without one are listed as excluded with `why`.
function P.final_positions(experts, by_expert, why)
  local ballots, positions = {}, {}
  for _, e in ipairs(experts) do
    local b = by_expert[e.id]
    if b then
      ballots[#ballots + 1] = b
      positions[#positions + 1] = P.position_of(e, b)
    else
      positions[#positions + 1] = P.excluded_position(e, why)
    end
  end
  return ballots, positions
end

-- "- who: position (confidence 0.80) — reason", for prompts.
function P.position_line(who, b)
  return string.format("- %s: %s (confidence %.2f) — %s", who, b.position, b.confidence, b.reason)
end

-- ---- words ---------------------------------------------------------------

-- A set of the space-separated words of `text` (a stop-word list).
function P.word_list(text)
  local set = {}
  for w in text:gmatch("%S+") do
    set[w] = true
  end
  return set
end

-- Content words of `text`: ASCII lower-cased, split on anything that is not
-- a letter, digit or UTF-8 byte (so non-Latin words survive whole), without
-- the words of the set `stop`. Returns the set and its size.
function P.words(text, stop)
  local set, n = {}, 0
  for w in text:lower():gmatch("[%w\128-\255]+") do
    if not stop[w] and not set[w] then
      set[w] = true
      n = n + 1
    end
  end
  return set, n
end

-- Jaccard similarity of two word sets with their sizes; 1 when both are empty.
function P.jaccard(a, na, b, nb)
  if na == 0 and nb == 0 then
    return 1
  end
  local both = 0
  for w in pairs(a) do
    if b[w] then
      both = both + 1
    end
  end
  return both / (na + nb - both)
end

-- Jaccard similarity of the content words of two texts.
function P.similarity(a, b, stop)
  local sa, na = P.words(a, stop)
  local sb, nb = P.words(b, stop)
  return P.jaccard(sa, na, sb, nb)
end

-- ---- consensus: discrete positions ---------------------------------------

-- A position as shown (trimmed, whitespace collapsed) and as compared (also
-- ASCII lower-cased); nil for anything but a non-blank string.
function P.normalise(s)
  if type(s) ~= "string" then
    return nil
  end
  s = s:gsub("^%s+", ""):gsub("%s+$", ""):gsub("%s+", " ")
  if s == "" then
    return nil
  end
  return s, s:lower()
end

-- The set of normalised `options` and how many distinct ones it holds; nil
-- when `options` is not a non-empty array (every position counts then).
function P.option_set(options)
  if type(options) ~= "table" or #options == 0 then
    return nil, 0
  end
  local set, k = {}, 0
  for _, o in ipairs(options) do
    local _, key = P.normalise(o)
    if key and not set[key] then
      set[key] = true
      k = k + 1
    end
  end
  return set, k
end

-- A ballot's position (shown, key) when it counts under `allowed`, else nil.
function P.ballot_position(b, allowed)
  local shown, key = P.normalise(type(b) == "table" and b.position or nil)
  if key and (not allowed or allowed[key]) then
    return shown, key
  end
  return nil
end

-- Groups the counted ballots by position, in order of first appearance:
-- { key, position, count, confidence (summed, clamped, finite only) }.
-- Returns the groups and how many ballots were ignored.
function P.tally(ballots, allowed)
  local groups, order, ignored = {}, {}, 0
  for _, b in ipairs(ballots) do
    local shown, key = P.ballot_position(b, allowed)
    if key then
      local g = groups[key]
      if not g then
        g = { key = key, position = shown, count = 0, confidence = 0 }
        groups[key] = g
        order[#order + 1] = g
      end
      g.count = g.count + 1
      if P.finite(b.confidence) then
        g.confidence = g.confidence + math.max(0, math.min(1, b.confidence))
      end
    else
      ignored = ignored + 1
    end
  end
  return order, ignored
end

-- Sorts tally groups best first: most ballots, then the larger summed
-- confidence, then the smaller key in byte order. Returns `groups`.
function P.by_count(groups)
  table.sort(groups, function(a, b)
    if a.count ~= b.count then
      return a.count > b.count
    end
    if a.confidence ~= b.confidence then
      return a.confidence > b.confidence
    end
    return a.key < b.key
  end)
  return groups
end

-- The dissent of a plurality: every ballot that `classify(b, allowed)`
-- counts (returning shown, key) for another key than `winner_key`.
function P.dissent(ballots, winner_key, classify, allowed)
  local dissent = json.array()
  for _, b in ipairs(ballots) do
    local shown, key = classify(b, allowed)
    if key and key ~= winner_key then
      dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = shown, reason = b.reason }
    end
  end
  return dissent
end

-- ---- consensus: rankings -------------------------------------------------

-- The option names in play: `given` when it is a non-empty array, else every
-- name in the ballots' `field` arrays (with `nested`, also the names inside
-- tie groups such as { "a", { "b", "c" } }), first occurrence only. Returns
-- the list and the set of names.
function P.option_names(ballots, given, field, nested)
  local list, seen = {}, {}
  local function add(o)
    if type(o) == "string" and o ~= "" and not seen[o] then
      seen[o] = true
      list[#list + 1] = o
    end
  end
  if type(given) == "table" and #given > 0 then
    for _, o in ipairs(given) do
      add(o)
    end
    return list, seen
  end
  for _, b in ipairs(ballots) do
    if type(b) == "table" and type(b[field]) == "table" then
      for _, e in ipairs(b[field]) do
        if nested and type(e) == "table" then
          for _, o in ipairs(e) do
            add(o)
          end
        else
          add(e)
        end
      end
    end
  end
  return list, seen
end

-- A copy of `list` sorted best first by `better(a, b)`, ties to the
-- smaller name in byte order.
function P.sorted_by(list, better)
  local order = {}
  for i, o in ipairs(list) do
    order[i] = o
  end
  table.sort(order, function(a, b)
    local x = better(a, b)
    if x ~= nil then
      return x
    end
    return a < b
  end)
  return order
end

return P
