-- opinion_pool: pool the experts' probability distributions into one.
--
-- Reads ballot.distribution {option = probability}. Negative or non-finite
-- probabilities are dropped and each distribution is renormalised to sum 1;
-- one with nothing left is ignored. Options are opts.options when given
-- (other names dropped), else every name that appears.
-- Ballot weights: ballot.weight (finite, >= 0, default 1), normalised so they
-- sum to 1 over the counted ballots (all equal when every weight is 0).
--
-- opts.pooling "linear" (default): p(x) = sum_i w_i p_i(x)
--              "log":              p(x) proportional to prod_i p_i(x)^w_i
--   A log pool gives 0 to any option some expert rules out. If that leaves no
--   mass at all, every probability is floored at opts.epsilon (default 1e-6)
--   and the pool is computed again (details.smoothed = true).
--
-- level    agreement between the experts' distributions:
--          1 - JSD / ln(k), where JSD = H(sum_i w_i p_i) - sum_i w_i H(p_i)
--          is the weighted Jensen-Shannon divergence (natural logs) and k the
--          number of options. 1 when all distributions are identical; 0 when
--          k experts are each certain of a different option. k = 1 gives 1.
-- position the option with the highest pooled probability.
-- dissent  ballots whose own most likely option differs from position.
-- details  pooled {option = p}, pooling, jsd, k, n, ignored, smoothed.
-- Tie-break (pooled and per-ballot favourites): higher probability, then the
-- smaller name in byte order.
local finite = panel.finite

local function options_of(ballots, given)
  local named = {}
  for _, b in ipairs(ballots) do
    if type(b) == "table" and type(b.distribution) == "table" then
      local names = {}
      for o in pairs(b.distribution) do
        if type(o) == "string" then
          names[#names + 1] = o
        end
      end
      table.sort(names) -- pairs() order is not deterministic
      named[#named + 1] = { names = names }
    end
  end
  local list = panel.option_names(named, given, "names")
  table.sort(list)
  return list
end

local function normalised(dist, options)
  if type(dist) ~= "table" then
    return nil
  end
  local p, total = {}, 0
  for _, o in ipairs(options) do
    local v = dist[o]
    if finite(v) and v > 0 then
      p[o] = v
      total = total + v
    else
      p[o] = 0
    end
  end
  if not finite(total) or total <= 0 then
    return nil
  end
  for _, o in ipairs(options) do
    p[o] = p[o] / total
  end
  return p
end

local function argmax(p, options)
  local best, top = -1, nil
  for _, o in ipairs(options) do -- options are sorted, so ties keep the smaller name
    if p[o] > best then
      best, top = p[o], o
    end
  end
  return top
end

local function entropy(p, options)
  local h = 0
  for _, o in ipairs(options) do
    if p[o] > 0 then
      h = h - p[o] * math.log(p[o])
    end
  end
  return h
end

local function linear(dists, weights, options)
  local pooled = {}
  for _, o in ipairs(options) do
    local v = 0
    for i, p in ipairs(dists) do
      v = v + weights[i] * p[o]
    end
    pooled[o] = v
  end
  return pooled
end

local function logarithmic(dists, weights, options, floor)
  local pooled, total = {}, 0
  for _, o in ipairs(options) do
    local v = 1
    for i, p in ipairs(dists) do
      local x = math.max(p[o], floor)
      v = v * (x > 0 and x ^ weights[i] or (weights[i] > 0 and 0 or 1))
    end
    pooled[o] = v
    total = total + v
  end
  if total <= 0 then
    return nil
  end
  for _, o in ipairs(options) do
    pooled[o] = pooled[o] / total
  end
  return pooled
end

return function(ballots, opts)
  opts = type(opts) == "table" and opts or {}
  ballots = type(ballots) == "table" and ballots or {}
  local pooling = opts.pooling == "log" and "log" or "linear"
  local options = options_of(ballots, opts.options)
  local dists, weights, owners, ignored, wsum = {}, {}, {}, 0, 0
  for _, b in ipairs(ballots) do
    local p = type(b) == "table" and normalised(b.distribution, options) or nil
    local w = type(b) == "table" and b.weight
    if w == nil then
      w = 1
    end
    if p and finite(w) and w >= 0 then
      dists[#dists + 1] = p
      weights[#weights + 1] = math.min(w, 1e9)
      owners[#owners + 1] = b
      wsum = wsum + math.min(w, 1e9)
    else
      ignored = ignored + 1
    end
  end
  local n = #dists
  if n == 0 then
    return { algorithm = "opinion_pool", level = 0, position = nil, dissent = json.array(),
             details = { n = 0, ignored = ignored, pooling = pooling, pooled = {}, k = #options } }
  end
  for i = 1, n do
    weights[i] = wsum > 0 and weights[i] / wsum or 1 / n
  end
  local pooled, smoothed = nil, false
  if pooling == "log" then
    pooled = logarithmic(dists, weights, options, 0)
    if not pooled then
      local eps = finite(opts.epsilon) and opts.epsilon > 0 and opts.epsilon or 1e-6
      pooled, smoothed = logarithmic(dists, weights, options, eps), true
    end
  else
    pooled = linear(dists, weights, options)
  end
  local mixture = linear(dists, weights, options)
  local jsd = entropy(mixture, options)
  for i, p in ipairs(dists) do
    jsd = jsd - weights[i] * entropy(p, options)
  end
  local k = #options
  local level = k > 1 and 1 - math.max(0, jsd) / math.log(k) or 1
  local position = argmax(pooled, options)
  local dissent = json.array()
  for i, p in ipairs(dists) do
    local own = argmax(p, options)
    if own ~= position then
      local b = owners[i]
      dissent[#dissent + 1] = { expert = b.expert, name = b.name, position = own, reason = b.reason }
    end
  end
  return {
    algorithm = "opinion_pool",
    level = math.max(0, math.min(1, level)),
    position = position,
    dissent = dissent,
    details = { pooled = pooled, pooling = pooling, jsd = math.max(0, jsd), k = k, n = n, ignored = ignored,
                smoothed = smoothed },
  }
end
