/* sandbox.h - (internal to script/) a Lua state that a hostile script cannot escape or hog.
 *
 * - memory: a counting allocator refuses to grow the heap past the ceiling;
 * - time: a count hook (every 1000 VM instructions) and a call hook (every function call,
 *   C functions and metamethods included, so C loops driven by metamethods are counted too)
 *   charge an instruction budget and check a running-time deadline;
 * - once a limit trips it stays tripped: the hooks raise again at once, and the sandbox's
 *   pcall/xpcall/load re-raise it, so no script can catch it and carry on;
 * - globals: a fresh environment per chunk with string (no dump, guarded patterns), table
 *   (guarded move), math, utf8, json, the read-only helper library `panel`
 *   (strategies/lib/panel.lua, embedded) and safe base functions; nothing reaches the host.
 * Only the files of script/ include this header. */
#ifndef AP_SCRIPT_SANDBOX_H
#define AP_SCRIPT_SANDBOX_H

#include "core/status.h"
#include "script/host.h"

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

typedef struct script_vm script_vm;

typedef void (*script_vm_log_fn)(void *ud, int level, const char *msg);

/* Creates a sandboxed state with the given limits; log receives print() output (may be NULL).
 * Caller frees. */
ap_status script_vm_new(const script_limits *lim, script_vm_log_fn log, void *log_ud,
                        script_vm **out, ap_err *err);

/* Drops the state and all its memory, running no script code; vm may be NULL. */
void script_vm_free(script_vm *vm);

/* The main thread of the state (borrowed). */
lua_State *script_vm_state(script_vm *vm);

/* The vm a state (or any of its coroutines) belongs to. */
script_vm *script_vm_of(lua_State *L);

/* Resets the instruction budget (a new node starts). */
void script_vm_budget_reset(script_vm *vm);

/* Marks the start and end of a slice of Lua execution, which runs on thread (the node's
 * coroutine or the state; borrowed); the running time of a node is the sum of its slices, so
 * waiting for LLM answers does not count. */
void script_vm_slice_begin(script_vm *vm, lua_State *thread);
void script_vm_slice_end(script_vm *vm);

/* Seeds math.random of all environments (so a replayed node draws the same numbers). Must
 * be called outside any running coroutine. */
ap_status script_vm_seed(script_vm *vm, uint64_t seed);

/* True once a limit tripped; msg (may be NULL) receives its message. */
bool script_vm_tripped(const script_vm *vm, char *msg, size_t cap);

/* Raises the tripped limit's error if one tripped (does not return then). */
void script_vm_check(lua_State *L);

/* Records that a protected call or resume on L ended with status: a memory error raised by
 * Lua (after its emergency collection) trips the memory limit. */
void script_vm_note(lua_State *L, int status);

/* Whether a limit tripped, the budgets checked now; never raises, for C code that holds
 * memory a Lua error would leak (it frees, then calls script_vm_check). */
bool script_vm_over_budget(lua_State *L);

/* lua_rawset(L, idx) for the host's writes into a table a script can reach (ctx, a result):
 * the table grows within a script's limit on keys outside the array part, as a script's own
 * store would. Pops key and value; raises the limit's error when it trips. */
void script_vm_rawset(lua_State *L, int idx);

/* lua_pcall(L, nargs, nresults, 0) of host code that builds tables of a script's data (JSON
 * decoded): they grow within the same limit as a script's own tables. */
int script_vm_pcall_keyed(lua_State *L, int nargs, int nresults);

/* Counts bytes the host allocates for the script outside the Lua heap against its memory
 * limit; false (after one full collection, and the limit then tripped) when they do not fit.
 * Never raises. script_vm_release gives them back. */
bool script_vm_reserve(lua_State *L, size_t bytes);
void script_vm_release(lua_State *L, size_t bytes);

/* Adds work done by C code (e.g. bytes scanned) to the budget; raises when exhausted. */
void script_vm_charge(lua_State *L, int64_t units);

/* Loads a text chunk (never bytecode) with a fresh sandbox environment and pushes the
 * function on thread L (the main thread or a running coroutine of vm); on failure pushes
 * nothing and writes "<chunkname>:<line>: <message>" to err. */
ap_status script_vm_load(script_vm *vm, lua_State *L, const char *chunkname, const char *src,
                         size_t len, ap_err *err);

/* Bytes of source and bytecode the process-wide cache of compiled chunks holds (bounded). */
size_t script_vm_code_cache_bytes(void);

/* Writes the error value at idx as text without running metamethods. */
void script_vm_error_text(lua_State *L, int idx, char *out, size_t cap);

/* Bytes of heap in use. */
size_t script_vm_memory(const script_vm *vm);

/* Bytes the state holds from the system allocator: its pool's chunks (free blocks included)
 * and its large blocks. At most its memory limit and one pool chunk. */
size_t script_vm_held(const script_vm *vm);

/* Pushes the text tostring gives scripts for the value at idx: Lua's, except that tables,
 * functions and userdata are named by a keyed mix of their address, never the address. May
 * raise (a __tostring runs); call it from Lua or protected code. */
void script_vm_tostring(lua_State *L, int idx);

#endif
