-- Specs for strategies/consensus/*.lua: the shared result contract on edge
-- cases for every algorithm, then hand-computed values per algorithm.
local fakectx = dofile("tests/spec/support/fakectx.lua")

local ALGORITHMS = { "majority", "weighted", "borda", "approval", "delphi", "kendall", "opinion_pool", "entropy" }

local function run(name, ballots, opts)
  return fakectx.consensus(name, ballots, opts)
end

local function near(expected, actual, eps)
  assert.is_number(actual)
  assert(math.abs(expected - actual) <= (eps or 1e-9), string.format("expected %.12g, got %.12g", expected, actual))
end

local function finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function check_shape(name, r)
  assert.is_table(r)
  assert.are.equal(name, r.algorithm)
  assert(finite(r.level), name .. ": level must be finite, got " .. tostring(r.level))
  assert(r.level >= 0 and r.level <= 1, name .. ": level out of [0,1]: " .. tostring(r.level))
  assert.is_table(r.dissent)
  assert.is_table(r.details)
  fakectx.json.encode(r) -- must be JSON-serialisable (no NaN/inf anywhere)
end

-- A ballot carrying every field any algorithm reads, for a discrete choice.
local function full(expert, choice, others, estimate, conf)
  local ranking = { choice }
  for _, o in ipairs(others) do
    ranking[#ranking + 1] = o
  end
  local dist = {}
  for _, o in ipairs(ranking) do
    dist[o] = o == choice and 0.8 or 0.2 / #others
  end
  return { expert = expert, name = expert, position = choice, confidence = conf or 0.7, weight = 1,
           ranking = ranking, approvals = { choice }, estimate = estimate, distribution = dist,
           reason = "because " .. choice }
end

describe("every consensus algorithm", function()
  for _, name in ipairs(ALGORITHMS) do
    describe(name, function()
      it("returns level 0 and no position for empty ballots", function()
        local r = run(name, {}, {})
        check_shape(name, r)
        assert.are.equal(0, r.level)
        assert.is_nil(r.position)
        assert.are.same({}, r.dissent)
      end)

      it("tolerates nil ballots and nil opts", function()
        check_shape(name, run(name, nil, nil))
      end)

      it("ignores junk ballots and counts them in details.ignored", function()
        local r = run(name, { 42, "x", {}, { position = 7, ranking = "a", approvals = 3, estimate = "9",
                                                distribution = { a = "x" } } }, {})
        check_shape(name, r)
        assert.are.equal(0, r.level)
        assert.are.equal(4, r.details.ignored)
      end)

      it("gives a position for a single ballot", function()
        local r = run(name, { full("e1", "a", { "b", "c" }, 40) }, {})
        check_shape(name, r)
        assert.is_not_nil(r.position)
        assert.are.same({}, r.dissent)
      end)

      it("reaches level 1 when all agree", function()
        local ballots = {}
        for i = 1, 4 do
          ballots[i] = full("e" .. i, "a", { "b", "c" }, 40)
        end
        local r = run(name, ballots, {})
        check_shape(name, r)
        near(1, r.level)
        assert.are.same({}, r.dissent)
      end)

      it("stays below 1 and names dissent on a perfect split", function()
        local r = run(name, { full("e1", "a", { "b" }, 0), full("e2", "b", { "a" }, 100) }, { scale = 100 })
        check_shape(name, r)
        assert(r.level < 1, name .. " level on a split: " .. r.level)
        -- delphi names both ends (each lies outside the IQR); the others the loser
        assert.are.equal(name == "delphi" and 2 or 1, #r.dissent)
      end)

      it("ignores NaN and infinite numbers", function()
        local b1, b2, b3 = full("e1", "a", { "b" }, 0 / 0, 0 / 0), full("e2", "a", { "b" }, math.huge, math.huge),
          full("e3", "a", { "b" }, 30, 0.6)
        b1.distribution = { a = 0 / 0, b = math.huge }
        b2.weight = math.huge
        local r = run(name, { b1, b2, b3 }, {})
        check_shape(name, r)
        assert.is_not_nil(r.position)
      end)

      it("is independent of ballot order", function()
        local a = { full("e1", "a", { "b", "c" }, 10), full("e2", "b", { "a", "c" }, 20), full("e3", "c", { "a", "b" }, 30) }
        local b = { a[3], a[1], a[2] }
        local ra, rb = run(name, a, {}), run(name, b, {})
        assert.are.same(ra.position, rb.position)
        near(ra.level, rb.level, 1e-12)
      end)

      it("handles unicode positions", function()
        local ballots = { full("e1", "承認", { "却下" }, 1), full("e2", "承認", { "却下" }, 1), full("e3", "却下", { "承認" }, 9) }
        local r = run(name, ballots, {})
        check_shape(name, r)
        if name ~= "delphi" then
          assert.are.equal("承認", r.position)
        end
      end)
    end)
  end
end)

describe("majority", function()
  it("counts the plurality and reports the share", function()
    local r = run("majority", { { expert = "a", position = "go" }, { expert = "b", position = "go" },
                                { expert = "c", position = "stop", reason = "too risky" } })
    assert.are.equal("go", r.position)
    near(2 / 3, r.level)
    assert.are.same({ { expert = "c", position = "stop", reason = "too risky" } }, r.dissent)
    assert.are.same({ go = 2, stop = 1 }, r.details.counts)
  end)

  it("normalises case and whitespace but keeps the first spelling", function()
    local r = run("majority", { { position = " Go  Ahead" }, { position = "go ahead" }, { position = "stop" } })
    assert.are.equal("Go Ahead", r.position)
    assert.are.equal(2, r.details.votes)
  end)

  it("breaks ties by summed confidence, then by name", function()
    local r = run("majority", { { position = "b", confidence = 0.9 }, { position = "a", confidence = 0.5 } })
    assert.are.equal("b", r.position)
    assert.are.same({ "b", "a" }, r.details.tie)
    r = run("majority", { { position = "b", confidence = 0.5 }, { position = "a", confidence = 0.5 } })
    assert.are.equal("a", r.position)
    near(0.5, r.level)
  end)

  it("restricts to opts.options", function()
    local r = run("majority", { { position = "yes" }, { position = "maybe" }, { position = "maybe" } }, { options = { "yes", "no" } })
    assert.are.equal("yes", r.position)
    assert.are.equal(2, r.details.ignored)
    near(1, r.level)
  end)
end)

describe("weighted", function()
  it("scores confidence x weight", function()
    -- a: 0.9*1 = 0.9; b: 0.5*2 + 0.2*1 = 1.2; total 2.1; level 1.2/2.1
    local r = run("weighted", { { expert = "x", position = "a", confidence = 0.9, weight = 1 },
                                { expert = "y", position = "b", confidence = 0.5, weight = 2 },
                                { expert = "z", position = "b", confidence = 0.2 } })
    assert.are.equal("b", r.position)
    near(1.2 / 2.1, r.level)
    near(0.9, r.details.scores.a)
    assert.are.equal(1, #r.dissent)
  end)

  it("ignores ballots without a usable confidence or weight", function()
    local r = run("weighted", { { position = "a" }, { position = "a", confidence = 0 / 0 },
                                { position = "a", confidence = 0.5, weight = -1 }, { position = "b", confidence = 0.4 } })
    assert.are.equal("b", r.position)
    assert.are.equal(3, r.details.ignored)
  end)

  it("gives level 0 when every score is zero", function()
    local r = run("weighted", { { position = "a", confidence = 0 }, { position = "b", confidence = 0.7, weight = 0 } })
    assert.are.equal(0, r.level)
    assert.are.equal("a", r.position) -- equal scores and counts: smaller name
  end)
end)

describe("borda", function()
  it("matches a hand-computed count", function()
    -- m = 3 options: first 2 points, second 1, third 0.
    --   a>b>c: a2 b1 c0 | b>a>c: b2 a1 | c>a>b: c2 a1 | a>c>b: a2 c1
    --   a = 2+1+1+2 = 6, b = 1+2+0+0 = 3, c = 0+0+2+1 = 3
    -- level = 6 / (n(m-1)) = 6 / (4*2) = 0.75
    -- b and c tie on 3 points and 1 first place each: smaller name first.
    local r = run("borda", {
      { expert = "1", ranking = { "a", "b", "c" } }, { expert = "2", ranking = { "b", "a", "c" } },
      { expert = "3", ranking = { "c", "a", "b" } }, { expert = "4", ranking = { "a", "c", "b" } } })
    assert.are.same({ a = 6, b = 3, c = 3 }, r.details.scores)
    assert.are.same({ "a", "b", "c" }, r.details.order)
    assert.are.equal("a", r.position)
    near(0.75, r.level)
    assert.are.equal(2, #r.dissent)
  end)

  it("gives unranked options 0 points and skips repeats and unknowns", function()
    -- options a,b,c (m = 3): {b} -> b2; {a,a,zz,c} with options given -> a2 c1
    local r = run("borda", { { ranking = { "b" } }, { ranking = { "a", "a", "zz", "c" } } }, { options = { "a", "b", "c" } })
    assert.are.same({ a = 2, b = 2, c = 1 }, r.details.scores)
    assert.are.equal("a", r.position) -- tie on points and first places: smaller name
  end)

  it("breaks point ties by first places", function()
    -- x>y>z: x2 y1 | y>z>x: y2 z1 | x>z>y: x2 z1  =>  x4 y3 z2 ... and
    -- z>y>x: z2 y1 makes y4: x and y tie on 4, x has 2 first places, y 1.
    local r = run("borda", { { ranking = { "x", "y", "z" } }, { ranking = { "y", "z", "x" } },
                             { ranking = { "x", "z", "y" } }, { ranking = { "z", "y", "x" } } })
    assert.are.equal(4, r.details.scores.x)
    assert.are.equal(4, r.details.scores.y)
    assert.are.equal("x", r.position)
  end)
end)

describe("approval", function()
  it("counts approvals", function()
    -- a: 1, b: 3, c: 1 over n = 4 ballots (one approves nothing) -> level 3/4
    local r = run("approval", { { expert = "1", approvals = { "a", "b" } }, { expert = "2", approvals = { "b", "b" } },
                                { expert = "3", approvals = { "b", "c" } }, { expert = "4", approvals = {} } })
    assert.are.equal("b", r.position)
    near(0.75, r.level)
    assert.are.same({ a = 1, b = 3, c = 1 }, r.details.approvals)
    assert.are.equal(1, #r.dissent)
    assert.are.equal("4", r.dissent[1].expert)
  end)

  it("lists unapproved options with 0 when opts.options is given", function()
    local r = run("approval", { { approvals = { "a" } } }, { options = { "a", "b" } })
    assert.are.same({ a = 1, b = 0 }, r.details.approvals)
    assert.are.same({ "a", "b" }, r.details.order)
  end)

  it("has no position when nothing is approved", function()
    local r = run("approval", { { approvals = {} }, { approvals = {} } })
    assert.is_nil(r.position)
    assert.are.equal(0, r.level)
  end)
end)

describe("delphi", function()
  it("matches hand-computed quartiles", function()
    -- sorted 10 20 30 40; h = 1 + 3p: median h=2.5 -> 25; q1 h=1.75 -> 17.5;
    -- q3 h=3.25 -> 32.5; IQR 15; default scale |median| = 25 -> level 1 - 15/25 = 0.4
    local ballots = {}
    for i, x in ipairs({ 30, 10, 40, 20 }) do
      ballots[i] = { expert = "e" .. i, estimate = x, reason = "r" .. i }
    end
    local r = run("delphi", ballots)
    near(25, r.details.median)
    near(17.5, r.details.q1)
    near(32.5, r.details.q3)
    near(15, r.details.iqr)
    near(25, r.details.mean)
    near(0.4, r.level)
    assert.are.equal(25, r.position)
    -- 10 and 40 lie outside [17.5, 32.5]
    assert.are.equal(2, #r.dissent)
    -- with the answer range as the scale: 1 - 15/100
    near(0.85, run("delphi", ballots, { scale = 100 }).level)
  end)

  it("reports stability against the previous round", function()
    local prev = run("delphi", { { estimate = 40 }, { estimate = 60 } }, { scale = 100 })
    -- 40,60: q1 45, q3 55, IQR 10. 45,55: q1 47.5, q3 52.5, IQR 5: a change of
    -- 5% of the scale, more than a 1% tolerance, within the default 5%.
    local moved = run("delphi", { { estimate = 45 }, { estimate = 55 } }, { scale = 100, previous = prev, tolerance = 0.01 })
    assert.is_false(moved.details.stable)
    near(-5, moved.details.iqr_change)
    assert.is_true(run("delphi", { { estimate = 45 }, { estimate = 55 } }, { scale = 100, previous = prev }).details.stable)
    -- median 50 -> 50.5, IQR unchanged: within 1%
    local same = run("delphi", { { estimate = 45.5 }, { estimate = 55.5 } }, { scale = 100, previous = moved, tolerance = 0.01 })
    assert.is_true(same.details.stable)
    near(0.5, same.details.median_change)
  end)

  it("uses scale 1 around a zero median so the level stays finite", function()
    local r = run("delphi", { { estimate = -1 }, { estimate = 0 }, { estimate = 1 } })
    near(1, r.details.scale)
    near(0, r.level) -- IQR 1 over scale 1
  end)

  it("does not overflow on huge estimates", function()
    local r = run("delphi", { { estimate = 1.5e308 }, { estimate = 1.6e308 } })
    assert(finite(r.details.mean))
  end)
end)

describe("kendall", function()
  it("matches a hand-computed W without ties", function()
    -- ranks a b c d: R1 1 2 3 4 | R2 1 3 2 4 | R3 2 1 3 4
    -- sums 4 6 8 12; mean m(n+1)/2 = 3*5/2 = 7.5
    -- S = 3.5^2 + 1.5^2 + 0.5^2 + 4.5^2 = 12.25 + 2.25 + 0.25 + 20.25 = 35
    -- W = 12 S / (m^2 (n^3 - n)) = 420 / (9 * 60) = 7/9
    local r = run("kendall", { { ranking = { "a", "b", "c", "d" } }, { ranking = { "a", "c", "b", "d" } },
                               { ranking = { "b", "a", "c", "d" } } })
    near(7 / 9, r.level)
    near(7 / 9, r.details.w)
    near(3 * 3 * 7 / 9, r.details.chi_square) -- m (n-1) W
    assert.are.same({ a = 4, b = 6, c = 8, d = 12 }, r.details.rank_sums)
    assert.are.equal("a", r.position)
    assert.are.equal(1, #r.dissent) -- the third ranker put b first
  end)

  it("applies the tie correction", function()
    -- R1: a, {b c} -> 1, 2.5, 2.5 (T1 = 2^3 - 2 = 6); R2: a b c -> 1 2 3
    -- sums 2, 4.5, 5.5; mean 2*4/2 = 4; S = 4 + 0.25 + 2.25 = 6.5
    -- W = 12*6.5 / (4*(27-3) - 2*6) = 78/84 = 13/14
    local r = run("kendall", { { ranking = { "a", { "b", "c" } } }, { ranking = { "a", "b", "c" } } })
    near(13 / 14, r.level)
  end)

  it("ties unranked items at the bottom", function()
    -- R1 ranks only a: a1, {b,c} 2.5 each — the same as the explicit tie above.
    local r = run("kendall", { { ranking = { "a" } }, { ranking = { "a", "b", "c" } } }, { options = { "a", "b", "c" } })
    near(13 / 14, r.level)
  end)

  it("is 0 for opposite rankings and when everything ties", function()
    near(0, run("kendall", { { ranking = { "a", "b" } }, { ranking = { "b", "a" } } }).level)
    near(0, run("kendall", { { ranking = { { "a", "b" } } }, { ranking = { { "a", "b" } } } }).level)
  end)
end)

describe("opinion_pool", function()
  local two = {
    { expert = "e1", distribution = { yes = 0.8, no = 0.2 } },
    { expert = "e2", distribution = { yes = 0.4, no = 0.6 } },
  }

  it("pools linearly", function()
    -- p(yes) = (0.8 + 0.4)/2 = 0.6, p(no) = 0.4
    local r = run("opinion_pool", two)
    near(0.6, r.details.pooled.yes)
    near(0.4, r.details.pooled.no)
    assert.are.equal("yes", r.position)
    assert.are.equal("e2", r.dissent[1].expert)
  end)

  it("pools logarithmically", function()
    -- yes ~ sqrt(0.8*0.4) = sqrt(0.32) = 0.565685; no ~ sqrt(0.2*0.6) = sqrt(0.12) = 0.346410
    -- normalised: yes = 0.565685/0.912096 = 0.620204, no = 0.379796
    local r = run("opinion_pool", two, { pooling = "log" })
    near(math.sqrt(0.32) / (math.sqrt(0.32) + math.sqrt(0.12)), r.details.pooled.yes)
    near(0.620204, r.details.pooled.yes, 1e-6)
    assert.are.equal("log", r.details.pooling)
  end)

  it("measures agreement as 1 - JSD / ln k", function()
    -- H(0.6,0.4) = 0.673012; H(0.8,0.2) = 0.500402; H(0.4,0.6) = 0.673012
    -- JSD = 0.673012 - (0.500402 + 0.673012)/2 = 0.086305; level = 1 - 0.086305/ln 2 = 0.875488
    local r = run("opinion_pool", two)
    near(0.086305, r.details.jsd, 1e-6)
    near(0.875488, r.level, 1e-6)
  end)

  it("weights ballots", function()
    -- weights 3:1 -> 0.75, 0.25: p(yes) = 0.75*0.8 + 0.25*0.4 = 0.7
    local r = run("opinion_pool", { { distribution = { yes = 0.8, no = 0.2 }, weight = 3 },
                                    { distribution = { yes = 0.4, no = 0.6 }, weight = 1 } })
    near(0.7, r.details.pooled.yes)
  end)

  it("renormalises distributions that do not sum to 1", function()
    local r = run("opinion_pool", { { distribution = { yes = 8, no = 2 } } })
    near(0.8, r.details.pooled.yes)
  end)

  it("smooths a log pool that rules everything out", function()
    -- certain and opposite: every product is 0 -> epsilon floor, symmetric -> 0.5 each,
    -- tie broken towards the smaller name; mixture (0.5,0.5): JSD = ln 2 -> level 0
    local r = run("opinion_pool", { { distribution = { yes = 1, no = 0 } }, { distribution = { yes = 0, no = 1 } } },
      { pooling = "log" })
    assert.is_true(r.details.smoothed)
    near(0.5, r.details.pooled.yes)
    assert.are.equal("no", r.position)
    near(0, r.level)
  end)
end)

describe("entropy", function()
  it("matches a hand-computed level", function()
    -- a a b c: p = 1/2, 1/4, 1/4; H = 1.5 ln 2; K = n = 4, ln 4 = 2 ln 2 -> level 1 - 0.75 = 0.25
    local r = run("entropy", { { position = "a" }, { position = "a" }, { position = "b" }, { position = "c" } })
    near(0.25, r.level)
    near(1.5 * math.log(2), r.details.entropy)
    assert.are.equal("a", r.position)
    assert.are.equal(2, #r.dissent)
  end)

  it("measures against the option count when options are given", function()
    -- a a b over 3 options: H = -(2/3 ln 2/3 + 1/3 ln 1/3) = 0.636514; ln 3 = 1.098612 -> 0.420620
    local r = run("entropy", { { position = "a" }, { position = "a" }, { position = "b" } }, { options = { "a", "b", "c" } })
    near(1 - 0.636514 / 1.098612, r.level, 1e-6)
  end)

  it("is 0 when every ballot differs", function()
    near(0, run("entropy", { { position = "a" }, { position = "b" }, { position = "c" } }).level)
  end)
end)
