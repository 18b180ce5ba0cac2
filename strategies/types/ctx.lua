---@meta
-- LuaLS annotations for Ask Panel scripts: the `ctx` API, the `json` and `panel` libraries and the shapes
-- of strategies, ballots and results. Not loaded by the engine; add this directory to
-- `workspace.library` (see docs/scripting.md) so editors complete and check ctx calls.

---@class Expert
---@field id string
---@field name string
---@field role string
---@field expertise string[]
---@field persona string
---@field model string|nil
---@field weight number

---@class Tenant
---@field slug string
---@field flags table<string, boolean>

---@class Usage
---@field prompt_tokens integer
---@field completion_tokens integer

---@class AskResult
---@field expert string the expert's id
---@field text string|nil the answer (nil when the turn failed)
---@field data table|nil the decoded JSON answer when opts.schema was given
---@field usage Usage|nil
---@field error string|nil set when the turn failed after retries

---@class AskOpts
---@field schema table|nil JSON Schema of the answer (as a Lua table)
---@field system string|nil extra instructions
---@field round number|nil tags the expert.message event
---@field max_tokens integer|nil
---@field temperature number|nil 0..2

---@class InputRequest
---@field prompt string
---@field kind string|nil
---@field schema table|nil

---@class Ballot
---@field expert string
---@field name string|nil
---@field position string|nil
---@field confidence number|nil 0..1
---@field weight number|nil
---@field ranking string[]|nil
---@field approvals string[]|nil
---@field estimate number|nil
---@field distribution table<string, number>|nil
---@field reason string|nil

---@class Dissent
---@field expert string
---@field position any
---@field reason string|nil

---@class ConsensusResult
---@field algorithm string
---@field level number agreement, finite, 0..1
---@field position any the majority or synthesised view, nil when none
---@field dissent Dissent[]
---@field details table

---@class Ctx
---@field question string
---@field params table<string, any> validated, defaults applied
---@field panel_id string
---@field experts Expert[]
---@field tenant Tenant
---@field consensus_algorithm string|nil
---@field state table owned by the strategy; saved at every checkpoint (JSON only)
local Ctx = {}

--- One LLM turn; the node yields until the answer arrives.
---@param expert Expert|string an expert or its id
---@param prompt string
---@param opts AskOpts|nil
---@return AskResult
function Ctx:ask(expert, prompt, opts) end

--- Concurrent turns, one per expert; results in the order of `experts`.
---@param experts (Expert|string)[]
---@param prompt string|fun(expert: Expert): string
---@param opts AskOpts|nil
---@return AskResult[]
function Ctx:ask_all(experts, prompt, opts) end

--- A durable event on the panel stream; returns its seq.
---@param type string lower-case dotted name, not a host type
---@param data table|nil
---@return integer
function Ctx:emit(type, data) end

--- Runs a consensus script (nil: ctx.consensus_algorithm) and emits a `consensus` event.
--- The consensus script cannot call ctx (not even one handed to it in ballots or opts).
---@param algorithm string|nil
---@param ballots Ballot[]
---@param opts table|nil
---@return ConsensusResult
function Ctx:consensus(algorithm, ballots, opts) end

--- Waits for a human; returns the input (text arrives as { text = ... }).
---@param request InputRequest|string
---@return table
function Ctx:await_input(request) end

--- Writes to the engine log with the tenant and panel ids.
---@param level "debug"|"info"|"warn"|"error"
---@param msg any
function Ctx:log(level, msg) end

--- Records the panel result; returns nothing (`return ctx:done({...})`). The node that calls it
--- ends the panel: naming a next node afterwards fails it.
---@param result table|nil
---@return nil
function Ctx:done(result) end

---@alias Node fun(ctx: Ctx): string|nil

---@class ParamDecl
---@field type "integer"|"number"|"string"|"boolean"|"array"
---@field default any
---@field min number|nil
---@field max number|nil
---@field enum string[]|nil
---@field min_items integer|nil
---@field max_items integer|nil
---@field required boolean|nil
---@field description string|nil
---@field above string|nil name of another integer or number param this one must be greater than

---@class Strategy
---@field name string must equal the file name
---@field description string|nil
---@field params table<string, ParamDecl>|nil
---@field consensus string|nil default consensus algorithm
---@field start string the first node
---@field nodes table<string, Node>

---@alias ConsensusFn fun(ballots: Ballot[], opts: table): ConsensusResult

---@class JsonLib
json = {}

--- Deterministic JSON (sorted keys); NaN/inf become null; at most 8 MiB.
---@param value any
---@return string
function json.encode(value) end

--- Parses JSON (at most 1 MiB, 64 levels); null becomes nil.
---@param text string
---@return any
function json.decode(text) end

--- Marks a table as a JSON array so that it encodes as [] even when empty.
---@param t table|nil
---@return table
function json.array(t) end

---@class Position
---@field expert string
---@field name string|nil
---@field position string|nil
---@field confidence number|nil
---@field reason string|nil
---@field excluded boolean|nil true when the expert gave no valid answer
---@field error string|nil why

---@class TallyGroup
---@field key string the normalised position (compared)
---@field position string the position as first spelled (shown)
---@field count integer ballots holding it
---@field confidence number summed finite confidences, each clamped to [0,1]

--- The helper library (strategies/lib/panel.lua), read-only, the same in every script.
--- Its functions are pure and never change behaviour once released (see docs/scripting.md §5).
---@class PanelLib
---@field version integer grows when functions are added
panel = {}

--- True for a number that is neither NaN nor infinite.
---@param x any
---@return boolean
function panel.finite(x) end

--- FNV-1a (32 bit) of a string, for deterministic shuffles.
---@param s string
---@return integer
function panel.fnv1a(s) end

--- True when the array holds v.
---@param list any[]
---@param v any
---@return boolean
function panel.contains(list, v) end

--- s without leading and trailing whitespace.
---@param s string
---@return string
function panel.trim(s) end

--- The expert with this id, or nil.
---@param experts Expert[]
---@param id string
---@return Expert|nil
function panel.expert_by_id(experts, id) end

--- True when the expert's role (lower-cased) contains one of the words literally.
---@param expert Expert
---@param words string[]
---@return boolean
function panel.role_has(expert, words) end

--- The expert with id `id` (nil or "" skips that), else the first whose role mentions
--- chair or moderator, else the first expert.
---@param experts Expert[]
---@param id string|nil
---@return Expert|nil
function panel.moderator(experts, id) end

--- text with each listed string (longer than one byte) replaced by "a panellist".
---@param text string
---@param list string[]
---@return string
function panel.redact(text, list) end

--- JSON schema of a single-choice answer: position (enum options), confidence 0..1, reason.
---@param options string[]
---@return table
function panel.ballot_schema(options) end

--- Fills in ranking, approvals and distribution of a single-choice ballot; returns b.
---@param b Ballot with position and confidence
---@param options string[]
---@return Ballot
function panel.as_ballot(b, options) end

--- The decoded data of an answer to an ask with a schema, or nil and why.
---@param result AskResult
---@return table|nil data
---@return string|nil why
function panel.answer_data(result) end

--- The data of a valid single-choice answer, or nil and why it cannot count.
---@param result AskResult
---@param options string[]
---@return table|nil data
---@return string|nil why
function panel.choice_of(result, options) end

--- The expert's ballot from a single-choice answer (see as_ballot), or nil and why.
---@param result AskResult
---@param expert Expert
---@param options string[]
---@return Ballot|nil
---@return string|nil why
function panel.ballot_of(result, expert, options) end

--- Ballots and positions of an ask_all over experts; appends { expert, name, error, ...extra }
--- to excluded for every answer that cannot count.
---@param results AskResult[]
---@param experts Expert[]
---@param options string[]
---@param excluded table[]
---@param extra table|nil
---@return Ballot[] ballots
---@return Position[] positions
function panel.collect_ballots(results, experts, options, excluded, extra) end

--- { expert, name, position, confidence, reason } for result.positions.
---@param expert Expert
---@param b Ballot
---@return Position
function panel.position_of(expert, b) end

--- { expert, name, excluded = true, error = why } for result.positions.
---@param expert Expert
---@param why string
---@return Position
function panel.excluded_position(expert, why) end

--- Ballots and positions in roster order from a map expert id -> ballot; experts without
--- a ballot are excluded with why.
---@param experts Expert[]
---@param by_expert table<string, Ballot>
---@param why string
---@return Ballot[] ballots
---@return Position[] positions
function panel.final_positions(experts, by_expert, why) end

--- "- who: position (confidence 0.80) — reason", for prompts.
---@param who string
---@param b Ballot
---@return string
function panel.position_line(who, b) end

--- A set of the space-separated words of text (e.g. a stop-word list).
---@param text string
---@return table<string, boolean>
function panel.word_list(text) end

--- Content words of text (lower-cased, letters, digits and UTF-8), minus stop words.
---@param text string
---@param stop table<string, boolean>
---@return table<string, boolean> set
---@return integer n
function panel.words(text, stop) end

--- Jaccard similarity of two word sets with their sizes; 1 when both are empty.
---@return number
function panel.jaccard(a, na, b, nb) end

--- Jaccard similarity of the content words of two texts.
---@param a string
---@param b string
---@param stop table<string, boolean>
---@return number
function panel.similarity(a, b, stop) end

--- A position as shown (trimmed, whitespace collapsed) and as compared (also ASCII
--- lower-cased); nil for anything but a non-blank string.
---@param s any
---@return string|nil shown
---@return string|nil key
function panel.normalise(s) end

--- The set of normalised options and its size; nil when options is not a non-empty array.
---@param options any
---@return table<string, boolean>|nil
---@return integer
function panel.option_set(options) end

--- A ballot's position (shown, key) when it counts under allowed, else nil.
---@param b any
---@param allowed table<string, boolean>|nil
---@return string|nil shown
---@return string|nil key
function panel.ballot_position(b, allowed) end

--- Counted ballots grouped by position in order of first appearance, and how many were ignored.
---@param ballots any[]
---@param allowed table<string, boolean>|nil
---@return TallyGroup[]
---@return integer ignored
function panel.tally(ballots, allowed) end

--- Sorts tally groups best first (count, summed confidence, key); returns them.
---@param groups TallyGroup[]
---@return TallyGroup[]
function panel.by_count(groups) end

--- Dissent of a plurality: ballots that classify(b, allowed) counts for another key.
---@param ballots any[]
---@param winner_key string
---@param classify fun(b: any, allowed: table|nil): string|nil, string|nil
---@param allowed table<string, boolean>|nil
---@return Dissent[]
function panel.dissent(ballots, winner_key, classify, allowed) end

--- Option names: given when non-empty, else the names in each ballot's `field` array (with
--- nested, also inside tie groups), first occurrence only. Returns the list and the set.
---@param ballots any[]
---@param given any
---@param field string
---@param nested boolean|nil
---@return string[]
---@return table<string, boolean>
function panel.option_names(ballots, given, field, nested) end

--- A copy of list sorted best first by better(a, b) (nil on a tie), ties by name.
---@param list string[]
---@param better fun(a: string, b: string): boolean|nil
---@return string[]
function panel.sorted_by(list, better) end
