#include "script/sandbox.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/embed.h"
#include "core/ids.h"
#include "core/log.h"
#include "script/json.h"

#include <ctype.h>
#include <pthread.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_COUNT 1000         /* VM instructions between count hooks */
#define FINE_STRING (64 * 1024) /* a string past this makes the hook count each instruction */
#define PATTERN_MAX_COST 1e8    /* worst-case character tests a pattern call may risk (~1 s) */
#define TABLE_MOVE_MAX (1 << 24)
#define PATTERN_MAX_REPEATS 32 /* repeated items (*, -, +, %b, back-references) per pattern */
#define PATTERN_MAX_SET 1024   /* bytes of one [set] */
/* The collector's pause (percent of the heap live after a cycle that it waits for). A panel's
 * state is short-lived and mostly its setup, which stays live until the panel ends, so at
 * Lua's 200 the collector traced the same setup objects cycle after cycle. The memory limit
 * is unchanged: an allocation past it still runs a full collection before it fails. */
#define GC_PAUSE 400
#define CHECK_INSTRUCTIONS 20000000 /* per node while a script is checked */
#define CHECK_TIMEOUT_MS 1000

enum trip { TRIP_NONE = 0, TRIP_MEMORY, TRIP_INSTRUCTIONS, TRIP_TIME, TRIP_TABLE, TRIP_COUNT };

/* Lua 5.4 hashes an integer key by its value modulo the hash part's size less one, so keys
 * that are multiples of 2^K-1 all share one chain once a table has 2^K nodes (floats
 * 1 + k*2^-52 share one at any size), and a rehash reinserts every one of them along that
 * chain: n^2/2 steps inside one instruction, which no hook interrupts and no allocation limits
 * (2^19 such keys held a runner thread ~60 s). The sandbox cannot see collisions, but it sees
 * each resize's node array: one new block of exactly 2^k nodes. Refusing those past
 * TABLE_NODES_MAX bounds the worst rehash, which is one at the full size (a key removed, a new
 * one added: review, 2^17 keys 14.5 s; 2^16 ~3.6 s on the bench VM), at the price of a limit
 * on keys outside a table's array part 1..n, which has no such cost and stays unlimited. */
#define TABLE_NODES_MAX (1u << 16)
/* Below the limit, rehashes still cost up to its ~3.6 s, and a loop can make one per store
 * (a key removed, another added: review, ~200 between two count hooks, minutes; 512 long
 * string keys whose seeded hashes a script found to collide by probing: 130 ms a rehash, 86 s
 * on a 2 s budget): the budget is checked at every rehash's node array (those of 16 nodes or
 * more: smaller ones come from the pool). And a lookup or `#` walks a chain: from BIG_NODES
 * nodes on, the state is checked at every instruction (as after a large string, fine_hook). */
#define BIG_NODES (1u << 15)
#define MARKS_MAX 64        /* table functions nested through metamethods */
#define LOOP_CHECK_EVERY 64 /* elements or keys of a C loop between two budget checks */
#define PROBE_NODES 1024

/* The size of one node of a table's hash part in the linked Lua (measured, see
 * measured_node_size); 0 where it is a power of two, which array parts share. */
static size_t node_size;

/* The nodes of a hash part whose node array is a new block of n bytes, or 0 when n is no
 * such size. */
static size_t hash_part_nodes(size_t n)
{
    if (node_size == 0 || n % node_size != 0)
        return 0;
    size_t nodes = n / node_size;
    return (nodes & (nodes - 1)) == 0 ? nodes : 0;
}

/* Small blocks of a state come from its own pool: Lua makes thousands of small allocations
 * per panel, and malloc/free for each (with the arenas growing and shrinking under two
 * runner threads) was ~10 % of the engine's CPU. A pool belongs to one state only and is
 * released whole when the state is dropped. */
/* Size classes are multiples of 16, so every block stays 16-aligned: steps of 16 up to 256,
 * of 64 up to 1 KiB and of 256 up to 2 KiB. A state's tables, stack, string table and
 * bytecode arrays take ~30 blocks of 256 B .. 2 KiB each; from malloc they cost ~560
 * instructions apiece. */
#define POOL_STEP 16
#define POOL_FINE_MAX 256
#define POOL_MID_STEP 64
#define POOL_MID_MAX 1024
#define POOL_WIDE_STEP 256
#define POOL_SMALL_MAX 2048
#define POOL_MID_FIRST (POOL_FINE_MAX / POOL_STEP)
#define POOL_WIDE_FIRST (POOL_MID_FIRST + (POOL_MID_MAX - POOL_FINE_MAX) / POOL_MID_STEP)
#define POOL_CLASSES (POOL_WIDE_FIRST + (POOL_SMALL_MAX - POOL_MID_MAX) / POOL_WIDE_STEP)
#define POOL_CHUNK (16 * 1024)
#define POOL_HEADER 16 /* the chunk list link, padded to keep blocks aligned */

typedef struct pool_block {
    struct pool_block *next;
} pool_block;

/* Larger blocks come from malloc with a header that links them into their state's list, so
 * a state is released by freeing its list and its pool, without walking its objects. */
typedef struct big_block {
    struct big_block *prev, *next;
} big_block;
#define BIG_HEADER 16 /* sizeof (big_block), and keeps blocks 16-aligned */
_Static_assert(sizeof(big_block) <= BIG_HEADER, "big_block header too large");

struct script_vm {
    lua_State *L;
    size_t mem_used;   /* bytes the state asked for, small blocks rounded to their class */
    size_t mem_limit;  /* bounds mem_used, and what the state holds: pool_bytes + big_bytes */
    size_t pool_bytes; /* chunks taken from malloc */
    size_t big_bytes;  /* payload of the large blocks */
    void *chunks;      /* chunk list, linked through each chunk's first word */
    char *bump, *bump_end;
    pool_block *free_list[POOL_CLASSES];
    big_block big; /* the list of large blocks (a ring through this sentinel) */
    int64_t instr_used;
    int64_t instr_limit;
    int64_t timeout_us;
    int64_t slice_start_us; /* 0 outside a slice */
    int64_t run_us;         /* running time of the node before this slice */
    int64_t deadline_us;    /* 0 outside a slice */
    int tripped;
    bool built;        /* the state is complete: from now on a refused allocation trips */
    lua_State *thread; /* what the slice runs (the node's coroutine or the state), or NULL */
    bool fine;         /* hooks count every instruction from now on (see vm_alloc) */
    bool host_keys;    /* in lua_load or script_vm_rawset: tables grow by a script's keys */
    /* The frames (CallInfo, compared only) of the C functions running that add keys of the
     * script's choosing to a table, innermost last (see keyed_call). */
    const void *marks[MARKS_MAX];
    int nmarks;
    char trip_msg[TRIP_COUNT][160];
    script_vm_log_fn log;
    void *log_ud;
};

/* Registry keys. */
/* The real string library, what ("").method reaches through the string metatable: cleaned in
 * place once per state and never handed to a script (each environment gets a copy). */
static const char strlib_key = 's';
/* math.random and math.randomseed of the state's first environment, which every later
 * environment shares: one generator per state, seeded before every node. */
static const char rand_key = 'r';
static const char lib_meta_key = 'm'; /* metatable of the per-chunk `panel` proxies */
static const char lib_key = 'l';      /* the library table, once loaded */
/* The metamethods in force of a script's metatable (see sb_setmetatable): weak-valued
 * original -> in-force table, and the key under which an in-force table holds its original. */
static const char in_force_key = 'f';
static const char original_key = 'o';
/* The limit messages, prebuilt (a trip must not need memory), indexed by enum trip. One
 * table, not a reference each: every luaL_ref grew and rehashed the registry. */
static const char trip_key = 't';

/* The helper library every chunk sees as `panel`, compiled into the binary. */
#define PANEL_LIB_PATH "strategies/lib/panel.lua"
#define PANEL_LIB_CHUNK "=lib/panel.lua"

/* ---- limits --------------------------------------------------------------------------- */

static size_t pool_class(size_t size)
{
    if (size <= POOL_FINE_MAX)
        return (size - 1) / POOL_STEP;
    if (size <= POOL_MID_MAX)
        return POOL_MID_FIRST + (size - POOL_FINE_MAX - 1) / POOL_MID_STEP;
    return POOL_WIDE_FIRST + (size - POOL_MID_MAX - 1) / POOL_WIDE_STEP;
}

static size_t class_size(size_t c)
{
    if (c < POOL_MID_FIRST)
        return (c + 1) * POOL_STEP;
    if (c < POOL_WIDE_FIRST)
        return POOL_FINE_MAX + (c - POOL_MID_FIRST + 1) * POOL_MID_STEP;
    return POOL_MID_MAX + (c - POOL_WIDE_FIRST + 1) * POOL_WIDE_STEP;
}

/* A block of class c (size bytes) from what the pool already holds: a freed one, or the rest
 * of the current chunk; NULL when neither has one. */
static inline void *pool_take(script_vm *vm, size_t c, size_t size)
{
    pool_block *b = vm->free_list[c];
    if (b != NULL) {
        vm->free_list[c] = b->next;
        return b;
    }
    if ((size_t)(vm->bump_end - vm->bump) < size)
        return NULL;
    void *p = vm->bump;
    vm->bump += size;
    return p;
}

/* Whether the state may take grow more bytes from malloc, counting its pool's chunks (kept
 * for reuse once freed) and its large blocks together, so that a script cannot fill the pool,
 * free it and then fill as much again in large blocks (twice the limit in RSS). */
static bool may_hold(const script_vm *vm, size_t grow)
{
    return vm->pool_bytes + vm->big_bytes + grow <= vm->mem_limit;
}

/* A block of class c, or NULL when the pool may not grow (may_hold). */
static void *pool_get(script_vm *vm, size_t c)
{
    size_t size = class_size(c);
    void *p = pool_take(vm, c, size);
    if (p != NULL)
        return p;
    if (!may_hold(vm, POOL_CHUNK))
        return NULL;
    char *chunk = malloc(POOL_CHUNK);
    if (chunk == NULL)
        return NULL;
    *(void **)chunk = vm->chunks;
    vm->chunks = chunk;
    vm->pool_bytes += POOL_CHUNK;
    vm->bump = chunk + POOL_HEADER;
    vm->bump_end = chunk + POOL_CHUNK;
    return pool_take(vm, c, size);
}

static void pool_put(script_vm *vm, void *p, size_t c)
{
    pool_block *b = p;
    b->next = vm->free_list[c];
    vm->free_list[c] = b;
}

/* Frees the chunks; only once the state is dropped. */
static void pool_release(script_vm *vm)
{
    while (vm->chunks != NULL) {
        void *next = *(void **)vm->chunks;
        free(vm->chunks);
        vm->chunks = next;
    }
}

static big_block *big_of(void *p)
{
    return (big_block *)(void *)((char *)p - BIG_HEADER);
}

static void *big_alloc(script_vm *vm, size_t n)
{
    big_block *b = malloc(BIG_HEADER + n);
    if (b == NULL)
        return NULL;
    vm->big_bytes += n;
    b->prev = &vm->big;
    b->next = vm->big.next;
    vm->big.next->prev = b;
    vm->big.next = b;
    return (char *)b + BIG_HEADER;
}

static void big_free(script_vm *vm, void *p, size_t n)
{
    vm->big_bytes -= n;
    big_block *b = big_of(p);
    b->prev->next = b->next;
    b->next->prev = b->prev;
    free(b);
}

static void *big_realloc(script_vm *vm, void *p, size_t old, size_t n)
{
    big_block *b = big_of(p);
    big_block *prev = b->prev, *next = b->next;
    big_block *moved = realloc(b, BIG_HEADER + n);
    if (moved == NULL)
        return NULL; /* b stays as it was, linked */
    vm->big_bytes = vm->big_bytes - old + n;
    prev->next = moved;
    next->prev = moved;
    return (char *)moved + BIG_HEADER;
}

/* Frees every large block; only once the state is dropped. */
static void big_release(script_vm *vm)
{
    while (vm->big.next != &vm->big) {
        big_block *b = vm->big.next;
        vm->big.next = b->next;
        free(b);
    }
    vm->big.prev = &vm->big;
}

/* A block shrinking to nsize (at most POOL_SMALL_MAX) from old: Lua expects shrinks to
 * succeed, but a new chunk for each shrink into a class with no free block would let a live set
 * walked down the classes grow the pool past the limit, chunk after chunk (each class's chunks
 * stay the pool's). When the pool may not grow, the block itself becomes the smaller one: a
 * small block stays where it is, a large one is cut down to the class's size and stays on the
 * large list (released with the state). Freed later, either serves its new class. */
static void *shrink_to_small(script_vm *vm, void *ptr, size_t old, size_t nsize)
{
    size_t c = pool_class(nsize);
    void *p = pool_get(vm, c);
    if (p != NULL) {
        memcpy(p, ptr, nsize);
        if (old <= POOL_SMALL_MAX)
            pool_put(vm, ptr, pool_class(old));
        else
            big_free(vm, ptr, old);
        return p;
    }
    if (old <= POOL_SMALL_MAX)
        return ptr;
    void *cut = big_realloc(vm, ptr, old, class_size(c));
    return cut != NULL ? cut : ptr;
}

/* Blocks up to POOL_SMALL_MAX live in the pool, larger ones in the list; Lua always passes a
 * block's real size as osize, which tells where it lives. */
static void *vm_realloc(script_vm *vm, void *ptr, size_t old, size_t nsize, bool shrink)
{
    bool was_small = ptr != NULL && old <= POOL_SMALL_MAX;
    if (nsize > POOL_SMALL_MAX && ptr != NULL && !was_small)
        return big_realloc(vm, ptr, old, nsize);
    if (was_small && nsize <= POOL_SMALL_MAX && pool_class(nsize) == pool_class(old))
        return ptr;
    if (shrink && ptr != NULL && nsize <= POOL_SMALL_MAX)
        return shrink_to_small(vm, ptr, old, nsize);
    void *p = nsize <= POOL_SMALL_MAX ? pool_get(vm, pool_class(nsize)) : big_alloc(vm, nsize);
    if (p == NULL || ptr == NULL)
        return p;
    memcpy(p, ptr, old < nsize ? old : nsize);
    if (was_small)
        pool_put(vm, ptr, pool_class(old));
    else
        big_free(vm, ptr, old);
    return p;
}

static size_t charged(size_t size)
{
    return size <= POOL_SMALL_MAX ? class_size(pool_class(size)) : size;
}

/* Whether a large new vector is asked for by code that may be growing a table by keys of a
 * script's choosing: a Lua function (a store, a constructor), the compiler (its table of a
 * chunk's constants), the host writing into a script's table (script_vm_rawset) or a marked
 * C function (rawset, table.move...: keyed_call). Other C functions' are their buffers
 * (string.rep, table.concat), whose sizes can equal a node array's. Reads the running frame
 * only, which allocates nothing. */
static bool script_grows_table(script_vm *vm)
{
    lua_Debug ar;
    if (vm->host_keys)
        return true;
    if (vm->thread == NULL || !lua_getstack(vm->thread, 0, &ar))
        return false;
    /* any mark, not the last only: one left by a function that raised inside a protected call
     * of the host's (a consensus script) may lie above the live ones */
    for (int i = vm->nmarks - 1; i >= 0; i--)
        if ((const void *)ar.i_ci == vm->marks[i])
            return true;
    return lua_getinfo(vm->thread, "S", &ar) && strcmp(ar.what, "C") != 0;
}

/* Any allocation, resize or free; vm_alloc handles the common case itself. */
static bool over_budget(script_vm *vm);
static void fine_hook(lua_State *thread);

__attribute__((noinline)) static void *vm_alloc_any(script_vm *vm, void *ptr, size_t osize,
                                                    size_t nsize)
{
    size_t old = ptr != NULL ? osize : 0;
    size_t old_charge = ptr != NULL ? charged(osize) : 0;
    if (nsize == 0) {
        vm->mem_used -= old_charge;
        if (ptr != NULL && old <= POOL_SMALL_MAX)
            pool_put(vm, ptr, pool_class(old));
        else if (ptr != NULL)
            big_free(vm, ptr, old);
        return NULL;
    }
    size_t nodes = ptr == NULL && osize == 0 ? hash_part_nodes(nsize) : 0;
    /* the time of the rehashes before this one, which no hook may have seen */
    if (nodes != 0 && vm->slice_start_us != 0 && over_budget(vm))
        return NULL;
    if (nodes >= BIG_NODES && script_grows_table(vm)) {
        if (nodes > TABLE_NODES_MAX && vm->tripped == TRIP_NONE)
            vm->tripped = TRIP_TABLE;
        if (!vm->fine) {
            vm->fine = true; /* and at each slice's start */
            if (vm->thread != NULL)
                fine_hook(vm->thread);
        }
        if (vm->tripped != TRIP_NONE)
            return NULL;
    }
    size_t new_charge = charged(nsize);
    bool grows = new_charge > old_charge;
    /* a large block adds to what the state holds; a small one, through pool_get */
    size_t held = nsize <= POOL_SMALL_MAX                ? 0
                  : ptr == NULL || old <= POOL_SMALL_MAX ? nsize
                                                         : nsize - old;
    void *p = NULL;
    /* once a limit tripped, nothing grows: the trip's message is prebuilt */
    if (!grows || (vm->mem_used - old_charge + new_charge <= vm->mem_limit && may_hold(vm, held) &&
                   vm->tripped == TRIP_NONE))
        p = vm_realloc(vm, ptr, old, nsize, !grows);
    /* A refusal is not yet a trip: Lua answers it with a full collection and asks again, or
     * does without (a string table that stays small). The limit trips when Lua raises the
     * error (script_vm_note), which a script then cannot catch. Each refusal costs a full
     * collection no hook sees: a heap kept one table short of the limit made every `{}` one
     * (review: ~1,000 of 8 ms between two count hooks, 10 s on a 1 s budget), so the budget
     * is checked at each, and a budget past its end refuses the retry too. */
    if (p == NULL) {
        if (grows && vm->slice_start_us != 0)
            over_budget(vm);
        return NULL;
    }
    vm->mem_used = vm->mem_used - old_charge + new_charge;
    return p;
}

static void vm_hook(lua_State *L, lua_Debug *ar);

/* One VM instruction's cost grows with its strings: comparing two strings (<, <=) calls
 * strcoll once per NUL byte they share, so two 15 MB runs of NULs cost ~0.2 s per comparison,
 * and a loop of them ran minutes between two count hooks; two equal long strings that are
 * distinct objects are compared whole (==, a table key) every time (review). Once the state
 * has made a string past FINE_STRING (new objects come with their type as osize), every thread
 * it runs is checked at every instruction, in this slice and all later ones (strings outlive
 * their node: made at the top level or in one node, compared in the next, they ran minutes
 * again): an instruction's overrun is then one comparison of such strings, under a ms for
 * strings below the threshold, and states whose strings stay smaller keep the cheap count. */
static void fine_hook(lua_State *thread)
{
    if (lua_gethookcount(thread) != 1)
        lua_sethook(thread, vm_hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
}

/* Most of what Lua asks for is a new small block: that case takes a block of its class
 * without the general path's bookkeeping (~85 instructions a call). It does what
 * vm_alloc_any would; anything else, a block past the limit or an empty pool included,
 * goes there. */
static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    script_vm *vm = ud;
    if (ptr == NULL && osize == LUA_TSTRING && nsize > FINE_STRING && !vm->fine) {
        vm->fine = true;
        if (vm->thread != NULL)
            fine_hook(vm->thread);
    }
    if (ptr == NULL && nsize - 1 < POOL_FINE_MAX) {
        size_t c = (nsize - 1) / POOL_STEP, size = (c + 1) * POOL_STEP;
        void *p = vm->mem_used + size <= vm->mem_limit && vm->tripped == TRIP_NONE
                      ? pool_take(vm, c, size)
                      : NULL;
        if (p != NULL) {
            vm->mem_used += size;
            return p;
        }
    }
    return vm_alloc_any(vm, ptr, osize, nsize);
}

script_vm *script_vm_of(lua_State *L)
{
    void *ud = NULL;
    (void)lua_getallocf(L, &ud);
    return ud;
}

__attribute__((noreturn)) static void raise_trip(lua_State *L, script_vm *vm)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &trip_key);
    lua_rawgeti(L, -1, vm->tripped);
    lua_error(L);
    abort(); /* lua_error does not return */
}

void script_vm_check(lua_State *L)
{
    script_vm *vm = script_vm_of(L);
    if (vm->tripped != TRIP_NONE)
        raise_trip(L, vm);
}

/* The clock is read at every hook, calls included: one C call (a sort, a scan of a long
 * string) can take a good part of a second, and a loop of them between two clock reads
 * once kept a runner thread several times past the node's time budget. The coarse clock
 * costs a few ns, and a tick of lateness does not matter against budgets in seconds. */
static bool over_budget(script_vm *vm)
{
    if (vm->tripped == TRIP_NONE) {
        if (vm->instr_used > vm->instr_limit)
            vm->tripped = TRIP_INSTRUCTIONS;
        else if (vm->deadline_us != 0 && clock_coarse_us() > vm->deadline_us)
            vm->tripped = TRIP_TIME;
    }
    return vm->tripped != TRIP_NONE;
}

static void check_budget(lua_State *L, script_vm *vm)
{
    if (over_budget(vm))
        raise_trip(L, vm);
}

void script_vm_note(lua_State *L, int status)
{
    script_vm *vm = script_vm_of(L);
    if (status == LUA_ERRMEM && vm->built && vm->tripped == TRIP_NONE)
        vm->tripped = TRIP_MEMORY;
}

int script_vm_pcall_keyed(lua_State *L, int nargs, int nresults)
{
    script_vm *vm = script_vm_of(L);
    vm->host_keys = true;
    int status = lua_pcall(L, nargs, nresults, 0);
    vm->host_keys = false;
    return status;
}

void script_vm_rawset(lua_State *L, int idx)
{
    script_vm *vm = script_vm_of(L);
    idx = lua_absindex(L, idx);
    vm->host_keys = true; /* lua_rawset raises only a limit's error, which ends the panel */
    lua_rawset(L, idx);
    vm->host_keys = false;
}

bool script_vm_over_budget(lua_State *L)
{
    return over_budget(script_vm_of(L));
}

bool script_vm_reserve(lua_State *L, size_t bytes)
{
    script_vm *vm = script_vm_of(L);
    if (vm->mem_used + bytes > vm->mem_limit)
        lua_gc(L, LUA_GCCOLLECT);
    if (vm->mem_used + bytes > vm->mem_limit) {
        if (vm->tripped == TRIP_NONE)
            vm->tripped = TRIP_MEMORY;
        return false;
    }
    vm->mem_used += bytes;
    return true;
}

void script_vm_release(lua_State *L, size_t bytes)
{
    script_vm_of(L)->mem_used -= bytes;
}

void script_vm_charge(lua_State *L, int64_t units)
{
    script_vm *vm = script_vm_of(L);
    vm->instr_used += units;
    check_budget(L, vm);
}

static void vm_hook(lua_State *L, lua_Debug *ar)
{
    script_vm *vm = script_vm_of(L);
    if (ar->event == LUA_HOOKCOUNT) {
        vm->instr_used += lua_gethookcount(L);
        check_budget(L, vm);
        return;
    }
    /* Calls, C functions and metamethods called from C loops included: a loop inside a C
     * function that only calls other C functions still pays here. */
    vm->instr_used += 1;
    check_budget(L, vm);
}

void script_vm_budget_reset(script_vm *vm)
{
    vm->instr_used = 0;
    vm->run_us = 0;
}

void script_vm_slice_begin(script_vm *vm, lua_State *thread)
{
    vm->thread = thread;
    vm->nmarks = 0;
    vm->host_keys = false;
    if (vm->fine)
        fine_hook(thread);
    vm->slice_start_us = clock_mono_us();
    vm->deadline_us = vm->slice_start_us + (vm->timeout_us - vm->run_us);
    if (vm->deadline_us <= vm->slice_start_us)
        vm->deadline_us = vm->slice_start_us + 1;
}

void script_vm_slice_end(script_vm *vm)
{
    if (vm->slice_start_us != 0)
        vm->run_us += clock_mono_us() - vm->slice_start_us;
    /* Time spent in one long C step right before the slice ended (an ask_all prompt function
     * that then yields) passed no hook: it still counts, or the node could finish on the next
     * slice, which starts already past its deadline, within a tick of the coarse clock. */
    if (vm->run_us > vm->timeout_us && vm->tripped == TRIP_NONE)
        vm->tripped = TRIP_TIME;
    vm->slice_start_us = 0;
    vm->deadline_us = 0;
    vm->thread = NULL;
}

bool script_vm_tripped(const script_vm *vm, char *msg, size_t cap)
{
    if (vm->tripped == TRIP_NONE)
        return false;
    if (msg != NULL && cap > 0)
        snprintf(msg, cap, "%s", vm->trip_msg[vm->tripped]);
    return true;
}

size_t script_vm_memory(const script_vm *vm)
{
    return vm->mem_used;
}

size_t script_vm_held(const script_vm *vm)
{
    return vm->pool_bytes + vm->big_bytes;
}

lua_State *script_vm_state(script_vm *vm)
{
    return vm->L;
}

void script_vm_error_text(lua_State *L, int idx, char *out, size_t cap)
{
    int t = lua_type(L, idx);
    if (t == LUA_TSTRING) {
        snprintf(out, cap, "%s", lua_tostring(L, idx));
    } else if (t == LUA_TNUMBER) {
        if (lua_isinteger(L, idx))
            snprintf(out, cap, "%lld", (long long)lua_tointeger(L, idx));
        else
            snprintf(out, cap, "%.14g", lua_tonumber(L, idx));
    } else {
        /* Never call __tostring here: it would run script code outside any budget. */
        snprintf(out, cap, "(error object is a %s value)", lua_typename(L, t));
    }
}

/* ---- guarded base functions ----------------------------------------------------------- */

static void unmark_dead(lua_State *L);

static int finish_pcall(lua_State *L, int status, lua_KContext extra)
{
    if (status != LUA_OK && status != LUA_YIELD)
        unmark_dead(L); /* table functions that raised */
    script_vm_note(L, status);
    script_vm_check(L); /* a tripped limit is never caught */
    if (status != LUA_OK && status != LUA_YIELD) {
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

/* rawset, as lbaselib's. */
static int raw_set(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

static int sb_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finish_pcall);
    return finish_pcall(L, status, 0);
}

/* Calls upvalue 1 with the arguments on the stack and returns all its results. */
static int call_upvalue(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* Whether msg starts with a position ("name.lua:12:"). */
static bool has_position(const char *msg)
{
    const char *colon = strchr(msg, ':');
    if (colon == NULL || colon == msg || colon - msg > 200)
        return false;
    const char *d = colon + 1;
    while (*d >= '0' && *d <= '9')
        d++;
    return d > colon + 1 && *d == ':';
}

/* Whether msg is one the wrapped library functions raise themselves (argument errors, and
 * the errors of lstrlib, ltablib and sort's comparisons), rather than an error value of a
 * script's callback (a gsub function, a sort comparator), which goes on untouched. */
static bool library_message(const char *msg)
{
    static const char *const heads[] = {
        "bad argument",
        "invalid ",
        "malformed ",
        "missing ",
        "unfinished capture",
        "too many ",
        "attempt to ",
        "wrong number of",
        "resulting string too large",
        "array too big",
        "string slice too long",
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++)
        if (strncmp(msg, heads[i], strlen(heads[i])) == 0)
            return true;
    return false;
}

/* Which wrapped functions may be called again after a collection (see call_original), told
 * apart by wrap_field once rather than by their names at every call. */
enum retry { RETRY_NONE = 0, RETRY_REP, RETRY_GSUB, RETRY_CONCAT, RETRY_FORMAT };

static enum retry retry_of(const char *name)
{
    return strcmp(name, "rep") == 0      ? RETRY_REP
           : strcmp(name, "gsub") == 0   ? RETRY_GSUB
           : strcmp(name, "concat") == 0 ? RETRY_CONCAT
           : strcmp(name, "format") == 0 ? RETRY_FORMAT
                                         : RETRY_NONE;
}

/* True when calling the wrapped function (of kind retry) with the n arguments on the stack
 * has no effect but its results (no metamethod or callback can run), so that it may be called
 * again. */
static bool plain_call(lua_State *L, enum retry retry, int n)
{
    switch (retry) {
    case RETRY_REP:
        return true;
    case RETRY_GSUB:
        return lua_type(L, 3) == LUA_TSTRING || lua_type(L, 3) == LUA_TNUMBER;
    case RETRY_CONCAT:
        if (lua_type(L, 1) != LUA_TTABLE)
            return false;
        if (!lua_getmetatable(L, 1))
            return true;
        lua_pop(L, 1);
        return false;
    case RETRY_FORMAT:
        for (int i = 2; i <= n; i++)
            if (lua_type(L, i) == LUA_TTABLE || lua_type(L, i) == LUA_TUSERDATA)
                return false;
        return true;
    case RETRY_NONE:
        break;
    }
    return false;
}

/* The library wrappers' last step: calls upvalue 1 (the wrapped function, named by upvalue
 * 2, of enum retry upvalue 3) with the arguments on the stack and returns all its results. Called
 * from C, the original names neither the script's line nor itself in its errors ("bad argument #2
 * to '?'"): they are raised again with both, as if the script had called it. A tripped limit, and
 * the error value of a script's callback, go on as they are. */
static int call_original(lua_State *L)
{
    int n = lua_gettop(L);
    bool again = plain_call(L, (enum retry)lua_tointeger(L, lua_upvalueindex(3)), n);
    int below = again ? n : 0; /* a plain call's arguments, kept for a second try */
    luaL_checkstack(L, n + 1, "too many arguments");
    for (int i = 1; i <= below; i++)
        lua_pushvalue(L, i);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, below + 1);
    int status = lua_pcall(L, n, LUA_MULTRET, 0);
    /* The auxiliary library's buffers (luaL_Buffer: rep, format, gsub, concat...) take
     * memory straight from the allocator, without the full collection by which Lua answers
     * a refusal elsewhere: garbage would count as live memory. A plain call is made again
     * after a collection; the limit trips when the memory still is not there. */
    if (status == LUA_ERRMEM && again) {
        lua_gc(L, LUA_GCCOLLECT);
        lua_settop(L, n);
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        below = 0;
        status = lua_pcall(L, n, LUA_MULTRET, 0);
    }
    if (status == LUA_OK)
        return lua_gettop(L) - below;
    script_vm *vm = script_vm_of(L);
    script_vm_note(L, status);
    if (vm->tripped != TRIP_NONE)
        raise_trip(L, vm);
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (msg != NULL && !has_position(msg) && library_message(msg)) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_where(L, 1);
        luaL_addvalue(&b);
        const char *q = strstr(msg, " to '?'");
        if (q != NULL && strncmp(msg, "bad argument", 12) == 0) {
            luaL_addlstring(&b, msg, (size_t)(q - msg));
            luaL_addstring(&b, " to '");
            luaL_addstring(&b, lua_tostring(L, lua_upvalueindex(2)));
            luaL_addstring(&b, "'");
            luaL_addstring(&b, q + 7);
        } else {
            luaL_addstring(&b, msg);
        }
        luaL_pushresult(&b);
    }
    return lua_error(L);
}

/* The message handler of xpcall. An error raised by a hook runs the handler while Lua has
 * hooks disabled, so a handler that loops would never be stopped: once a limit tripped, the
 * script's handler is not called at all. */
static int guarded_handler(lua_State *L)
{
    script_vm *vm = script_vm_of(L);
    if (vm->tripped != TRIP_NONE) {
        lua_settop(L, 1);
        return 1;
    }
    return call_upvalue(L);
}

static int sb_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, guarded_handler, 1);
    lua_replace(L, 2);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2);
    int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_pcall);
    return finish_pcall(L, status, 2);
}

/* load(chunk [, chunkname [, mode [, env]]]): text chunks only, given as a string; the
 * environment defaults to the caller's sandbox environment (upvalue 1). */
/* ---- chunks the compiler would take quadratic time over --------------------------------
 * Lua's parser links the jumps of an and/or chain, of an if/elseif chain and of pending
 * gotos and breaks in lists that it walks to the end at every addition, and compares each new
 * label with every label of its function, in C where no hook runs: `return a or a or ... a`
 * with 100,000 terms took 17 s to compile, 400,000 over a minute; 70 functions of 32,000
 * `::l::` labels took 50 s. Chunks with more than CHUNK_MAX_JUMPS of those words and labels
 * are refused, where the worst case compiles in well under a second. The words are counted in the
 * raw text, comments and strings included: a count can only come out high, never low, which a
 * scanner that must agree with Lua's lexer on every line ending and escape cannot promise. */
#define CHUNK_MAX_JUMPS 20000

static bool word_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static bool is_jump_word(const char *w, size_t n)
{
    return (n == 2 && memcmp(w, "or", 2) == 0) || (n == 3 && memcmp(w, "and", 3) == 0) ||
           (n == 4 && memcmp(w, "goto", 4) == 0) || (n == 5 && memcmp(w, "break", 5) == 0) ||
           (n == 6 && memcmp(w, "elseif", 6) == 0);
}

/* The jump words, and every "::" (a label has two). */
static size_t count_jump_words(const char *s, size_t len)
{
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        if (s[i] == ':' && i + 1 < len && s[i + 1] == ':') {
            k++;
            i += 2;
            continue;
        }
        if (!word_char(s[i])) {
            i++;
            continue;
        }
        size_t w = i;
        while (i < len && word_char(s[i]))
            i++;
        k += is_jump_word(s + w, i - w);
    }
    return k;
}

/* ---- compiling on a clock -------------------------------------------------------------
 * Other constructs compile slowly too, and no list of them is complete: every reference to a
 * global walks the local variables of each enclosing function, so 180 nested functions of 190
 * locals each made a 1 MiB chunk take 22 s. The compiler reads its text through a reader
 * that hands it out COMPILE_PIECE bytes at a time and watches the clock: past the deadline it
 * ends the text there, which stops the compiler at its next read (a piece's worth of work),
 * and the chunk is refused whatever the compiler made of its truncated text. */
#define COMPILE_PIECE 4096
#define COMPILE_BUDGET_US (2 * 1000 * 1000) /* outside a node (uploads, reloads, panel starts) */

typedef struct timed_text {
    const char *src;
    size_t len, at;
    int64_t deadline_us;
    bool expired;
} timed_text;

static const char *timed_reader(lua_State *L, void *ud, size_t *size)
{
    (void)L;
    timed_text *t = ud;
    *size = 0;
    if (t->at >= t->len)
        return NULL;
    if (clock_mono_us() > t->deadline_us) {
        t->expired = true;
        return NULL;
    }
    const char *piece = t->src + t->at;
    *size = t->len - t->at < COMPILE_PIECE ? t->len - t->at : COMPILE_PIECE;
    t->at += *size;
    return piece;
}

/* luaL_loadbufferx of a text chunk, refused (LUA_ERRSYNTAX, the message pushed) when compiling
 * it outlasts the node's time budget, or COMPILE_BUDGET_US outside a node. */
static int load_text(lua_State *L, const char *name, const char *src, size_t len)
{
    script_vm *vm = script_vm_of(L);
    int64_t now = clock_mono_us();
    timed_text t = {src, len, 0, now + COMPILE_BUDGET_US, false};
    if (vm->deadline_us != 0 && vm->deadline_us < t.deadline_us)
        t.deadline_us = vm->deadline_us;
    vm->host_keys = true; /* lua_load returns its errors, never raises them */
    int status = lua_load(L, timed_reader, &t, name, "t");
    vm->host_keys = false;
    if (!t.expired)
        return status;
    lua_pop(L, 1);
    if (name[0] == '=' || name[0] == '@')
        name++; /* as Lua shows chunk names */
    lua_pushfstring(
        L, "%s: compiling it took longer than its time allows; split it, or nest fewer functions",
        name);
    return LUA_ERRSYNTAX;
}

/* Pushes the message and returns LUA_ERRSYNTAX when the chunk is one of those. */
static int refuse_quadratic(lua_State *L, const char *name, const char *src, size_t len)
{
    if (count_jump_words(src, len) <= CHUNK_MAX_JUMPS)
        return LUA_OK;
    if (name[0] == '=' || name[0] == '@')
        name++; /* as Lua shows chunk names */
    lua_pushfstring(L,
                    "%s: more than %d 'and', 'or', 'elseif', 'goto', 'break' and '::' in one "
                    "chunk; split it (long chains of them compile in quadratic time)",
                    name, CHUNK_MAX_JUMPS);
    return LUA_ERRSYNTAX;
}

static int sb_load(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, "=(load)");
    int env = lua_isnoneornil(L, 4) ? lua_upvalueindex(1) : 4;
    if (env == 4)
        luaL_checktype(L, 4, LUA_TTABLE);
    script_vm_charge(L, (int64_t)(len / 16));
    int status = refuse_quadratic(L, name, s, len);
    if (status == LUA_OK)
        status = load_text(L, name, s, len);
    script_vm_note(L, status);
    script_vm_check(L);
    if (status != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushvalue(L, env);
    if (lua_setupvalue(L, -2, 1) == NULL)
        lua_pop(L, 1);
    return 1;
}

/* ---- metatables ---------------------------------------------------------------------------
 * A table's metatable in force is not the script's table but a copy of its metamethods (its
 * "__" fields), taken when setmetatable is called, that no script can reach: getmetatable
 * answers the script's own table, and methods stay there, found through __index. Lua reads
 * __mode at every collection, so a metatable a script could still write to could turn a table
 * with weak keys later, and weak keys (ephemerons) make a collection's one uninterruptible
 * step quadratic: 120,000 of them, chained, held a runner for six minutes on a 1 s budget
 * (review). In force, __mode may make values weak but never keys, and __gc is refused
 * (finalizers would run outside any budget). Copies of an unchanged metatable are shared. */

/* Whether the in-force table at idx holds exactly the metamethods of the one at mt (n of
 * them, counted by the caller). */
static bool same_metamethods(lua_State *L, int idx, int mt, int n)
{
    int have = 0, seen = 0;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pop(L, 1);
        if (++seen % LOOP_CHECK_EVERY == 0)
            check_budget(L, script_vm_of(L));
        if (lua_type(L, -1) != LUA_TSTRING)
            continue;
        have++;
        lua_pushvalue(L, -1);
        lua_rawget(L, idx);
        lua_pushvalue(L, -2);
        lua_rawget(L, mt);
        bool same = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (!same) {
            lua_pop(L, 1);
            return false;
        }
    }
    return have == n;
}

/* Pushes the in-force table for the script's metatable at mt (an absolute index). The scan,
 * in C, is charged a unit a key (review: 400,000 keys took 0.45 s a call for one unit). */
static void push_in_force(lua_State *L, int mt)
{
    int n = 0;
    int64_t keys = 0;
    lua_createtable(L, 0, 4);
    int copy = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, mt) != 0) {
        if (++keys % LOOP_CHECK_EVERY == 0)
            check_budget(L, script_vm_of(L)); /* a step costs its key's chain (enc_check) */
        size_t len;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
        if (k == NULL || len < 2 || k[0] != '_' || k[1] != '_') {
            lua_pop(L, 1);
            continue;
        }
        if (strcmp(k, "__gc") == 0)
            luaL_error(L, "setmetatable: __gc metamethods are not allowed in scripts");
        if (strcmp(k, "__mode") == 0 && lua_type(L, -1) == LUA_TSTRING &&
            strchr(lua_tostring(L, -1), 'k') != NULL)
            luaL_error(L, "setmetatable: weak keys (__mode 'k') are not available to scripts");
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, copy);
        n++;
    }
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &in_force_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_createtable(L, 0, 4);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "v");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &in_force_key);
    }
    int cache = lua_gettop(L);
    script_vm_charge(L, 2 * keys); /* the scan, and at most as much to compare */
    lua_pushvalue(L, mt);
    if (lua_rawget(L, cache) == LUA_TTABLE && same_metamethods(L, lua_gettop(L), copy, n)) {
        lua_replace(L, copy); /* the shared one */
        lua_settop(L, copy);
        return;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, mt);
    lua_rawsetp(L, copy, &original_key);
    lua_pushvalue(L, mt);
    lua_pushvalue(L, copy);
    lua_rawset(L, cache);
    lua_settop(L, copy);
}

static int sb_setmetatable(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int t = lua_type(L, 2);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    lua_settop(L, 2);
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    if (t == LUA_TTABLE)
        push_in_force(L, 2);
    else
        lua_pushnil(L);
    lua_setmetatable(L, 1);
    lua_settop(L, 1);
    return 1;
}

/* Only tables can carry a script's metatable; the metatables of strings and other types
 * belong to the host. A table's answers its __metatable field, or the script's own table. */
static int sb_getmetatable(lua_State *L)
{
    luaL_checkany(L, 1);
    if (lua_type(L, 1) != LUA_TTABLE || !lua_getmetatable(L, 1)) {
        lua_pushnil(L);
        return 1;
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return 1;
    if (lua_rawgetp(L, -1, &original_key) == LUA_TNIL)
        lua_pop(L, 1); /* one the host set */
    return 1;
}

static int sb_collectgarbage(lua_State *L)
{
    const char *opt = luaL_optstring(L, 1, "count");
    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage: only \"count\" is available to scripts");
    int kb = lua_gc(L, LUA_GCCOUNT, 0);
    int b = lua_gc(L, LUA_GCCOUNTB, 0);
    lua_pushnumber(L, (lua_Number)kb + ((lua_Number)b / 1024));
    return 1;
}

/* ---- no heap addresses ----------------------------------------------------------------
 * Lua names a table, function or userdata by its address ("table: 0x55d0c2a41f30"), which
 * would tell a script where the engine's heap lies. Scripts see a keyed 64-bit mix of it
 * instead: as unique and as stable as the address, and nothing about where it points. */
static uint64_t ptr_key[2];
static pthread_once_t ptr_key_once = PTHREAD_ONCE_INIT;

static void ptr_key_init(void)
{
    if (ids_random(ptr_key, sizeof ptr_key) != AP_OK) {
        /* no kernel randomness: still hide the address, with a key no script can read */
        ptr_key[0] = (uint64_t)(uintptr_t)&ptr_key ^ 0x9e3779b97f4a7c15ULL;
        ptr_key[1] = (uint64_t)clock_mono_us() * 0xbf58476d1ce4e5b9ULL;
    }
}

static uint64_t hide_ptr(const void *p)
{
    pthread_once(&ptr_key_once, ptr_key_init);
    uint64_t x = (uint64_t)(uintptr_t)p ^ ptr_key[0]; /* a bijection: names stay unique */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return (x ^ (x >> 31)) ^ ptr_key[1];
}

/* True for a value luaL_tolstring would print as "<type or __name>: <address>". */
static bool named_by_address(lua_State *L, int idx)
{
    int t = lua_type(L, idx);
    if (t == LUA_TNONE || t == LUA_TNIL || t == LUA_TBOOLEAN || t == LUA_TNUMBER ||
        t == LUA_TSTRING)
        return false;
    if (luaL_getmetafield(L, idx, "__tostring") != LUA_TNIL) {
        lua_pop(L, 1);
        return false;
    }
    return true;
}

void script_vm_tostring(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (!named_by_address(L, idx)) {
        luaL_tolstring(L, idx, NULL);
        return;
    }
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)hide_ptr(lua_topointer(L, idx)));
    int nt = luaL_getmetafield(L, idx, "__name");
    if (nt != LUA_TNIL && nt != LUA_TSTRING) {
        lua_pop(L, 1);
        nt = LUA_TNIL;
    }
    lua_pushfstring(L, "%s: 0x%s", nt == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, idx),
                    hex);
    if (nt == LUA_TSTRING)
        lua_remove(L, -2);
}

static int sb_tostring(lua_State *L)
{
    luaL_checkany(L, 1);
    script_vm_tostring(L, 1);
    return 1;
}

/* string.format: %p prints an address and is refused; a value that %s would name by its
 * address is named as tostring names it. Upvalue 1: the original function. */
static int guarded_format(lua_State *L)
{
    size_t fl;
    const char *f = luaL_checklstring(L, 1, &fl);
    for (size_t i = 0; i < fl; i++) {
        if (f[i] != '%')
            continue;
        if (++i < fl && f[i] == '%')
            continue;
        while (i < fl && strchr("-+ #0123456789.", f[i]) != NULL)
            i++;
        if (i < fl && f[i] == 'p')
            return luaL_error(L, "string.format: '%%p' is not available to scripts");
    }
    int n = lua_gettop(L);
    for (int i = 2; i <= n; i++) {
        if (named_by_address(L, i)) {
            script_vm_tostring(L, i);
            lua_replace(L, i);
        }
    }
    return call_original(L);
}

static int sb_print(lua_State *L)
{
    script_vm *vm = script_vm_of(L);
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        /* Only luaL_addvalue may find a value above the buffer: the others take the top of
         * the stack for the buffer's own box once it grows. */
        size_t l;
        script_vm_tostring(L, i);
        const char *s = lua_tolstring(L, -1, &l);
        if (l > 4096) {
            lua_pushlstring(L, s, 4096);
            lua_replace(L, -2);
        }
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    if (vm->log != NULL)
        vm->log(vm->log_ud, LOG_LEVEL_INFO, lua_tostring(L, -1));
    return 0;
}

/* ---- guarded string patterns ----------------------------------------------------------
 * Lua's matcher backtracks in C where no hook can stop it, so "a.-.-.-.-b" on a long subject
 * could hold the runner for hours. Before each call we bound the worst case: every item that
 * repeats (*, +, -) multiplies the work by the longest run of subject characters its class
 * can match (+1), '?' by 2, %b and back-references by the subject length, an unanchored
 * search by the number of start positions, and the items after a repeat by as many (details
 * at pattern_cost). Calls whose bound exceeds PATTERN_MAX_COST are refused with a clear
 * error, as are malformed patterns; ordinary patterns on ordinary text stay far below it. */

static bool class_match(int c, int cl)
{
    bool r;
    switch (tolower(cl)) {
    case 'a':
        r = isalpha(c);
        break;
    case 'c':
        r = iscntrl(c);
        break;
    case 'd':
        r = isdigit(c);
        break;
    case 'g':
        r = isgraph(c);
        break;
    case 'l':
        r = islower(c);
        break;
    case 'p':
        r = ispunct(c);
        break;
    case 's':
        r = isspace(c);
        break;
    case 'u':
        r = isupper(c);
        break;
    case 'w':
        r = isalnum(c);
        break;
    case 'x':
        r = isxdigit(c);
        break;
    default:
        return cl == c;
    }
    if (isupper(cl))
        r = !r;
    return r;
}

/* p points after '['; ep at the closing ']'. */
static bool set_match(int c, const char *p, const char *ep)
{
    bool neg = false;
    if (*p == '^') {
        neg = true;
        p++;
    }
    bool found = false;
    while (p < ep && !found) {
        if (*p == '%' && p + 1 < ep) {
            p++;
            found = class_match(c, (unsigned char)*p);
            p++;
        } else if (p + 2 < ep && p[1] == '-') {
            found = (unsigned char)p[0] <= c && c <= (unsigned char)p[2];
            p += 3;
        } else {
            found = (unsigned char)*p == c;
            p++;
        }
    }
    return neg ? !found : found;
}

typedef struct pitem {
    const char *p, *ep; /* the single-character class: p..ep */
} pitem;

static bool item_match(const pitem *it, int c)
{
    switch (*it->p) {
    case '.':
        return true;
    case '%':
        return class_match(c, (unsigned char)it->p[1]);
    case '[':
        return set_match(c, it->p + 1, it->ep - 1);
    default:
        return (unsigned char)*it->p == c;
    }
}

static double longest_run(const pitem *it, const char *s, size_t n)
{
    if (*it->p == '.')
        return (double)n;
    size_t best = 0, run = 0;
    for (size_t i = 0; i < n; i++) {
        if (item_match(it, (unsigned char)s[i])) {
            if (++run > best)
                best = run;
        } else {
            run = 0;
        }
    }
    return (double)best;
}

/* End of the class starting at p (exclusive), or NULL when malformed. */
static const char *class_end(const char *p, const char *pend)
{
    if (*p == '%')
        return p + 1 < pend ? p + 2 : NULL;
    if (*p == '[') {
        const char *q = p + 1;
        if (q < pend && *q == '^')
            q++;
        do {
            if (q >= pend)
                return NULL;
            if (*q == '%')
                q++;
            q++;
        } while (q < pend && *q != ']');
        return q < pend ? q + 1 : NULL;
    }
    return p + 1;
}

static double count_char(const char *s, size_t n, char c)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += s[i] == c;
    return (double)k;
}

/* The run of the item's class at the start of s. */
static double run_at_start(const pitem *it, const char *s, size_t n)
{
    size_t k = 0;
    while (k < n && (*it->p == '.' || item_match(it, (unsigned char)s[k])))
        k++;
    return (double)k;
}

/* How a repeated item, whose quantifier ends at q, can give back what it took: 'l' when
 * nothing but captures follows it (it is the last thing tried, so it never gives back), 'f'
 * when a literal character that it cannot match follows (a shorter run fails that test at
 * once: its run is tried once per start, added, not multiplied), else 'm' (multiplies). */
static char repeat_kind(const pitem *it, const char *q, const char *pend)
{
    while (q < pend && (*q == '(' || *q == ')'))
        q++;
    if (q == pend)
        return 'l';
    if (strchr("^$*+?.([%-", *q) != NULL)
        return 'm';
    if (q + 1 < pend && strchr("*?-", q[1]) != NULL)
        return 'm'; /* the literal is optional itself */
    return item_match(it, (unsigned char)*q) ? 'm' : 'f';
}

/* The worst case of matching p against s, in character tests: start positions times, for
 * each, the product of what every repeated item may try (its longest run in s); or, when
 * more, the tests of the items, each counted as often as the repeats before it let the
 * matcher reach it (a long literal after a repeat is compared again at every step of its
 * backtracking). The guard's own work, a scan of s per repeated item in which every test reads
 * the item whole (a [set] of up to PATTERN_MAX_SET bytes), is counted in *scanned before it is
 * done and stays within PATTERN_MAX_COST: a pattern whose estimate would cost more is refused
 * unestimated (review: 32 repeated 1,000-byte sets over 1 MiB made the estimate itself run for
 * 52 s). A malformed pattern costs INFINITY, with *malformed set to Lua's message. */
/* The subject bytes the guard may still test against an item of width bytes. */
static size_t scan_left(int64_t scanned, size_t width)
{
    double left = (PATTERN_MAX_COST - (double)scanned) / (double)width;
    return left > 0 ? (size_t)left : 0;
}

/* Counts a scan of n subject bytes testing an item of width bytes against each into *scanned;
 * false (nothing counted) when that would take the guard's own work past PATTERN_MAX_COST. */
static bool scan_allowed(int64_t *scanned, size_t n, size_t width)
{
    double work = (double)n * (double)width;
    if ((double)*scanned + work > PATTERN_MAX_COST)
        return false;
    *scanned += (int64_t)work;
    return true;
}

static double pattern_cost(const char *p, size_t pl, const char *s, size_t n, bool scan_all,
                           int64_t *scanned, const char **malformed)
{
    const char *pend = p + pl;
    /* cost: the ways to get this far (start positions times the runs tried before); tests:
     * the character tests of the items so far, each tried once per way to reach it */
    double cost = 1, tests = 0, added = 0;
    int repeats = 0;
    bool anchored = p < pend && *p == '^' && !scan_all, first = true;
    if (anchored)
        p++;
    else
        cost = (double)n + 1;
    while (p < pend && cost <= PATTERN_MAX_COST && tests <= PATTERN_MAX_COST) {
        if (repeats > PATTERN_MAX_REPEATS)
            return INFINITY;
        if (*p == '(' || *p == ')') {
            p++;
            continue;
        }
        if (*p == '$' && p + 1 == pend)
            break;
        if (*p == '%' && p + 1 < pend && p[1] == 'b') {
            if (p + 3 >= pend) {
                *malformed = "malformed pattern (missing arguments to '%b')";
                return INFINITY;
            }
            tests += cost * 4;
            if (!scan_allowed(scanned, n, 1))
                return INFINITY;
            cost *= count_char(s, n, p[2]) + 1;
            repeats++;
            first = false;
            p += 4;
            continue;
        }
        if (*p == '%' && p + 1 < pend && p[1] == 'f') {
            p += 2;
            if (p == pend || *p != '[') {
                *malformed = "missing '[' after '%f' in pattern";
                return INFINITY;
            }
            const char *e = class_end(p, pend);
            if (e == NULL) {
                *malformed = "malformed pattern (missing ']')";
                return INFINITY;
            }
            tests += cost * (double)(e - p);
            p = e;
            continue;
        }
        if (*p == '%' && p + 1 < pend && p[1] >= '0' && p[1] <= '9') {
            tests += cost * 2;
            cost *= (double)n + 1;
            repeats++;
            first = false;
            p += 2;
            continue;
        }
        pitem it = {p, class_end(p, pend)};
        if (it.ep == NULL) {
            *malformed =
                *p == '%' ? "malformed pattern (ends with '%')" : "malformed pattern (missing ']')";
            return INFINITY;
        }
        if (it.ep - it.p > PATTERN_MAX_SET)
            return INFINITY;
        tests += cost * (double)(it.ep - it.p);
        p = it.ep;
        if (p < pend && (*p == '*' || *p == '-' || *p == '+')) {
            char kind = repeat_kind(&it, p + 1, pend);
            if (kind != 'l') {
                size_t width = (size_t)(it.ep - it.p);
                double run;
                if (anchored && first) {
                    /* anchored, the first item can only match where the subject starts: its
                     * run is what the scan reads, at most what the guard may still read */
                    size_t cap = scan_left(*scanned, width);
                    run = run_at_start(&it, s, n < cap ? n : cap);
                    if (run >= (double)cap && cap < n)
                        return INFINITY;
                    *scanned += (int64_t)((run + 1) * (double)width);
                } else if (*it.p != '.' && !scan_allowed(scanned, n, width)) {
                    return INFINITY;
                } else {
                    run = longest_run(&it, s, n);
                }
                if (kind == 'f')
                    added += run;
                else
                    cost *= (*p == '+' ? (run > 1 ? run : 1) : run + 1);
                repeats++;
            }
            p++;
        } else if (p < pend && *p == '?') {
            cost *= 2;
            p++;
        }
        first = false;
    }
    cost *= 1 + added;
    return tests > cost ? tests : cost;
}

/* Where a search given init (argument arg) starts in a subject of len bytes, as lstrlib
 * counts it (negative from the end); past len when nothing can match. */
static size_t init_offset(lua_State *L, int arg, size_t len)
{
    lua_Integer init = luaL_optinteger(L, arg, 1);
    if (init > 0)
        return (size_t)init - 1;
    if (init == 0 || 0u - (lua_Unsigned)init > len)
        return 0;
    return len - (size_t)(0u - (lua_Unsigned)init);
}

/* Refuses the call when matching argument 2 against argument 1 may backtrack past
 * PATTERN_MAX_COST or the pattern is malformed (Lua would report a malformed item only once
 * the matcher reached it, after all the backtracking before it). has_init: argument 3 is
 * where the match starts, which is where an anchored pattern's first item is costed. */
static int pattern_guard(lua_State *L, bool scan_all, bool has_init)
{
    size_t n, pl;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *p = luaL_checklstring(L, 2, &pl);
    size_t from = has_init ? init_offset(L, 3, n) : 0;
    if (from > n)
        return 0; /* no match is tried */
    int64_t scanned = 0;
    const char *malformed = NULL;
    double cost = pattern_cost(p, pl, s + from, n - from, scan_all, &scanned, &malformed);
    if (malformed != NULL)
        return luaL_error(L, "%s", malformed);
    script_vm_charge(L, scanned / 16 + 1);
    if (cost > PATTERN_MAX_COST)
        return luaL_error(L,
                          "pattern too complex for a subject of %d bytes (it could backtrack too "
                          "long: repetitions that can match the same text, or a long pattern "
                          "after one); simplify the pattern or split the text",
                          (int)n);
    return 0;
}

/* The characters that make a pattern more than plain text (lstrlib's SPECIALS). */
static bool has_specials(const char *p, size_t pl)
{
    for (size_t i = 0; i < pl; i++)
        if (p[i] != '\0' && strchr("^$*+?.([%-", p[i]) != NULL)
            return true;
    return false;
}

/* string.find. A plain search (asked for, or a pattern without specials) is memmem, which is
 * linear: Lua's own compares the whole needle at every place its first byte occurs, so a
 * long needle of repeated bytes in a long text of them took hours in one call. Positions
 * and results as lstrlib's. Upvalue 1: the original function. */
static int guarded_find(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    if (lua_toboolean(L, 4) || !has_specials(p, lp)) {
        size_t from = init_offset(L, 3, ls);
        if (from > ls) {
            luaL_pushfail(L);
            return 1;
        }
        script_vm_charge(L, (int64_t)((ls - from) / 16 + lp / 16));
        const char *at = memmem(s + from, ls - from, p, lp);
        if (at == NULL) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (lua_Integer)(at - s) + 1);
        lua_pushinteger(L, (lua_Integer)(at - s) + (lua_Integer)lp);
        return 2;
    }
    pattern_guard(L, false, true);
    return call_original(L);
}

/* Upvalue 1: the original function. */
static int guarded_match(lua_State *L)
{
    pattern_guard(L, false, true);
    return call_original(L);
}

static int guarded_gmatch(lua_State *L)
{
    pattern_guard(L, true, true);
    return call_original(L);
}

/* Whether the value at idx is a table with a metatable. */
static bool has_metatable(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx))
        return false;
    lua_pop(L, 1);
    return true;
}

/* A replacement table, looked up as gsub would (upvalue 1): a call per match, which the hook
 * sees and which charges the table's __index chain, where gsub's own lookups would run in C
 * unseen, walking that chain, or a hash chain of keys crafted to share it (review: 55 s in
 * one call). */
static lua_Unsigned chain_hops(lua_State *L, int idx, const char *field);

static int repl_lookup(lua_State *L)
{
    script_vm_charge(L, (int64_t)chain_hops(L, lua_upvalueindex(1), "__index"));
    lua_settop(L, 1);
    lua_gettable(L, lua_upvalueindex(1));
    return 1;
}

/* The bytes of a replacement string spent on capture references (%0 to %9), which add
 * nothing when their capture is empty. */
static size_t capture_ref_bytes(const char *r, size_t lr)
{
    size_t refs = 0;
    for (size_t i = 0; i + 1 < lr; i++) {
        if (r[i] != '%')
            continue;
        refs += r[i + 1] >= '0' && r[i + 1] <= '9';
        i++; /* "%%" and "%d" are two bytes */
    }
    return 2 * refs;
}

/* string.gsub: besides the pattern's cost, what the replacement costs. gsub walks a
 * replacement string at every match; its literal bytes are paid for by the result they add
 * (the memory limit bounds them), but capture references to empty captures add nothing:
 * those are bounded by PATTERN_MAX_COST over all the matches there can be (review: 2,000
 * empty matches of a replacement of a million "%0" ran 24 s on a 1 s budget). A table is
 * looked up through a function, so that every lookup is a call (repl_lookup). */
static int guarded_gsub(lua_State *L)
{
    pattern_guard(L, true, false);
    size_t n, lr;
    luaL_checklstring(L, 1, &n);
    if (lua_type(L, 3) == LUA_TSTRING) {
        const char *r = lua_tolstring(L, 3, &lr);
        lua_Integer most = luaL_optinteger(L, 4, (lua_Integer)n + 1);
        double matches = most < 0 ? 0 : (double)most < (double)n + 1 ? (double)most : (double)n + 1;
        double idle = matches * (double)capture_ref_bytes(r, lr);
        if (idle > PATTERN_MAX_COST)
            return luaL_error(L,
                              "gsub: a replacement with this many capture references over a "
                              "subject of %d bytes is too much work; use a function",
                              (int)n);
        script_vm_charge(L, (int64_t)(idle / 16));
    } else if (lua_type(L, 3) == LUA_TTABLE) {
        lua_pushvalue(L, 3);
        lua_pushcclosure(L, repl_lookup, 1);
        lua_replace(L, 3);
    }
    return call_original(L);
}

/* string.rep of an empty string (and separator) loops n times in C making nothing, which
 * no memory limit stops and no hook interrupts: n = math.maxinteger ran for centuries. */
static int guarded_rep(lua_State *L)
{
    size_t l, lsep;
    luaL_checklstring(L, 1, &l);
    luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    return call_original(L);
}

/* table.insert and table.remove, as ltablib's, with the shift charged to the instruction
 * budget before it starts, and checked as it goes (see "table loops"): the shift runs in C
 * between #t (a __len can claim any length) and the position, where no hook fires, and took
 * 2^63 steps for a table claiming math.maxinteger elements. Calling the originals after a
 * check would not do: __len could answer differently the second time. */
/* ltablib's checktab for reading and writing: a table, or a value whose metatable has
 * __index, __newindex and __len. */
static void check_rw_table(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TTABLE)
        return;
    int top = lua_gettop(L);
    bool ok = lua_getmetatable(L, 1) && lua_getfield(L, -1, "__index") != LUA_TNIL &&
              lua_getfield(L, -2, "__newindex") != LUA_TNIL &&
              lua_getfield(L, -3, "__len") != LUA_TNIL;
    lua_settop(L, top);
    if (!ok)
        luaL_checktype(L, 1, LUA_TTABLE);
}

static void charge_shift(lua_State *L, lua_Unsigned steps)
{
    /* More than any budget, and far from overflowing the count it is added to. */
    const lua_Unsigned most = (lua_Unsigned)(INT64_MAX / 4);
    script_vm_charge(L, (int64_t)(steps < most ? steps : most));
}

/* ---- table loops ---------------------------------------------------------------------------
 * A C loop over a table with a metatable runs no hook of its own, yet each of its accesses may
 * walk an __index or __newindex chain of up to 2,000 tables, or call a metamethod that
 * lengthens such a chain for the accesses after it (review: table.move over a 1,990-table
 * chain ran 8 minutes on a 1 s budget, table.unpack 28 s, and a charge taken up front was
 * dodged by a chain grown mid-loop). Over such tables, unpack, concat, move and the shifts of
 * insert and remove run in the loops below, which every LOOP_CHECK_EVERY elements charge them
 * at the chains' length then and check the budget, time included. Plain tables keep Lua's
 * own loops, but for move (see keyed_call) and unpack (see guarded_unpack). */
#define CHAIN_MAX 2000 /* Lua's own limit on an __index or __newindex chain (MAXTAGLOOP) */

/* The tables a read (field "__index") or a write ("__newindex") of the value at idx may pass
 * through: its chain of such tables (a function ends a chain: calling it is hooked). */
static lua_Unsigned chain_hops(lua_State *L, int idx, const char *field)
{
    int top = lua_gettop(L);
    lua_Unsigned hops = 0;
    lua_pushvalue(L, idx);
    while (hops < CHAIN_MAX && lua_getmetatable(L, -1)) {
        lua_pushstring(L, field);
        if (lua_rawget(L, -2) != LUA_TTABLE)
            break;
        lua_replace(L, -3);
        lua_pop(L, 1);
        hops++;
    }
    lua_settop(L, top);
    return hops;
}

/* Counts the k-th element (from 1) of a loop that reads the table at r and writes the one at w
 * (0: none), each element worth own units besides its chains: every LOOP_CHECK_EVERY, the
 * elements are charged at the chains as they are now, and the budget checked. */
static void loop_tick(lua_State *L, lua_Unsigned k, int r, int w, lua_Unsigned own)
{
    if (k % LOOP_CHECK_EVERY != 0)
        return;
    lua_Unsigned hops = chain_hops(L, r, "__index") + (w != 0 ? chain_hops(L, w, "__newindex") : 0);
    script_vm_charge(L, (int64_t)(LOOP_CHECK_EVERY * (own + hops)));
}

/* table.unpack, as ltablib's, with or without a metatable: a lookup in a table whose keys
 * share one hash chain walks it (review: an unpack of 990,000 missing keys, 55 s). */
static int guarded_unpack(lua_State *L)
{
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer e = lua_isnoneornil(L, 3) ? luaL_len(L, 1) : luaL_checkinteger(L, 3);
    if (i > e)
        return 0;
    lua_Unsigned n = (lua_Unsigned)e - (lua_Unsigned)i;
    if (n >= (unsigned int)INT_MAX || !lua_checkstack(L, (int)(++n)))
        return luaL_error(L, "too many results to unpack");
    for (lua_Unsigned k = 0; k < n; k++) {
        lua_geti(L, 1, (lua_Integer)((lua_Unsigned)i + k));
        loop_tick(L, k + 1, 1, 0, 1);
    }
    return (int)n;
}

/* One element of a concat: a string or a number, else Lua's message. */
static void concat_field(lua_State *L, luaL_Buffer *b, lua_Integer i)
{
    lua_geti(L, 1, i);
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid value (at index %I) in table for 'concat'", (LUAI_UACINT)i);
    luaL_addvalue(b);
}

/* table.concat, as ltablib's. */
static int guarded_concat(lua_State *L)
{
    if (!has_metatable(L, 1))
        return call_original(L);
    size_t lsep;
    const char *sep = luaL_optlstring(L, 2, "", &lsep);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    lua_Integer last = lua_isnoneornil(L, 4) ? luaL_len(L, 1) : luaL_checkinteger(L, 4);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (lua_Unsigned k = 1; i < last; i++, k++) {
        concat_field(L, &b, i);
        luaL_addlstring(&b, sep, lsep);
        loop_tick(L, k, 1, 0, 1);
    }
    if (i == last)
        concat_field(L, &b, i);
    luaL_pushresult(&b);
    return 1;
}

/* Runs a C function that adds keys of the script's choosing to a table (rawset, table.move's
 * destination, insert at a #t+1 that a table's shape can make any number) with its frame
 * marked, so that the allocator treats the node arrays it grows as a Lua store's. Marks are
 * frames, not a flag: a metamethod the function calls runs in frames of its own, and a C
 * buffer it makes (string.rep) is not taken for a table. One that raises leaves its mark
 * until the pcall that catches the error drops the marks of frames gone (unmark_dead). */
static int keyed_call(lua_State *L, lua_CFunction body)
{
    script_vm *vm = script_vm_of(L);
    lua_Debug ar;
    if (vm->nmarks == MARKS_MAX)
        unmark_dead(L); /* marks left by errors the host caught */
    if (vm->nmarks == MARKS_MAX)
        return luaL_error(L, "table functions nested too deeply");
    if (!lua_getstack(L, 0, &ar))
        return body(L);
    vm->marks[vm->nmarks++] = ar.i_ci;
    int n = body(L);
    vm->nmarks--;
    return n;
}

/* Whether the frame ci is on L's stack. */
static bool frame_live(lua_State *L, const void *ci)
{
    lua_Debug ar;
    for (int level = 0; lua_getstack(L, level, &ar); level++)
        if ((const void *)ar.i_ci == ci)
            return true;
    return false;
}

static void unmark_dead(lua_State *L)
{
    script_vm *vm = script_vm_of(L);
    while (vm->nmarks > 0 && !frame_live(L, vm->marks[vm->nmarks - 1]))
        vm->nmarks--;
}

static int sb_rawset(lua_State *L)
{
    return keyed_call(L, raw_set);
}

static int table_insert(lua_State *L)
{
    int nargs = lua_gettop(L);
    check_rw_table(L);
    lua_Integer e = luaL_len(L, 1);
    e = (lua_Integer)((lua_Unsigned)e + 1u); /* the first empty element */
    lua_Integer pos;
    switch (nargs) {
    case 2:
        pos = e;
        break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        if (e > pos) /* a negative #t passes the check above and shifts nothing */
            charge_shift(L, (lua_Unsigned)e - (lua_Unsigned)pos);
        for (lua_Integer i = e; i > pos; i--) {
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
            loop_tick(L, (lua_Unsigned)e - (lua_Unsigned)i + 1, 1, 1, 0); /* shift charged */
        }
        break;
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int sb_table_insert(lua_State *L)
{
    return keyed_call(L, table_insert);
}

static int table_remove(lua_State *L)
{
    check_rw_table(L);
    lua_Integer size = luaL_len(L, 1);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
    if (pos < size)
        charge_shift(L, (lua_Unsigned)size - (lua_Unsigned)pos);
    lua_geti(L, 1, pos);
    for (lua_Unsigned k = 1; pos < size; pos++, k++) {
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
        loop_tick(L, k, 1, 1, 0); /* shift charged */
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

static int sb_table_remove(lua_State *L)
{
    return keyed_call(L, table_remove);
}

/* table.move, as ltablib's, within TABLE_MOVE_MAX elements. */
static int table_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    if (e >= f && (lua_Unsigned)e - (lua_Unsigned)f >= TABLE_MOVE_MAX)
        return luaL_error(L, "table.move: range of more than %d elements", TABLE_MOVE_MAX);
    lua_Integer t = luaL_checkinteger(L, 4);
    int tt = !lua_isnoneornil(L, 5) ? 5 : 1; /* the destination */
    /* tables with or without metatables move here, in this marked frame (keyed_call) */
    if (lua_type(L, 1) != LUA_TTABLE || lua_type(L, tt) != LUA_TTABLE)
        return call_original(L);
    if (e >= f) {
        lua_Integer n = e - f + 1; /* within TABLE_MOVE_MAX */
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        bool forward = t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ));
        for (lua_Integer k = 0; k < n; k++) {
            lua_Integer at = forward ? k : n - 1 - k;
            lua_geti(L, 1, f + at);
            lua_seti(L, tt, t + at);
            loop_tick(L, (lua_Unsigned)k + 1, 1, tt, 1);
        }
    }
    lua_pushvalue(L, tt);
    return 1;
}

static int guarded_table_move(lua_State *L)
{
    return keyed_call(L, table_move);
}

/* table.sort without a comparator compares in C, where no hook runs: 100,000 copies of a
 * 1 MiB string sorted for minutes on a 1 s budget. It is given one that compares as sort
 * does, so that every comparison is a call the hook sees. Upvalue 1: the original. */
static int sort_less(lua_State *L)
{
    lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
    return 1;
}

/* Lua's sort (upvalue 1), run in this frame, marked: sorting writes t[1..#t], and a __len of
 * the script's makes those any keys (review: a sort that grew a table of colliding keys past
 * the cap ran 57 s in one call). guarded_sort calls it as the original. */
static int sort_here(lua_State *L)
{
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

static int sort_marked(lua_State *L)
{
    return keyed_call(L, sort_here);
}

static int guarded_sort(lua_State *L)
{
    if (lua_isnoneornil(L, 2)) {
        lua_settop(L, 1);
        lua_pushcfunction(L, sort_less);
    }
    return call_original(L);
}

/* Replaces lib[name] by wrapper, which has the original as its upvalue 1, the name as its
 * upvalue 2 (for call_original's messages) and its enum retry as upvalue 3. */
static void wrap_field(lua_State *L, int lib, const char *name, lua_CFunction wrapper)
{
    lua_getfield(L, lib, name);
    lua_pushstring(L, name);
    lua_pushinteger(L, retry_of(name));
    lua_pushcclosure(L, wrapper, 3);
    lua_setfield(L, lib, name);
}

/* ---- the environment ------------------------------------------------------------------ */

static const char *const base_names[] = {
    "assert", "error",  "ipairs", "next",     "pairs", "rawequal",
    "rawget", "rawlen", "select", "tonumber", "type",
};
#define BASE_COUNT (sizeof base_names / sizeof base_names[0])

/* The safe base functions are plain C functions without upvalues (lbaselib registers them so),
 * taken once from a scratch state: opening the base library in every state only to empty its
 * globals again was ~2 % of the runners' work. */
static pthread_mutex_t base_mu = PTHREAD_MUTEX_INITIALIZER;
static lua_CFunction base_fns[BASE_COUNT];
static bool base_ready;

/* Entries of the string library: the same in every state (nothing changes it after
 * build_strlib), so counted in the first state only; read by every environment, unlocked. */
static _Atomic int strlib_size;

static int capture_base(lua_State *L)
{
    lua_CFunction *fns = lua_touserdata(L, 1);
    luaL_requiref(L, "_G", luaopen_base, 0);
    for (size_t i = 0; i < BASE_COUNT; i++) {
        lua_getfield(L, -1, base_names[i]);
        fns[i] = lua_tocfunction(L, -1);
        if (fns[i] == NULL || lua_getupvalue(L, -1, 1) != NULL)
            return luaL_error(L, "base function %s is not a plain C function", base_names[i]);
        lua_pop(L, 1);
    }
    return 0;
}

static void *probe_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    size_t *biggest = ud;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (ptr == NULL && osize == 0 && nsize > *biggest)
        *biggest = nsize;
    return realloc(ptr, nsize);
}

static int probe_table(lua_State *L)
{
    lua_createtable(L, 0, PROBE_NODES);
    return 0;
}

/* Node is private to Lua, so its size is read off the allocation of a table's hash part of
 * PROBE_NODES nodes (a new vector comes with osize 0, like an array part). */
static size_t measured_node_size(void)
{
    size_t biggest = 0, size = 0;
    lua_State *L = lua_newstate(probe_alloc, &biggest);
    if (L == NULL)
        return 0;
    biggest = 0;
    lua_pushcfunction(L, probe_table);
    if (lua_pcall(L, 0, 0, 0) == LUA_OK && biggest % PROBE_NODES == 0)
        size = biggest / PROBE_NODES;
    lua_close(L);
    return size != 0 && (size & (size - 1)) != 0 ? size : 0;
}

/* Fills base_fns and node_size once; false when it could not (out of memory), to be tried
 * again. */
static bool base_functions(void)
{
    pthread_mutex_lock(&base_mu);
    if (!base_ready) {
        node_size = measured_node_size();
        if (node_size == 0)
            log_warn("this Lua's table nodes cannot be told from arrays by size: scripts' tables "
                     "are not limited to %u keys, and keys crafted to collide can hold a runner "
                     "thread for minutes in one step",
                     TABLE_NODES_MAX);
        lua_CFunction fns[BASE_COUNT];
        lua_State *L = luaL_newstate();
        if (L != NULL) {
            lua_pushcfunction(L, capture_base);
            lua_pushlightuserdata(L, fns);
            if (lua_pcall(L, 1, 0, 0) == LUA_OK) {
                memcpy(base_fns, fns, sizeof fns);
                base_ready = true;
            }
            lua_close(L);
        }
    }
    bool ok = base_ready;
    pthread_mutex_unlock(&base_mu);
    return ok;
}

/* Opens a standard library into a table on the stack, without registering it anywhere. */
static int open_lib(lua_State *L, lua_CFunction open)
{
    lua_pushcfunction(L, open);
    lua_call(L, 0, 1);
    return lua_gettop(L);
}

static int count_entries(lua_State *L, int t)
{
    t = lua_absindex(L, t);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        lua_pop(L, 1);
        n++;
    }
    return n;
}

/* Pushes a copy of the table at src, which has about n entries. */
static void copy_table(lua_State *L, int src, int n)
{
    src = lua_absindex(L, src);
    /* Sized up front: filling an empty table rehashes it at every power of two. */
    lua_createtable(L, 0, n + 2);
    lua_pushnil(L);
    while (lua_next(L, src) != 0) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

/* string.unpack makes every value of its format in one C loop, interning each string it
 * returns: a lookup in the state's string table, whose chains a script can lengthen with
 * strings it found to collide by probing a table's iteration order (review: 990,000 values,
 * 9.5 s in one call on a 2 s budget). At most UNPACK_MAX values a call; each call is seen by
 * the hook. Values are counted by their options (X takes the next one as its alignment). */
#define UNPACK_MAX 4096

static int guarded_str_unpack(lua_State *L)
{
    size_t n, values = 0;
    const char *fmt = luaL_checklstring(L, 1, &n);
    static const char value_options[] = "bBhHlLjJTiIfdnszc";
    for (size_t i = 0; i < n; i++) {
        if (fmt[i] == 'X')
            i++;
        else if (fmt[i] != '\0' && memchr(value_options, fmt[i], sizeof value_options - 1))
            values++;
    }
    if (values > UNPACK_MAX)
        return luaL_error(L,
                          "string.unpack: more than %d values in one call; unpack in pieces "
                          "(it returns the position to go on from)",
                          UNPACK_MAX);
    return call_original(L);
}

/* Builds the state's real string library. Runs in protected mode. */
static void build_strlib(lua_State *L)
{
    int str = open_lib(L, luaopen_string);
    lua_pushnil(L);
    lua_setfield(L, str, "dump");
    wrap_field(L, str, "find", guarded_find);
    wrap_field(L, str, "match", guarded_match);
    wrap_field(L, str, "gmatch", guarded_gmatch);
    wrap_field(L, str, "gsub", guarded_gsub);
    wrap_field(L, str, "rep", guarded_rep);
    wrap_field(L, str, "format", guarded_format);
    wrap_field(L, str, "unpack", guarded_str_unpack);
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushliteral(L, "string");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
    if (atomic_load_explicit(&strlib_size, memory_order_relaxed) == 0)
        atomic_store_explicit(&strlib_size, count_entries(L, str), memory_order_relaxed);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &strlib_key);
}

/* Makes the math library at lib use the state's one generator: the first environment's
 * becomes it. */
static void share_random(lua_State *L, int lib)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &rand_key) == LUA_TTABLE) {
        lua_getfield(L, -1, "random");
        lua_setfield(L, lib, "random");
        lua_getfield(L, -1, "randomseed");
        lua_setfield(L, lib, "randomseed");
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_createtable(L, 0, 2);
    lua_getfield(L, lib, "random");
    lua_setfield(L, -2, "random");
    lua_getfield(L, lib, "randomseed");
    lua_setfield(L, -2, "randomseed");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rand_key);
}

/* Pushes a fresh environment for one chunk, built from the C libraries (so one chunk changing
 * `string.format` or `table.insert` affects only itself): the safe base functions, a copy of
 * the real string library, new table, math, utf8 and json tables, `load` into this
 * environment, `_G`, and the `panel` proxy. Built rather than copied from a prototype built
 * once per state: the copy cost as much as the building, and a panel mostly loads one chunk.
 * The unsafe base functions never exist in the state, and no library is registered in its real
 * globals or a loaded-modules table: both stay empty. */
static int push_env(lua_State *L)
{
    lua_createtable(L, 0, 32);
    int env = lua_gettop(L);
    for (size_t i = 0; i < BASE_COUNT; i++) {
        lua_pushcfunction(L, base_fns[i]);
        lua_setfield(L, env, base_names[i]);
    }
    lua_pushliteral(L, LUA_VERSION);
    lua_setfield(L, env, "_VERSION");
    static const luaL_Reg guarded[] = {
        {"pcall", sb_pcall},
        {"xpcall", sb_xpcall},
        {"rawset", sb_rawset},
        {"setmetatable", sb_setmetatable},
        {"getmetatable", sb_getmetatable},
        {"collectgarbage", sb_collectgarbage},
        {"print", sb_print},
        {"tostring", sb_tostring},
        {NULL, NULL},
    };
    luaL_setfuncs(L, guarded, 0);

    lua_rawgetp(L, LUA_REGISTRYINDEX, &strlib_key);
    copy_table(L, -1, atomic_load_explicit(&strlib_size, memory_order_relaxed));
    lua_setfield(L, env, "string");
    lua_pop(L, 1);

    int tab = open_lib(L, luaopen_table);
    wrap_field(L, tab, "concat", guarded_concat);
    wrap_field(L, tab, "unpack", guarded_unpack);
    wrap_field(L, tab, "move", guarded_table_move);
    lua_getfield(L, tab, "sort");
    lua_pushcclosure(L, sort_marked, 1);
    lua_setfield(L, tab, "sort");
    wrap_field(L, tab, "sort", guarded_sort);
    lua_pushcfunction(L, sb_table_insert);
    lua_setfield(L, tab, "insert");
    lua_pushcfunction(L, sb_table_remove);
    lua_setfield(L, tab, "remove");
    lua_setfield(L, env, "table");

    int math = open_lib(L, luaopen_math);
    share_random(L, math);
    lua_setfield(L, env, "math");

    open_lib(L, luaopen_utf8);
    lua_setfield(L, env, "utf8");
    script_json_push_lib(L);
    lua_setfield(L, env, "json");

    lua_pushvalue(L, env);
    lua_pushcclosure(L, sb_load, 1);
    lua_setfield(L, env, "load");
    lua_pushvalue(L, env);
    lua_setfield(L, env, "_G");
    /* An empty proxy per chunk: reads reach the one library table through __index, writes
     * fail, and rawset can only shadow a name in the chunk's own proxy. The protected
     * metatable keeps the library table itself out of reach. */
    lua_newtable(L);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &lib_meta_key);
    lua_setmetatable(L, -2);
    lua_setfield(L, env, "panel");
    return 1;
}

typedef struct load_job {
    const char *name, *src;
    size_t len;
    int status;
} load_job;

/* ---- compiled chunks -----------------------------------------------------------------------
 * Every panel loads its strategy (and consensus scripts) into a fresh state; parsing a 10 KiB
 * strategy costs ~100 us, loading its bytecode ~15 us. The bytecode is produced here, by this
 * process, from source text that passed the text-only loader, so loading it back is safe;
 * scripts themselves can never load bytecode. A hit is verified against the full source and
 * chunk name, never by hash alone. */

#define CODE_CACHE_SLOTS 256
#define CODE_CACHE_MAX_BYTES (4 * 1024 * 1024) /* per chunk */
/* Sources and bytecode of all slots: chunks are cached as soon as they compile, uploads that
 * are then refused included, so the slots alone would let 256 large ones pin ~1 GB. */
#define CODE_CACHE_TOTAL_BYTES (32 * 1024 * 1024)

typedef struct code_slot {
    uint64_t hash;
    char *name;
    char *src;
    size_t len;
    char *code;
    size_t code_len;
} code_slot;

/* Read by every panel start on every runner, written on a miss: a lock that readers share
 * (under a mutex the runners queued up behind each other's lookups), preferring a waiting
 * store to new lookups so that one is never starved. */
static pthread_rwlock_t code_mu = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
static code_slot code_cache[CODE_CACHE_SLOTS];
static size_t code_next;  /* round-robin eviction */
static size_t code_bytes; /* of all slots, at most CODE_CACHE_TOTAL_BYTES */

static uint64_t code_hash(const char *name, const char *src, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *c = name; *c != '\0'; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ULL;
    /* Eight bytes a step: every panel start hashes its sources, and a hit is verified by
     * comparing them in full anyway. */
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
    }
    for (; i < len; i++)
        h = (h ^ (unsigned char)src[i]) * 1099511628211ULL;
    return h;
}

static bool code_matches(const code_slot *sl, uint64_t h, const char *name, const char *src,
                         size_t len)
{
    return sl->code != NULL && sl->hash == h && sl->len == len && strcmp(sl->name, name) == 0 &&
           memcmp(sl->src, src, len) == 0;
}

/* Copies the cached bytecode of (name, src) into *code (caller frees); false on a miss. */
static bool code_lookup(uint64_t h, const char *name, const char *src, size_t len, char **code,
                        size_t *code_len)
{
    bool hit = false;
    *code = NULL;
    pthread_rwlock_rdlock(&code_mu);
    for (size_t i = 0; i < CODE_CACHE_SLOTS && !hit; i++) {
        const code_slot *sl = &code_cache[i];
        if (!code_matches(sl, h, name, src, len))
            continue;
        *code = malloc(sl->code_len);
        if (*code != NULL) {
            memcpy(*code, sl->code, sl->code_len);
            *code_len = sl->code_len;
            hit = true;
        }
        break;
    }
    pthread_rwlock_unlock(&code_mu);
    return hit;
}

static void code_store(uint64_t h, const char *name, const char *src, size_t len, const char *code,
                       size_t code_len)
{
    code_slot fresh = {h, strdup(name), malloc(len + 1), len, malloc(code_len), code_len};
    if (fresh.name == NULL || fresh.src == NULL || fresh.code == NULL) {
        free(fresh.name);
        free(fresh.src);
        free(fresh.code);
        return;
    }
    memcpy(fresh.src, src, len);
    fresh.src[len] = '\0';
    memcpy(fresh.code, code, code_len);
    code_slot dropped[CODE_CACHE_SLOTS];
    size_t nd = 0;
    pthread_rwlock_wrlock(&code_mu);
    bool present = false;
    for (size_t i = 0; i < CODE_CACHE_SLOTS && !present; i++)
        present = code_matches(&code_cache[i], h, name, src, len);
    if (present) {
        dropped[nd++] = fresh;
    } else {
        size_t at = code_next;
        dropped[nd++] = code_cache[at];
        code_bytes -= dropped[0].len + dropped[0].code_len;
        code_cache[at] = fresh;
        code_bytes += len + code_len;
        code_next = (at + 1) % CODE_CACHE_SLOTS;
        /* Over the budget, the oldest slots go too. */
        for (size_t i = 1; i < CODE_CACHE_SLOTS && code_bytes > CODE_CACHE_TOTAL_BYTES; i++) {
            code_slot *sl = &code_cache[(at + i) % CODE_CACHE_SLOTS];
            code_bytes -= sl->len + sl->code_len;
            dropped[nd++] = *sl;
            *sl = (code_slot){0};
        }
    }
    pthread_rwlock_unlock(&code_mu);
    for (size_t i = 0; i < nd; i++) {
        free(dropped[i].name);
        free(dropped[i].src);
        free(dropped[i].code);
    }
}

size_t script_vm_code_cache_bytes(void)
{
    pthread_rwlock_rdlock(&code_mu);
    size_t n = code_bytes;
    pthread_rwlock_unlock(&code_mu);
    return n;
}

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud)
{
    (void)L;
    return buf_append(ud, p, sz) == AP_OK ? 0 : 1;
}

/* Compiles a text chunk (or takes its bytecode from the cache) and pushes the function, or
 * the error message when the status is not LUA_OK. */
static int compile_chunk(lua_State *L, const char *name, const char *src, size_t len)
{
    char *code = NULL;
    size_t code_len = 0;
    int status;
    uint64_t h = code_hash(name, src, len);
    if (code_lookup(h, name, src, len, &code, &code_len)) {
        status = luaL_loadbufferx(L, code, code_len, name, "b");
        free(code);
    } else {
        status = refuse_quadratic(L, name, src, len);
        if (status == LUA_OK)
            status = load_text(L, name, src, len);
        if (status == LUA_OK) {
            buf b;
            buf_init(&b, CODE_CACHE_MAX_BYTES);
            if (lua_dump(L, dump_writer, &b, 0) == 0 && b.len > 0)
                code_store(h, name, src, len, b.data, b.len);
            buf_free(&b);
        }
    }
    return status;
}

static int load_protected(lua_State *L)
{
    load_job *job = lua_touserdata(L, 1);
    job->status = compile_chunk(L, job->name, job->src, job->len);
    if (job->status != LUA_OK)
        return 1; /* the message */
    push_env(L);
    if (lua_setupvalue(L, -2, 1) == NULL)
        lua_pop(L, 1);
    return 1;
}

ap_status script_vm_load(script_vm *vm, lua_State *L, const char *chunkname, const char *src,
                         size_t len, ap_err *err)
{
    load_job job = {chunkname, src, len, LUA_OK};
    lua_pushcfunction(L, load_protected);
    lua_pushlightuserdata(L, &job);
    int status = lua_pcall(L, 1, 1, 0);
    if (status == LUA_OK && job.status == LUA_OK)
        return AP_OK;
    script_vm_note(L, status != LUA_OK ? status : job.status);
    char msg[AP_ERR_MSG_MAX];
    script_vm_error_text(L, -1, msg, sizeof msg);
    lua_pop(L, 1);
    if (vm->tripped != TRIP_NONE)
        return ap_err_set(err, AP_LIMIT, "%s", vm->trip_msg[vm->tripped]);
    return ap_err_set(err, AP_INVALID, "%s", msg);
}

static int seed_protected(lua_State *L)
{
    const uint64_t *seed = lua_touserdata(L, 1);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &rand_key) != LUA_TTABLE)
        return 0; /* no chunk loaded, so no generator to seed */
    lua_getfield(L, -1, "randomseed");
    lua_pushinteger(L, (lua_Integer)(*seed & 0x7fffffffffffffffULL));
    lua_call(L, 1, 0);
    return 0;
}

ap_status script_vm_seed(script_vm *vm, uint64_t seed)
{
    lua_pushcfunction(vm->L, seed_protected);
    lua_pushlightuserdata(vm->L, &seed);
    if (lua_pcall(vm->L, 1, 0, 0) != LUA_OK) {
        lua_pop(vm->L, 1);
        return AP_NOMEM;
    }
    return AP_OK;
}

/* ---- lifecycle ------------------------------------------------------------------------ */

static int vm_panic(lua_State *L)
{
    char msg[256];
    script_vm_error_text(L, -1, msg, sizeof msg);
    log_error("lua panic outside a protected call: %s", msg);
    abort();
}

static void vm_warn(void *ud, const char *msg, int tocont)
{
    (void)ud;
    (void)msg;
    (void)tocont; /* warnings are script-controlled text; the sandbox drops them */
}

typedef struct init_job {
    script_vm *vm;
} init_job;

static int lib_readonly(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TSTRING)
        return luaL_error(L, "panel is read-only (cannot set '%s')", lua_tostring(L, 2));
    return luaL_error(L, "panel is read-only");
}

/* Runs the embedded library in a sandbox environment of its own (so a script changing its
 * `string` copy cannot reach the library's) and pushes its table. */
static void load_library(lua_State *L)
{
    size_t len = 0;
    const char *src = embed_get(PANEL_LIB_PATH, &len);
    if (src == NULL)
        luaL_error(L, "%s is not embedded in this build", PANEL_LIB_PATH);
    if (compile_chunk(L, PANEL_LIB_CHUNK, src, len) != LUA_OK)
        lua_error(L);
    push_env(L);
    if (lua_setupvalue(L, -2, 1) == NULL)
        lua_pop(L, 1);
    lua_call(L, 0, 1);
    if (!lua_istable(L, -1))
        luaL_error(L, "%s must return a table", PANEL_LIB_PATH);
}

/* The proxies' __index until the library is loaded. Loading costs ~70 us and ~35 KiB, so a
 * state pays only once a script reads `panel`, inside that script's limits; then __index
 * becomes the library table and later reads are plain lookups. */
static int lib_index(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &lib_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        load_library(L);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &lib_key);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &lib_meta_key);
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "__index");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

static void lib_proxy_meta(lua_State *L)
{
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, lib_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, lib_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "panel");
    lua_setfield(L, -2, "__metatable");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &lib_meta_key);
}

static int vm_init(lua_State *L)
{
    script_vm *vm = lua_touserdata(L, 1);
    build_strlib(L);
    lib_proxy_meta(L);
    lua_settop(L, 1);
    lua_createtable(L, TRIP_COUNT, 0);
    for (int t = TRIP_MEMORY; t < TRIP_COUNT; t++) {
        lua_pushstring(L, vm->trip_msg[t]);
        lua_rawseti(L, -2, t);
    }
    lua_rawsetp(L, LUA_REGISTRYINDEX, &trip_key);
    vm->built = true;
    return 0;
}

void script_limits_default(script_limits *l)
{
    l->memory_bytes = (size_t)64 * 1024 * 1024;
    l->instructions = 200000000;
    l->timeout_ms = 30000;
}

void script_limits_for_check(const script_limits *base, script_limits *out)
{
    *out = *base;
    if (out->instructions > CHECK_INSTRUCTIONS)
        out->instructions = CHECK_INSTRUCTIONS;
    if (out->timeout_ms > CHECK_TIMEOUT_MS)
        out->timeout_ms = CHECK_TIMEOUT_MS;
}

ap_status script_vm_new(const script_limits *lim, script_vm_log_fn log, void *log_ud,
                        script_vm **out, ap_err *err)
{
    *out = NULL;
    script_vm *vm = base_functions() ? calloc(1, sizeof *vm) : NULL;
    if (vm == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    vm->mem_limit = lim->memory_bytes;
    vm->instr_limit = lim->instructions;
    vm->timeout_us = lim->timeout_ms * 1000;
    vm->log = log;
    vm->log_ud = log_ud;
    snprintf(vm->trip_msg[TRIP_MEMORY], sizeof vm->trip_msg[0],
             "memory limit exceeded: the panel's scripts may use at most %zu MiB",
             lim->memory_bytes / (1024 * 1024));
    snprintf(vm->trip_msg[TRIP_INSTRUCTIONS], sizeof vm->trip_msg[0],
             "instruction budget exceeded: a node may run at most %lld instructions "
             "(an endless loop?)",
             (long long)lim->instructions);
    snprintf(vm->trip_msg[TRIP_TIME], sizeof vm->trip_msg[0],
             "time budget exceeded: a node may run at most %lld ms", (long long)lim->timeout_ms);
    snprintf(vm->trip_msg[TRIP_TABLE], sizeof vm->trip_msg[0],
             "table too large: a table may hold at most %u keys besides its array part "
             "(keys 1..n)",
             TABLE_NODES_MAX);
    vm->big.prev = vm->big.next = &vm->big;
    vm->L = lua_newstate(vm_alloc, vm);
    if (vm->L == NULL) {
        big_release(vm);
        pool_release(vm);
        free(vm);
        return ap_err_set(err, AP_NOMEM, "cannot create a Lua state within the memory limit");
    }
    lua_atpanic(vm->L, vm_panic);
    lua_setwarnf(vm->L, vm_warn, NULL);
    /* Everything vm_init builds stays live as long as the state: collecting meanwhile only
     * traces it, again and again while the heap is small. */
    lua_gc(vm->L, LUA_GCSTOP);
    lua_pushcfunction(vm->L, vm_init);
    lua_pushlightuserdata(vm->L, vm);
    if (lua_pcall(vm->L, 1, 0, 0) != LUA_OK) {
        big_release(vm);
        pool_release(vm);
        free(vm);
        return ap_err_set(err, AP_NOMEM, "cannot create a Lua state within the memory limit");
    }
    lua_gc(vm->L, LUA_GCRESTART);
    lua_gc(vm->L, LUA_GCINC, GC_PAUSE, 0, 0);
    lua_sethook(vm->L, vm_hook, LUA_MASKCOUNT | LUA_MASKCALL, HOOK_COUNT);
    *out = vm;
    return AP_OK;
}

void script_vm_free(script_vm *vm)
{
    if (vm == NULL)
        return;
    /* The state is dropped, not closed: every block it holds is in its pool or its list of
     * large blocks, and nothing outside them belongs to it (no io, no C resources behind
     * userdata). lua_close would walk every object only to free it one by one, and would
     * run pending __close handlers (script code) at the end; no script code runs here. */
    big_release(vm);
    pool_release(vm);
    free(vm);
}
