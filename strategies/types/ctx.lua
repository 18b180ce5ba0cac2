---@meta
-- LuaLS annotations for Ask Panel scripts: the `ctx` API, the `json` library and the shapes
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

--- Records the panel result; returns nothing (`return ctx:done({...})`).
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
