#include "panel/engine.h"

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/jsonx.h"
#include "core/jview.h"
#include "core/log.h"
#include "core/recycle.h"
#include "llm/llm.h"
#include "panel/dryrun.h"
#include "panel/roster.h"
#include "script/host.h"
#include "script/params.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAP_BUCKETS 4096
#define WRITER_BATCH 8192
/* runtime.writer_gather_ms's default, for an engine without a config */
#define WRITER_GATHER_MS 2
/* A writer gathering a batch (see writer_main) stops waiting once this many items are queued. */
#define WRITER_GATHER_ITEMS 512
#define SWEEP_PAGE 256 /* lease candidates a sweep reads at a time */
/* Items of one atomic group: a transition, its events, a checkpoint, and the messages of a
 * batch's answers held back for the checkpoint that journals them (hold_message). */
#define GROUP_MAX (SCRIPT_MAX_ASKS + 8)
#define JOURNAL_KEY_LEN 32
#define MAX_INPUT_BYTES (256 * 1024)
#define SCRATCH_MAX (64 * 1024 * 1024) /* an answer's outcome, an event's data */
#define LEASE_HOST_MAX 64
#define LEASE_MS_DEFAULT 30000 /* runtime.lease_ms's default, for an engine without a config */

/* ---- writer items --------------------------------------------------------------------- */

typedef struct shared_event shared_event;

typedef enum wkind { W_EVENT = 1, W_DELTA, W_CKPT, W_TRANS, W_USAGE, W_SCRIPT } wkind;

typedef struct witem {
    wkind kind;
    bool glued;  /* commits in the same transaction as the item after it */
    bool fenced; /* an event the store refused: its panel's lease is another process's */
    struct witem *next;
    char tenant_id[STORE_ID_MAX];
    char panel_id[STORE_ID_MAX];
    size_t hash;     /* bucket_hash(panel_id), hashed once per panel rather than per item */
    uint64_t serial; /* of the run that wrote it (prun.serial) */
    /* The engine's lease owner id: the store takes a panel's events, checkpoints and status
     * changes only from the holder of its lease. */
    const char *owner;
    /* The fields of the item's kind only: an item is as large as its largest kind, not as all
     * of them together (a hundred items per panel cross from the runners to the writer). */
    union {
        /* W_EVENT; a W_DELTA (an ephemeral token delta, seq 0) keeps its raw text in data and
         * its expert id in expert: the writer builds the JSON once per merged run of deltas,
         * not once per delta. */
        struct {
            int64_t seq;
            char *type, *data;
            const char *expert;
            /* A W_EVENT's texts, where its subscribers read them: the item is the event's
             * allocation, freed with its last reference. */
            shared_event *sh;
        };
        /* W_CKPT */
        store_checkpoint ck;
        /* W_TRANS */
        struct {
            const char *from[4];
            size_t nfrom;
            const char *to;
            char *result, *error;
        };
        /* W_USAGE */
        store_usage usage;
        /* W_SCRIPT */
        store_script script;
    };
    /* The texts of a W_EVENT (with its shared event), W_DELTA, W_CKPT or W_USAGE, in the item's
     * own allocation: one malloc and one free (on another thread) per item instead of up to
     * five. */
    char text[];
} witem;

/* ---- subscriptions -------------------------------------------------------------------- */

/* An event of the writer's current batch, waiting to be queued for its panel's subscribers. */
typedef struct staged_event {
    const char *panel_id; /* the batch's item's, which outlives the stage */
    size_t hash;
    int64_t seq;
    shared_event *sh; /* NULL when it could not be allocated */
} staged_event;

#define STAGED_MAX 256

/* A queued event: the shared copy it reads and its sequence number. */
typedef struct qslot {
    shared_event *sh;
    int64_t seq;
} qslot;

#define SUB_RING_MIN 16

struct panel_sub {
    char panel_id[STORE_ID_MAX];
    pthread_mutex_t mu;
    pthread_cond_t cond;
    /* A circular queue (count slots from first) that doubles up to max: queueing an event for
     * thousands of subscribers allocates nothing. */
    qslot *ring;
    size_t cap, first, count, max;
    bool lagged;
    void (*notify)(void *ud);
    void *ud;
    struct panel_sub *prev, *next; /* in its bucket; doubly linked so leaving is O(1) */
};

/* ---- panels --------------------------------------------------------------------------- */

typedef struct runner runner;
typedef struct prun prun;

typedef struct ask_slot {
    prun *p;
    size_t idx;
    /* borrowed from the panel's script host, which keeps its experts as long as it lives */
    const char *expert_id;
    const char *name;  /* the expert's display name, for expert.message */
    const char *model; /* the expert's own model, NULL: the provider's default */
    llm_call *call;
    bool done;
    char key[JOURNAL_KEY_LEN + 1];
} ask_slot;

struct prun {
    panel_engine *e;
    runner *r;
    char tenant_id[STORE_ID_MAX];
    char panel_id[STORE_ID_MAX];
    size_t hash; /* bucket_hash(panel_id) */
    char *tenant_slug;
    char *tenant_json;
    int64_t max_live; /* the tenant's limit of live panels, 0 for none */
    char *question;
    char *consensus;
    char *params_json;
    char *experts_json;
    script_entry script;
    script_panel *sp;
    char *node;
    int64_t step;
    int64_t next_seq;
    int64_t stored_seq;
    char *node_state;
    int64_t node_start_seq;
    buf journal; /* entries of the node in flight, JSON texts joined by commas */
    /* Why an entry could not be journaled (empty while all were): the panel fails once the
     * batch is in, since its answers could not survive a crash. */
    char journal_error[224];
    int64_t answer_ckpt_ms; /* when an answer last checkpointed the journal (checkpoint_due) */
    /* The expert.message data of answers journaled since the last checkpoint, in the order
     * they came: stored only with a checkpoint that journals them (see hold_message). */
    char **held;
    size_t nheld, capheld;
    llm_timer *held_timer; /* checkpoints them ANSWER_CKPT_MS after the last checkpoint */
    cJSON *replay;         /* the checkpoint's journal, consumed by matching */
    bool *replay_used;
    cJSON *pins;     /* {"<consensus name>": "<version>"} */
    char *pins_text; /* pins printed, NULL until a checkpoint needs it or they change */
    uint64_t seed;   /* the provider seed of this panel, kept in its checkpoints */
    /* The provider and model every call of the panel uses (NULL: the expert's model on the
     * default provider), kept in its checkpoints as llm_text (`,"llm":{...}` or ""), so a
     * panel `askpanel run --provider X` started resumes on X. */
    char *provider, *model, *llm_text;
    char *consensus_src; /* the panel's own algorithm, loaded before the panel starts */
    size_t consensus_len;
    ask_slot *slots;
    const script_ask *asks; /* the batch in flight (owned by sp until the node resumes) */
    size_t nslots, pending;
    char *pending_input;       /* the answer the panel was resumed with, for its await_input */
    witem *group, *group_tail; /* items held back by prun_group_begin */
    size_t group_n;
    bool grouping;
    bool fresh;
    uint64_t serial; /* tells this run from a later one of the same panel in this process */
    llm_timer *timer;
    struct prun *next; /* in the active map */
};

struct runner {
    panel_engine *e;
    int idx;
    pthread_t th;
    llm_loop *loop;
    llm_client *llm;
    bool started;
    /* Panels posted to this runner whose start it has not run yet (see launch). */
    unsigned starting;
    /* Scratch space of the runner's thread for an answer's outcome and its expert.message:
     * built for every answer, kept between answers instead of allocated for each. */
    buf outcome, message;
};

struct panel_engine {
    const config *cfg;
    store *st;
    script_registry *reg;
    char *provider;
    char *model;
    uint64_t seed;
    script_limits lim;
    int64_t max_steps;
    runner *runners;
    int nrunners;
    unsigned rr;
    /* writer */
    pthread_t writer;
    bool writer_started;
    pthread_mutex_t wmu;
    pthread_cond_t wcond;
    witem *whead, *wtail;
    size_t wcount; /* items queued or being written */
    bool wwarned;  /* the overload was logged */
    bool wstop;
    int64_t gather_us; /* runtime.writer_gather_ms */
    int64_t wtook_us;  /* when the writer last took the queue (writer thread only) */
    uint64_t wbatches; /* batches committed, and their items (under wmu) */
    uint64_t witems;
    /* Subscriptions: the map changes only on (un)subscribe; publishing and the runners'
     * has_subscribers only read it, and must not wait for each other (a batch's delivery
     * holds it through every subscriber's notify). Never taken twice by one thread: it
     * prefers writers, so a nested read would wait for a waiting subscribe. */
    pthread_rwlock_t smu;
    panel_sub *subs[MAP_BUCKETS];
    staged_event staged[STAGED_MAX]; /* the writer thread's only */
    size_t nstaged;
    /* script versions already kept in the store by this process: "tenant/kind/name/version" */
    pthread_mutex_t pmu;
    char **pinned;
    size_t npinned, cappinned;
    /* active panels */
    pthread_mutex_t amu;
    prun *active[MAP_BUCKETS];
    size_t nactive;
    uint64_t serials; /* the last prun serial given out (under amu) */
    /* the leases of the panels this engine runs (see "leases") */
    char host[LEASE_HOST_MAX];
    char owner[STORE_LEASE_OWNER_MAX]; /* "<host>:<pid>:<boot id>" */
    int64_t lease_ms;
    pthread_t leaser;
    bool leaser_started;
    pthread_mutex_t lmu;
    pthread_cond_t lcond; /* on CLOCK_MONOTONIC */
    bool lstop;
    bool adopt; /* see panel_engine_opts */
    /* where the next sweep starts: after this candidate, or from the oldest when it has no id */
    store_lease_ref sweep_after;
};

static size_t bucket_hash(const char *id)
{
    size_t h = 2166136261u;
    for (; *id != '\0'; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h;
}

static unsigned bucket_of(const char *id)
{
    return (unsigned)(bucket_hash(id) % MAP_BUCKETS);
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* ---- pinned script versions ------------------------------------------------------------ */

#define PINNED_MAX 4096

/* Keeps a script version in the store once per process (store_script_put is idempotent, so
 * this only saves the write). */
static ap_status pin_script(panel_engine *e, const char *tenant_id, const script_entry *en,
                            ap_err *err)
{
    char key[STORE_ID_MAX + IDS_SHA256_HEX_LEN + 96];
    snprintf(key, sizeof key, "%s/%d/%s/%s", tenant_id, (int)en->kind, en->name, en->version);
    pthread_mutex_lock(&e->pmu);
    bool known = false;
    for (size_t i = 0; i < e->npinned && !known; i++)
        known = strcmp(e->pinned[i], key) == 0;
    pthread_mutex_unlock(&e->pmu);
    if (known)
        return AP_OK;
    store_script sc = {.kind = (store_script_kind)en->kind,
                       .name = en->name,
                       .version = (char *)en->version,
                       .source = en->source,
                       .origin = en->origin};
    snprintf(sc.tenant_id, sizeof sc.tenant_id, "%s", tenant_id);
    ap_status rc = store_script_put(e->st, tenant_id, &sc, false, err);
    if (rc != AP_OK)
        return rc;
    pthread_mutex_lock(&e->pmu);
    if (e->npinned == e->cappinned && e->cappinned < PINNED_MAX) {
        size_t cap = e->cappinned ? e->cappinned * 2 : 64;
        char **n = realloc(e->pinned, cap * sizeof *n);
        if (n != NULL) {
            e->pinned = n;
            e->cappinned = cap;
        }
    }
    if (e->npinned < e->cappinned) {
        e->pinned[e->npinned] = strdup(key);
        if (e->pinned[e->npinned] != NULL)
            e->npinned++;
    }
    pthread_mutex_unlock(&e->pmu);
    return AP_OK;
}

/* ---- writer --------------------------------------------------------------------------- */

static void shared_event_unref(shared_event *sh);

static void witem_free(witem *w)
{
    if (w->kind == W_TRANS) {
        free(w->result);
        free(w->error);
    } else if (w->kind == W_SCRIPT) {
        free(w->script.name);
        free(w->script.version);
        free(w->script.source);
        free(w->script.origin);
    }
    if (w->kind == W_EVENT && w->sh != NULL)
        shared_event_unref(w->sh); /* w is the event's block */
    else
        recycle_free(w);
}

/* The writer queue is bounded: past WRITER_SOFT_MAX items (the store is slower than the
 * runners) ephemeral deltas are dropped, past WRITER_HARD_MAX everything is, with an error
 * log, rather than growing without limit. */
#define WRITER_SOFT_MAX 200000
#define WRITER_HARD_MAX 2000000

/* Queues the n items from head to tail (linked through next) together. */
static void writer_push_list(panel_engine *e, witem *head, witem *tail, size_t n)
{
    bool drop = false;
    pthread_mutex_lock(&e->wmu);
    if (e->wcount >= WRITER_HARD_MAX ||
        (e->wcount >= WRITER_SOFT_MAX && n == 1 && head->kind == W_DELTA)) {
        drop = true;
        if (e->wcount >= WRITER_HARD_MAX && !e->wwarned) {
            e->wwarned = true;
            log_error("event writer: %d items queued, the store is not keeping up; dropping "
                      "writes",
                      WRITER_HARD_MAX);
        }
    } else {
        /* The writer waits only for an empty queue: only the item that ends one can have it
         * to wake. */
        if (e->wtail != NULL) {
            e->wtail->next = head;
            if (e->wcount < WRITER_GATHER_ITEMS && e->wcount + n >= WRITER_GATHER_ITEMS)
                pthread_cond_signal(&e->wcond); /* a gathering writer waits for this many */
        } else {
            e->whead = head;
            pthread_cond_signal(&e->wcond);
        }
        e->wtail = tail;
        e->wcount += n;
    }
    pthread_mutex_unlock(&e->wmu);
    while (drop && head != NULL) {
        witem *next = head->next;
        witem_free(head);
        head = next;
    }
}

static void writer_push(panel_engine *e, witem *w)
{
    writer_push_list(e, w, w, 1);
}

/* One published event, shared by every subscriber queue it sits in: thousands of SSE
 * streams on one panel cost one copy of each event, not one each. */
struct shared_event {
    atomic_int refs;
    _Atomic(void *) memo; /* what a consumer derived once for all (panel_event_memo) */
    char *data;           /* points into text, after the type */
    void *block;          /* the allocation to free: the event's own, or its writer item */
    char text[];
};

_Static_assert(offsetof(witem, text) % _Alignof(shared_event) == 0,
               "a writer item's text space must be able to hold an event");

/* An event with one reference at `at`, which has room for it and its texts, inside block. */
static shared_event *shared_event_init(void *at, void *block, const char *type, size_t tl,
                                       const char *data, size_t dl)
{
    shared_event *sh = at;
    atomic_init(&sh->refs, 1);
    atomic_init(&sh->memo, NULL);
    sh->block = block;
    memcpy(sh->text, type, tl + 1);
    sh->data = sh->text + tl + 1;
    memcpy(sh->data, data, dl + 1);
    return sh;
}

static shared_event *shared_event_new(const char *type, const char *data, size_t dl)
{
    size_t tl = strlen(type);
    void *at = recycle_alloc(sizeof(shared_event) + tl + dl + 2);
    return at != NULL ? shared_event_init(at, at, type, tl, data, dl) : NULL;
}

static void shared_event_unref(shared_event *sh)
{
    if (sh != NULL && atomic_fetch_sub(&sh->refs, 1) == 1) {
        free(atomic_load(&sh->memo));
        recycle_free(sh->block);
    }
}

/* Queues one event for s (its lock held); true when s needs a wake: its queue was empty, or a
 * durable event did not fit and s just became lagged. */
/* Doubles s's ring (up to max) keeping the queue's order; false when out of memory. */
static bool sub_grow(panel_sub *s)
{
    size_t cap = s->cap * 2 < s->max ? s->cap * 2 : s->max;
    qslot *ring = malloc(cap * sizeof *ring);
    if (ring == NULL)
        return false;
    for (size_t i = 0; i < s->count; i++)
        ring[i] = s->ring[(s->first + i) % s->cap];
    free(s->ring);
    s->ring = ring;
    s->cap = cap;
    s->first = 0;
    return true;
}

static bool sub_push(panel_sub *s, const staged_event *st)
{
    if (s->lagged)
        return false;
    if (st->sh == NULL || s->count == s->max || (s->count == s->cap && !sub_grow(s))) {
        if (st->seq <= 0)
            return false; /* an ephemeral event is dropped, never replayed */
        s->lagged = true;
        return true;
    }
    s->ring[(s->first + s->count) % s->cap] = (qslot){st->sh, st->seq};
    atomic_fetch_add(&st->sh->refs, 1);
    /* A consumer drains its whole queue once woken, so only the first event into an empty
     * queue needs a wake. */
    return s->count++ == 0;
}

#define STAGED_SLOTS (2 * STAGED_MAX)
#define STAGED_END UINT16_MAX

_Static_assert(STAGED_MAX < STAGED_END, "staged indexes must fit a uint16_t");
_Static_assert((STAGED_SLOTS & (STAGED_SLOTS - 1)) == 0, "STAGED_SLOTS must be a power of 2");

/* Links the staged events of each panel in staging order (next[]) with one hash probe per
 * event, instead of comparing every event with every other; head[i] marks the first of its
 * panel. */
static void staged_group(const staged_event *st, size_t n, uint16_t *next, bool *head)
{
    uint16_t slot[STAGED_SLOTS], tail[STAGED_MAX];
    memset(slot, 0xff, sizeof slot);
    for (size_t i = 0; i < n; i++) {
        size_t h = st[i].hash & (STAGED_SLOTS - 1);
        while (slot[h] != STAGED_END && (st[slot[h]].hash != st[i].hash ||
                                         strcmp(st[slot[h]].panel_id, st[i].panel_id) != 0))
            h = (h + 1) & (STAGED_SLOTS - 1);
        next[i] = STAGED_END;
        head[i] = slot[h] == STAGED_END;
        if (head[i]) {
            slot[h] = (uint16_t)i;
            tail[i] = (uint16_t)i;
        } else {
            next[tail[slot[h]]] = (uint16_t)i;
            tail[slot[h]] = (uint16_t)i;
        }
    }
}

/* Hands the staged events to their subscribers. Each subscriber takes all of the batch's events
 * of its panel under one lock and with at most one wake: with thousands of SSE streams on a
 * panel, a stream that drained its queue between two events of a batch would otherwise be
 * woken, and send, once per event. */
/* Hands the run of events st[i], st[next[i]], ... (all of one panel) to that panel's
 * subscribers. Called with e->smu held (to read). */
static void deliver_run(panel_engine *e, const staged_event *st, const uint16_t *next, size_t i)
{
    for (panel_sub *s = e->subs[st[i].hash % MAP_BUCKETS]; s != NULL; s = s->next) {
        if (strcmp(s->panel_id, st[i].panel_id) != 0)
            continue;
        bool wake = false;
        pthread_mutex_lock(&s->mu);
        for (size_t k = i; k != STAGED_END; k = next[k])
            wake |= sub_push(s, &st[k]);
        /* a waiting consumer waits for an empty queue to fill or to lag: only a push that did
         * either can have one to wake */
        if (wake)
            pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->mu);
        if (s->notify != NULL && wake)
            s->notify(s->ud);
    }
}

/* Hands a stored event that did not go through the writer (a cancel of a panel no runner
 * holds) to the panel's subscribers here, whose streams would otherwise wait on for it. */
static void publish_now(panel_engine *e, const store_event *ev)
{
    staged_event st = {.panel_id = ev->panel_id,
                       .hash = bucket_hash(ev->panel_id),
                       .seq = ev->seq,
                       .sh = shared_event_new(ev->type, ev->data, strlen(ev->data))};
    if (st.sh == NULL)
        return;
    static const uint16_t end = STAGED_END;
    pthread_rwlock_rdlock(&e->smu);
    deliver_run(e, &st, &end, 0);
    pthread_rwlock_unlock(&e->smu);
    shared_event_unref(st.sh);
}

static void publish_flush(panel_engine *e)
{
    staged_event *st = e->staged;
    size_t n = e->nstaged;
    uint16_t next[STAGED_MAX];
    bool head[STAGED_MAX];
    staged_group(st, n, next, head);
    pthread_rwlock_rdlock(&e->smu);
    for (size_t i = 0; i < n; i++)
        if (head[i])
            deliver_run(e, st, next, i);
    pthread_rwlock_unlock(&e->smu);
    for (size_t i = 0; i < n; i++)
        shared_event_unref(st[i].sh); /* the stage's own reference */
    e->nstaged = 0;
}

/* Stages an event of the writer's batch for the panel's subscribers (publish_flush delivers,
 * to the subscribers the panel has then). Writer thread only. */
static void publish(panel_engine *e, const staged_event *ev)
{
    if (e->nstaged == STAGED_MAX)
        publish_flush(e);
    e->staged[e->nstaged++] = *ev;
}

/* Whether the writer stores w through store_write_batch (deltas, seq 0, are never stored). */
static bool batch_item(const witem *w)
{
    return (w->kind == W_EVENT && w->seq > 0) || w->kind == W_CKPT || w->kind == W_TRANS ||
           w->kind == W_USAGE;
}

/* The store's view of w; its strings stay owned by w. */
static void store_write_of(const witem *w, store_write *out)
{
    memset(out, 0, sizeof *out);
    if (w->kind == W_EVENT) {
        out->kind = STORE_WRITE_EVENT;
        memcpy(out->u.event.panel_id, w->panel_id, sizeof out->u.event.panel_id);
        out->u.event.seq = w->seq;
        out->u.event.type = w->type;
        out->u.event.data = w->data;
        out->u.event.owner = w->owner;
    } else if (w->kind == W_CKPT) {
        out->kind = STORE_WRITE_CHECKPOINT;
        out->u.checkpoint = w->ck;
        out->u.checkpoint.owner = w->owner;
    } else if (w->kind == W_TRANS) {
        out->kind = STORE_WRITE_TRANSITION;
        memcpy(out->u.transition.panel_id, w->panel_id, sizeof out->u.transition.panel_id);
        out->u.transition.from = w->from;
        out->u.transition.n_from = w->nfrom;
        out->u.transition.to = w->to;
        out->u.transition.result = w->result;
        out->u.transition.error = w->error;
        out->u.transition.owner = w->owner;
    } else {
        out->kind = STORE_WRITE_USAGE;
        out->u.usage = w->usage;
    }
}

static void log_skipped_transition(const witem *w)
{
    /* e.g. cancelled meanwhile: the other writer won */
    log_msg(LOG_LEVEL_DEBUG, &(log_fields){.tenant_id = w->tenant_id, .panel_id = w->panel_id},
            "event writer: transition to '%s' skipped, the panel's status changed meanwhile",
            w->to);
}

#define STORE_RETRY_FIRST_MS 50
#define STORE_RETRY_MAX_MS 2000
#define STORE_RETRY_STOPPING_MS 10000 /* how long a stopping engine still waits for its store */
#define STORE_RETRY_TELL_MS 60000

static bool store_transient(ap_status rc)
{
    return rc == AP_IO || rc == AP_AGAIN || rc == AP_TIMEOUT || rc == AP_NOMEM;
}

/* store_write_batch_trusted, tried again while the store is unavailable (busy, restarting,
 * unreachable) rather than dropping durable writes: events, usage and checkpoints wait in the
 * writer until it is back, however long that takes, except for an engine that is stopping,
 * which gives up after STORE_RETRY_STOPPING_MS. */
static ap_status write_durably(panel_engine *e, const char *tenant_id, store_write *ws, size_t n,
                               ap_err *err)
{
    int64_t since = clock_mono_ms(), waited = 0, pause = STORE_RETRY_FIRST_MS, told = -1;
    for (;;) {
        ap_status rc = store_write_batch_trusted(e->st, tenant_id, ws, n, err);
        waited = clock_mono_ms() - since; /* the store's own busy waits included */
        pthread_mutex_lock(&e->wmu);
        bool stopping = e->wstop;
        pthread_mutex_unlock(&e->wmu);
        if (!store_transient(rc) || (stopping && waited >= STORE_RETRY_STOPPING_MS)) {
            if (told >= 0 && rc == AP_OK)
                log_msg(LOG_LEVEL_WARN, &(log_fields){.tenant_id = tenant_id},
                        "event writer: the store took writes again after %lld ms",
                        (long long)waited);
            return rc;
        }
        /* said at once, then every minute: an outage that does not end must show */
        if (told < 0 || waited - told >= STORE_RETRY_TELL_MS) {
            log_msg(LOG_LEVEL_WARN, &(log_fields){.tenant_id = tenant_id},
                    "event writer: the store is unavailable (%s); holding %zu writes for %lld "
                    "ms now and trying again",
                    err->msg, n, (long long)waited);
            told = waited;
        }
        usleep((useconds_t)pause * 1000);
        pause = pause * 2 < STORE_RETRY_MAX_MS ? pause * 2 : STORE_RETRY_MAX_MS;
    }
}

/* One store call per item, for a tenant's batch the store refused as a whole: whatever can land
 * does. A replayed event or a lost transition race is expected, not an error. */
static void commit_one_by_one(panel_engine *e, witem **items, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const witem *w = items[i];
        store_write one;
        store_write_of(w, &one);
        ap_err err = {0};
        ap_status rc = write_durably(e, w->tenant_id, &one, 1, &err);
        items[i]->fenced = rc == AP_OK && one.result == AP_DENIED;
        if (rc == AP_OK && one.result == AP_CONFLICT && w->kind == W_TRANS)
            log_skipped_transition(w);
        else if (rc != AP_OK)
            log_msg(LOG_LEVEL_ERROR,
                    &(log_fields){.tenant_id = w->tenant_id, .panel_id = w->panel_id},
                    "event writer: %s", err.msg);
    }
}

static void publish_stored_end(panel_engine *e, const store_panel_ref *ref);

/* Stores items (all of one tenant) in one transaction; ws is scratch space for n writes. */
static void commit_tenant(panel_engine *e, witem **items, size_t n, store_write *ws)
{
    for (size_t i = 0; i < n; i++)
        store_write_of(items[i], &ws[i]);
    ap_err err = {0};
    /* Trusted: every JSON text here was encoded by the engine (cJSON, the script host's
     * encoder or the journal's own escaping), so the store does not parse it again. */
    ap_status rc = write_durably(e, items[0]->tenant_id, ws, n, &err);
    if (store_transient(rc)) {
        /* only an engine stopping while its store is down gets here */
        log_msg(LOG_LEVEL_ERROR, &(log_fields){.tenant_id = items[0]->tenant_id},
                "event writer: %zu writes lost, the store is unavailable (%s)", n, err.msg);
        return;
    }
    if (rc != AP_OK) {
        log_msg(LOG_LEVEL_WARN, &(log_fields){.tenant_id = items[0]->tenant_id},
                "event writer: batch of %zu writes refused (%s); writing them one by one", n,
                err.msg);
        commit_one_by_one(e, items, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        items[i]->fenced = ws[i].result == AP_DENIED;
        if (ws[i].result == AP_CONFLICT && items[i]->kind == W_TRANS) {
            log_skipped_transition(items[i]);
            /* the panel ended elsewhere (a cancel through another process) while this runner
             * finished it: its subscribers here get the stored end, or would wait on */
            store_panel_ref ref;
            memcpy(ref.tenant_id, items[i]->tenant_id, sizeof ref.tenant_id);
            memcpy(ref.panel_id, items[i]->panel_id, sizeof ref.panel_id);
            publish_stored_end(e, &ref);
        }
    }
}

_Static_assert(WRITER_BATCH + GROUP_MAX <= STORE_WRITE_MAX,
               "a writer batch (and a group that ends it) must fit one store_write_batch");

/* Drops (sets to NULL) the checkpoints of all[0..n) that a later checkpoint of the same panel in
 * the batch replaces. The store keeps only a panel's last checkpoint and a tenant's writes of a
 * batch commit in one transaction, so a replaced one could never be read: a node's journal
 * checkpoint and the next node's checkpoint usually land in the same batch, and the first is
 * the larger. Without memory for the set nothing is dropped. */
static void drop_replaced_checkpoints(witem **all, size_t n)
{
    size_t cap = 64;
    while (cap < 2 * n)
        cap *= 2;
    const witem **seen = calloc(cap, sizeof *seen);
    if (seen == NULL)
        return;
    for (size_t i = n; i-- > 0;) {
        const witem *w = all[i];
        if (w->kind != W_CKPT)
            continue;
        size_t h = w->hash & (cap - 1);
        while (seen[h] != NULL && (strcmp(seen[h]->panel_id, w->panel_id) != 0 ||
                                   strcmp(seen[h]->tenant_id, w->tenant_id) != 0))
            h = (h + 1) & (cap - 1);
        if (seen[h] != NULL)
            all[i] = NULL;
        else
            seen[h] = w;
    }
    free(seen);
}

/* Groups the durable items of a batch per tenant (almost always one) and commits each group in
 * one store transaction: events, checkpoints (the store keeps only a panel's last), status
 * changes and usage together, so a status change is durable before its event is published. */
static void commit_writes(panel_engine *e, witem *list)
{
    size_t n = 0;
    for (witem *w = list; w != NULL; w = w->next)
        n += batch_item(w);
    if (n == 0)
        return;
    witem **all = malloc(n * sizeof *all);
    witem **group = malloc(n * sizeof *group);
    store_write *ws = malloc(n * sizeof *ws);
    if (all == NULL || group == NULL || ws == NULL) {
        log_error("event writer: out of memory; %zu writes lost", n);
        goto out;
    }
    size_t k = 0;
    for (witem *w = list; w != NULL; w = w->next)
        if (batch_item(w))
            all[k++] = w;
    drop_replaced_checkpoints(all, n);
    for (size_t i = 0; i < n; i++) {
        if (all[i] == NULL)
            continue;
        const char *tenant = all[i]->tenant_id;
        size_t m = 0;
        for (size_t j = i; j < n; j++) {
            if (all[j] == NULL || strcmp(all[j]->tenant_id, tenant) != 0)
                continue;
            group[m++] = all[j];
            all[j] = NULL;
        }
        commit_tenant(e, group, m, ws);
    }
out:
    free(all);
    free(group);
    free(ws);
}

#define DELTA_ACCS 64
#define DELTA_MERGE_MAX (64 * 1024)

/* The token deltas of one expert of one panel within a writer batch, merged into one event:
 * a subscriber that is behind gets one frame instead of dozens, which is what keeps thousands
 * of SSE subscribers on one panel cheap. Durable events are never merged or reordered. The
 * batch's items outlive it, so a run of one delta (the usual case) copies nothing. */
typedef struct delta_acc {
    const witem *w;   /* a delta of the run: its panel and expert */
    const char *only; /* the run's text while it is one piece, else NULL */
    buf text;         /* the run's text once a second piece joined */
} delta_acc;

static ap_status json_str(buf *b, const char *s);

/* Publishes {"expert":..,"delta":..} on w's panel; json is the batch's scratch space. */
static void delta_publish(panel_engine *e, buf *json, const witem *w, const char *text)
{
    buf_reset(json);
    ap_status rc = buf_puts(json, "{\"expert\":");
    if (rc == AP_OK)
        rc = json_str(json, w->expert);
    if (rc == AP_OK)
        rc = buf_puts(json, ",\"delta\":");
    if (rc == AP_OK)
        rc = json_str(json, text);
    if (rc == AP_OK)
        rc = buf_puts(json, "}");
    if (rc == AP_OK)
        publish(e, &(staged_event){.panel_id = w->panel_id,
                                   .hash = w->hash,
                                   .sh = shared_event_new("expert.delta", json->data, json->len)});
}

static void delta_flush_one(panel_engine *e, buf *json, delta_acc *a)
{
    const char *text = a->only != NULL ? a->only : a->text.data;
    delta_publish(e, json, a->w, text != NULL ? text : "");
    a->only = NULL;
    buf_free(&a->text);
}

/* Publishes (in order) and drops the merged deltas of one panel, or of all when panel_id is
 * NULL. */
static void delta_flush(panel_engine *e, buf *json, delta_acc *acc, size_t *n, const char *panel_id)
{
    size_t kept = 0;
    for (size_t i = 0; i < *n; i++) {
        if (panel_id == NULL || strcmp(acc[i].w->panel_id, panel_id) == 0)
            delta_flush_one(e, json, &acc[i]);
        else
            acc[kept++] = acc[i];
    }
    *n = kept;
}

/* Adds a piece to a's run; AP_LIMIT (a unchanged) past DELTA_MERGE_MAX. */
static ap_status delta_add(delta_acc *a, const char *piece)
{
    ap_status rc = AP_OK;
    if (a->only == NULL && a->text.data == NULL) {
        if (strlen(piece) > DELTA_MERGE_MAX)
            return AP_LIMIT;
        a->only = piece;
        return AP_OK;
    }
    if (a->only != NULL) {
        rc = buf_reserve(&a->text, strlen(a->only) + strlen(piece));
        if (rc == AP_OK)
            rc = buf_puts(&a->text, a->only);
        if (rc != AP_OK)
            return rc;
        a->only = NULL;
    }
    return buf_puts(&a->text, piece);
}

/* Adds a delta event to its accumulator; false when it cannot be merged (publish it as is). */
static bool delta_merge(panel_engine *e, buf *json, delta_acc *acc, size_t *n, const witem *w)
{
    size_t i = 0;
    while (i < *n && (acc[i].w->hash != w->hash || strcmp(acc[i].w->panel_id, w->panel_id) != 0 ||
                      strcmp(acc[i].w->expert, w->expert) != 0))
        i++;
    if (i == *n) {
        if (*n == DELTA_ACCS)
            delta_flush(e, json, acc, n, NULL);
        i = *n;
        acc[i] = (delta_acc){.w = w};
        buf_init(&acc[i].text, DELTA_MERGE_MAX);
        (*n)++;
    }
    if (delta_add(&acc[i], w->data) == AP_OK)
        return true;
    /* Full: send what is there, start again with this piece. */
    delta_flush_one(e, json, &acc[i]);
    acc[i].w = w;
    if (delta_add(&acc[i], w->data) == AP_OK)
        return true;
    buf_free(&acc[i].text);
    acc[i] = acc[--*n];
    return false;
}

static void publish_batch(panel_engine *e, witem *list)
{
    delta_acc acc[DELTA_ACCS];
    size_t n = 0;
    buf json;
    buf_init(&json, SCRATCH_MAX);
    for (witem *w = list; w != NULL; w = w->next) {
        if (w->kind == W_DELTA) {
            if (!delta_merge(e, &json, acc, &n, w)) {
                delta_flush(e, &json, acc, &n, w->panel_id);
                delta_publish(e, &json, w, w->data);
            }
            continue;
        }
        if (w->kind != W_EVENT || w->fenced) /* a fenced event is not the panel's: not shown */
            continue;
        delta_flush(e, &json, acc, &n, w->panel_id);
        atomic_fetch_add(&w->sh->refs, 1); /* the stage's */
        publish(e, &(staged_event){
                       .panel_id = w->panel_id, .hash = w->hash, .seq = w->seq, .sh = w->sh});
    }
    delta_flush(e, &json, acc, &n, NULL);
    publish_flush(e);
    buf_free(&json);
}

static void stop_fenced(panel_engine *e, const witem *list);

static void process_batch(panel_engine *e, witem *list)
{
    if (e->st != NULL) {
        /* Scripts first: a durable checkpoint never pins a version the store lacks. */
        for (witem *w = list; w != NULL; w = w->next) {
            if (w->kind != W_SCRIPT)
                continue;
            ap_err err = {0};
            if (store_script_put(e->st, w->tenant_id, &w->script, false, &err) != AP_OK)
                log_msg(LOG_LEVEL_ERROR,
                        &(log_fields){.tenant_id = w->tenant_id, .panel_id = w->panel_id},
                        "event writer: %s", err.msg);
        }
        commit_writes(e, list);
        stop_fenced(e, list);
    }
    publish_batch(e, list);
    while (list != NULL) {
        witem *n = list->next;
        witem_free(list);
        list = n;
    }
}

static void *writer_main(void *arg)
{
    panel_engine *e = arg;
    pthread_setname_np(pthread_self(), "ap-writer");
    for (;;) {
        pthread_mutex_lock(&e->wmu);
        while (e->whead == NULL && !e->wstop)
            pthread_cond_wait(&e->wcond, &e->wmu);
        if (e->whead == NULL && e->wstop) {
            pthread_mutex_unlock(&e->wmu);
            break;
        }
        /* Group commit: every commit writes the pages its batch changed to the WAL, and a
         * burst of panel starts made one every ~150 us, of a few items each, writing the same
         * pages over and over. The writer takes the queue at most once per gather_us unless
         * WRITER_GATHER_ITEMS are waiting; after a quiet spell it takes a write at once. */
        while (e->gather_us > 0 && !e->wstop && e->wcount < WRITER_GATHER_ITEMS &&
               clock_mono_us() - e->wtook_us < e->gather_us) {
            struct timespec at = clock_mono_at(e->wtook_us + e->gather_us);
            pthread_cond_timedwait(&e->wcond, &e->wmu, &at);
        }
        e->wtook_us = clock_mono_us();
        /* Everything queued, taken at once: walking the queue to cut a batch off it under the
         * lock (thousands of items, cold in the cache) held up the runners queueing more. */
        witem *list = e->whead;
        e->whead = e->wtail = NULL;
        pthread_mutex_unlock(&e->wmu);
        while (list != NULL) {
            /* Up to WRITER_BATCH items, a group never split: one group commit. */
            witem *last = list;
            size_t n = 1;
            while (last->next != NULL && (n < WRITER_BATCH || last->glued)) {
                last = last->next;
                n++;
            }
            witem *rest = last->next;
            last->next = NULL;
            process_batch(e, list);
            list = rest;
            /* counted until written, so that the queue's bounds hold what waits in memory */
            pthread_mutex_lock(&e->wmu);
            e->wcount -= n;
            e->wbatches++;
            e->witems += n;
            if (e->wcount < WRITER_SOFT_MAX)
                e->wwarned = false;
            pthread_mutex_unlock(&e->wmu);
        }
    }
    return NULL;
}

/* ---- subscriptions -------------------------------------------------------------------- */

void panel_event_clear(panel_event *ev)
{
    if (ev == NULL)
        return;
    shared_event_unref(ev->shared);
    ev->shared = NULL;
    ev->type = ev->data = NULL;
}

const void *panel_event_memo(const panel_event *ev, void *(*make)(const panel_event *ev))
{
    shared_event *sh = ev->shared;
    if (sh == NULL)
        return NULL;
    void *have = atomic_load_explicit(&sh->memo, memory_order_acquire);
    if (have != NULL)
        return have;
    /* Streams on several threads may race to build it: one wins, the others drop theirs. */
    void *mine = make(ev);
    if (mine == NULL)
        return NULL;
    if (atomic_compare_exchange_strong_explicit(&sh->memo, &have, mine, memory_order_acq_rel,
                                                memory_order_acquire))
        return mine;
    free(mine);
    return have;
}

ap_status panel_engine_subscribe(panel_engine *e, const char *tenant_id, const char *panel_id,
                                 size_t max_queued, void (*notify)(void *ud), void *ud,
                                 panel_sub **out, ap_err *err)
{
    *out = NULL;
    if (e->st != NULL) {
        store_panel row = {0};
        ap_status rc = store_panel_get(e->st, tenant_id, panel_id, &row, err);
        store_panel_free(&row);
        if (rc != AP_OK)
            return rc;
    }
    panel_sub *s = calloc(1, sizeof *s);
    if (s == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    snprintf(s->panel_id, sizeof s->panel_id, "%s", panel_id);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->max = max_queued > 0 ? max_queued : 1;
    s->cap = s->max < SUB_RING_MIN ? s->max : SUB_RING_MIN;
    s->ring = malloc(s->cap * sizeof *s->ring);
    if (s->ring == NULL) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cond);
        free(s);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    s->notify = notify;
    s->ud = ud;
    unsigned b = bucket_of(s->panel_id);
    pthread_rwlock_wrlock(&e->smu);
    s->next = e->subs[b];
    if (s->next != NULL)
        s->next->prev = s;
    e->subs[b] = s;
    pthread_rwlock_unlock(&e->smu);
    *out = s;
    return AP_OK;
}

static void sub_drain(panel_sub *s)
{
    for (size_t i = 0; i < s->count; i++)
        shared_event_unref(s->ring[(s->first + i) % s->cap].sh);
    s->first = s->count = 0;
}

void panel_engine_unsubscribe(panel_engine *e, panel_sub *s)
{
    if (s == NULL)
        return;
    pthread_rwlock_wrlock(&e->smu);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        e->subs[bucket_of(s->panel_id)] = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    pthread_rwlock_unlock(&e->smu);
    sub_drain(s);
    free(s->ring);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
}

int panel_sub_next(panel_sub *s, panel_event *ev, int timeout_ms)
{
    memset(ev, 0, sizeof *ev);
    pthread_mutex_lock(&s->mu);
    if (s->count == 0 && !s->lagged && timeout_ms != 0) {
        if (timeout_ms < 0) {
            while (s->count == 0 && !s->lagged)
                pthread_cond_wait(&s->cond, &s->mu);
        } else {
            struct timespec ts = clock_deadline_ms(timeout_ms);
            while (s->count == 0 && !s->lagged &&
                   pthread_cond_timedwait(&s->cond, &s->mu, &ts) == 0) {
            }
        }
    }
    int r = 0;
    if (s->lagged) {
        sub_drain(s);
        s->lagged = false;
        r = -1;
    } else if (s->count > 0) {
        qslot q = s->ring[s->first];
        s->first = (s->first + 1) % s->cap;
        s->count--;
        memcpy(ev->panel_id, s->panel_id, sizeof ev->panel_id);
        ev->seq = q.seq;
        ev->type = q.sh->text;
        ev->data = q.sh->data;
        ev->shared = q.sh;
        r = 1;
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* ---- the active map ------------------------------------------------------------------- */

static prun *active_find_locked(panel_engine *e, const char *panel_id)
{
    for (prun *p = e->active[bucket_of(panel_id)]; p != NULL; p = p->next)
        if (strcmp(p->panel_id, panel_id) == 0)
            return p;
    return NULL;
}

/* Registers p unless the panel is already active; false then. */
static bool active_add(panel_engine *e, prun *p)
{
    pthread_mutex_lock(&e->amu);
    bool ok = active_find_locked(e, p->panel_id) == NULL;
    if (ok) {
        p->serial = ++e->serials;
        unsigned b = bucket_of(p->panel_id);
        p->next = e->active[b];
        e->active[b] = p;
        e->nactive++;
    }
    pthread_mutex_unlock(&e->amu);
    return ok;
}

static void active_remove(panel_engine *e, prun *p)
{
    pthread_mutex_lock(&e->amu);
    for (prun **pp = &e->active[bucket_of(p->panel_id)]; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            e->nactive--;
            break;
        }
    }
    pthread_mutex_unlock(&e->amu);
}

bool panel_engine_runs(panel_engine *e, const char *panel_id)
{
    pthread_mutex_lock(&e->amu);
    bool runs = active_find_locked(e, panel_id) != NULL;
    pthread_mutex_unlock(&e->amu);
    return runs;
}

size_t panel_engine_active(panel_engine *e)
{
    pthread_mutex_lock(&e->amu);
    size_t n = e->nactive;
    pthread_mutex_unlock(&e->amu);
    return n;
}

void panel_engine_stats_get(panel_engine *e, panel_engine_stats *out)
{
    out->active = panel_engine_active(e);
    pthread_mutex_lock(&e->wmu);
    out->queued = e->wcount;
    out->batches = e->wbatches;
    out->written = e->witems;
    pthread_mutex_unlock(&e->wmu);
}

/* ---- panel helpers (runner thread) ---------------------------------------------------- */

static void prun_free(prun *p)
{
    if (p == NULL)
        return;
    assert(!p->grouping);
    for (size_t i = 0; i < p->nslots; i++)
        llm_cancel(p->slots[i].call);
    free(p->slots);
    if (p->timer != NULL && p->r != NULL)
        llm_loop_timer_cancel(p->r->loop, p->timer);
    if (p->held_timer != NULL && p->r != NULL)
        llm_loop_timer_cancel(p->r->loop, p->held_timer);
    for (size_t i = 0; i < p->nheld; i++)
        free(p->held[i]);
    free(p->held);
    script_panel_free(p->sp);
    script_entry_free(&p->script);
    free(p->tenant_slug);
    free(p->tenant_json);
    free(p->question);
    free(p->consensus);
    free(p->provider);
    free(p->model);
    free(p->llm_text);
    free(p->params_json);
    free(p->experts_json);
    free(p->node);
    free(p->node_state);
    free(p->pending_input);
    free(p->consensus_src);
    free(p->replay_used);
    buf_free(&p->journal);
    cJSON_Delete(p->replay);
    cJSON_Delete(p->pins);
    free(p->pins_text);
    free(p);
}

static void prun_release(prun *p)
{
    active_remove(p->e, p);
    prun_free(p);
}

/* A new item with room for text_cap bytes of texts (see witem_text). */
static witem *witem_new(const prun *p, wkind kind, size_t text_cap)
{
    /* the text space is written whole by witem_text: only the fields need zeroing */
    witem *w = recycle_alloc(sizeof *w + text_cap);
    if (w == NULL)
        return NULL;
    memset(w, 0, sizeof *w);
    w->kind = kind;
    memcpy(w->tenant_id, p->tenant_id, sizeof w->tenant_id);
    memcpy(w->panel_id, p->panel_id, sizeof w->panel_id);
    w->hash = p->hash;
    w->serial = p->serial;
    w->owner = p->e->owner;
    return w;
}

/* Copies s (len bytes) into w's text space at *used, which the caller sized at witem_new. */
static char *witem_text(witem *w, size_t *used, const char *s, size_t len)
{
    char *t = w->text + *used;
    memcpy(t, s, len);
    t[len] = '\0';
    *used += len + 1;
    return t;
}

/* Queues an event; durable ones get the next seq. During a replay, events whose seq is
 * already stored are not written again. */
/* Queues w, or holds it in the panel's open group (prun_group_begin) to go with the rest. */
static void prun_push(prun *p, witem *w)
{
    if (!p->grouping) {
        writer_push(p->e, w);
        return;
    }
    assert(p->group_n < GROUP_MAX);
    if (p->group_tail != NULL) {
        p->group_tail->glued = true;
        p->group_tail->next = w;
    } else {
        p->group = w;
    }
    p->group_tail = w;
    p->group_n++;
}

/* Between begin and end the panel's writes are held and then queued as one group, which the
 * writer commits in one transaction: a status change is never stored without the events and
 * checkpoint that go with it (awaiting_input without its input.requested could never be
 * answered from the command line after a crash). */
static void prun_group_begin(prun *p)
{
    p->grouping = true;
}

static void prun_group_end(prun *p)
{
    p->grouping = false;
    if (p->group != NULL)
        writer_push_list(p->e, p->group, p->group_tail, p->group_n);
    p->group = p->group_tail = NULL;
    p->group_n = 0;
}

static ap_status prun_emit(prun *p, const char *type, const char *data, bool durable,
                           int64_t *seq_out)
{
    int64_t seq = durable ? p->next_seq++ : 0;
    if (seq_out != NULL)
        *seq_out = seq;
    if (durable && seq <= p->stored_seq)
        return AP_OK;
    size_t tl = strlen(type), dl = strlen(data);
    witem *w = witem_new(p, W_EVENT, sizeof(shared_event) + tl + dl + 2);
    if (w == NULL)
        return AP_NOMEM;
    w->seq = seq;
    w->sh = shared_event_init(w->text, w, type, tl, data, dl);
    w->type = w->sh->text;
    w->data = w->sh->data;
    prun_push(p, w);
    return AP_OK;
}

static void prun_emit_status(prun *p, const char *status)
{
    char data[96];
    snprintf(data, sizeof data, "{\"status\":\"%s\"}", status);
    prun_emit(p, "panel.status", data, true, NULL);
}

static void prun_transition(prun *p, const char *const *from, size_t nfrom, const char *to,
                            const char *result, const char *error)
{
    witem *w = witem_new(p, W_TRANS, 0);
    if (w == NULL)
        return;
    for (size_t i = 0; i < nfrom && i < 4; i++)
        w->from[i] = from[i];
    w->nfrom = nfrom < 4 ? nfrom : 4;
    w->to = to;
    w->result = dup_or_null(result);
    w->error = dup_or_null(error);
    prun_push(p, w);
}

/* Appends one entry (JSON text, NULL when it could not be built) to the node's journal; false
 * (p->journal_error says why) when it could not: past what the store keeps in a checkpoint,
 * or out of memory. An answer shown but not journaled would be asked for again by a resume,
 * whose answers, coming in another order, would no longer match the events stored. */
static bool journal_add(prun *p, const char *entry)
{
    size_t n = entry != NULL ? strlen(entry) : 0;
    ap_status rc = AP_NOMEM;
    if (entry != NULL && p->journal.len + 1 + n + 2 > STORE_VALUE_MAX)
        rc = AP_LIMIT;
    else if (entry != NULL && (p->journal.len == 0 || buf_putc(&p->journal, ',') == AP_OK))
        rc = buf_append(&p->journal, entry, n);
    if (rc == AP_OK)
        return true;
    if (p->journal_error[0] != '\0')
        return false;
    if (rc == AP_LIMIT)
        snprintf(p->journal_error, sizeof p->journal_error,
                 "the answers of node '%.40s' passed the %u bytes a checkpoint keeps of them: "
                 "ask fewer experts or for shorter answers in one node",
                 p->node != NULL ? p->node : "?", STORE_VALUE_MAX);
    else
        snprintf(p->journal_error, sizeof p->journal_error,
                 "the journal of the node could not be kept (out of memory)");
    return false;
}

/* Appends s as a JSON string (quoted, escaped). */
static ap_status json_str(buf *b, const char *s)
{
    return jsonx_append_string(b, s, strlen(s));
}

/* Copies n bytes to at; returns where they end. */
static char *put_bytes(char *at, const char *s, size_t n)
{
    if (n > 0)
        memcpy(at, s, n);
    return at + n;
}

static const char pins_key[] = "{\"pins\":", seed_key[] = ",\"seed\":\"",
                  state_key[] = ",\"state\":";

/* Bytes of a checkpoint's state column holding state: the envelope prun_checkpoint writes;
 * SIZE_MAX when the pins cannot be printed (out of memory). */
static size_t envelope_len(prun *p, const char *state)
{
    if (p->pins_text == NULL)
        p->pins_text = jsonx_print(p->pins);
    if (p->pins_text == NULL)
        return SIZE_MAX;
    return sizeof pins_key - 1 + strlen(p->pins_text) + sizeof seed_key - 1 + JSONX_INT_MAX + 1 +
           strlen(p->llm_text) + sizeof state_key - 1 + strlen(state) + 2;
}

/* Queues a checkpoint: the state in its envelope
 * {"pins":{...},"seed":"N"[,"llm":{...}],"state":<state>} and
 * the node's journal as a JSON array. Built for every checkpoint, so the pins are printed only
 * when they changed, and all its texts go in the item's own allocation (one malloc and one free
 * instead of five each). */
static void prun_checkpoint(prun *p, const char *next_node, const char *state, int64_t last_seq)
{
    if (state == NULL)
        state = "{}";
    size_t el = envelope_len(p, state);
    if (el > STORE_VALUE_MAX) {
        /* handle_step refuses such a state; only pins added since can get here */
        log_msg(LOG_LEVEL_ERROR, &(log_fields){.tenant_id = p->tenant_id, .panel_id = p->panel_id},
                el == SIZE_MAX ? "checkpoint not written: out of memory"
                               : "checkpoint not written: its state is over the %u bytes the "
                                 "store keeps",
                STORE_VALUE_MAX);
        return;
    }
    char seed[JSONX_INT_MAX];
    size_t sl = jsonx_uint_text(seed, p->seed);
    size_t pl = strlen(p->pins_text), ll = strlen(p->llm_text), stl = strlen(state);
    size_t nl = next_node != NULL ? strlen(next_node) : 0, vl = strlen(p->script.version),
           jl = p->journal.len;
    witem *w = witem_new(p, W_CKPT, nl + 1 + vl + 1 + el + jl + 3);
    if (w == NULL)
        return;
    memcpy(w->ck.panel_id, p->panel_id, sizeof w->ck.panel_id);
    w->ck.step = p->step;
    size_t used = 0;
    w->ck.next_node = next_node != NULL ? witem_text(w, &used, next_node, nl) : NULL;
    w->ck.script_version = witem_text(w, &used, p->script.version, vl);
    char *c = w->ck.state = w->text + used;
    c = put_bytes(c, pins_key, sizeof pins_key - 1);
    c = put_bytes(c, p->pins_text, pl);
    c = put_bytes(c, seed_key, sizeof seed_key - 1);
    c = put_bytes(c, seed, sl);
    c = put_bytes(c, "\"", 1);
    c = put_bytes(c, p->llm_text, ll);
    c = put_bytes(c, state_key, sizeof state_key - 1);
    c = put_bytes(c, state, stl);
    c = put_bytes(c, "}", 2);
    w->ck.journal = c;
    c = put_bytes(c, "[", 1);
    c = put_bytes(c, p->journal.data, jl);
    put_bytes(c, "]", 2);
    w->ck.last_seq = last_seq;
    prun_push(p, w);
}

static const char *const live_statuses[] = {"running", "awaiting_input", "queued", "created"};

static void release_held(prun *p);

/* Numbers a panel's end after all its stored events. A replay numbers the events of the node
 * it re-runs as the run before did, and prun_emit drops those the store has; but a panel's end
 * is never among them (a panel whose end is stored has ended and is not resumed), and a replay
 * can end sooner than the run it replays (a lower limit, a wall-clock budget): numbered at the
 * replay's cursor, its end would be taken for a stored event and lost. */
static void prun_end_after_stored(prun *p)
{
    if (p->next_seq <= p->stored_seq)
        p->next_seq = p->stored_seq + 1;
}

static void prun_fail(prun *p, const char *msg)
{
    log_msg(LOG_LEVEL_WARN, &(log_fields){.tenant_id = p->tenant_id, .panel_id = p->panel_id},
            "panel failed: %s", msg);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddStringToObject(d, "error", msg);
    char *data = jsonx_print(d);
    cJSON_Delete(d);
    /* The events before the status change: it gives the lease up, and the store takes a
     * panel's writes only from the lease's holder (the group commits as one in any order). */
    prun_group_begin(p);
    release_held(p); /* the answers that came, shown before the end */
    prun_end_after_stored(p);
    prun_emit_status(p, "failed");
    if (data != NULL)
        prun_emit(p, "panel.failed", data, true, NULL);
    prun_transition(p, live_statuses, 2, "failed", NULL, msg);
    prun_group_end(p);
    free(data);
    prun_release(p);
}

static void prun_complete(prun *p, const char *result)
{
    const char *res = result != NULL ? result : "null";
    size_t cap = strlen(res) + 16;
    char *data = malloc(cap);
    char *state = NULL;
    ap_err err = {0};
    if (script_panel_state_json(p->sp, &state, &err) != AP_OK)
        state = NULL;
    /* the checkpoint and events before the status change, which gives the lease up (see
     * prun_fail) */
    prun_group_begin(p);
    prun_end_after_stored(p);
    prun_checkpoint(p, NULL, state != NULL ? state : p->node_state,
                    p->next_seq - 1 + (data != NULL ? 2 : 1)); /* with the two events below */
    prun_emit_status(p, "completed");
    if (data != NULL) {
        snprintf(data, cap, "{\"result\":%s}", res);
        prun_emit(p, "panel.completed", data, true, NULL);
    }
    free(data);
    prun_transition(p, live_statuses, 1, "completed", res, NULL);
    prun_group_end(p);
    free(state);
    prun_release(p);
}

/* ---- script host callbacks (runner thread, inside a script call) ---------------------- */

static ap_status host_emit(void *ud, const char *type, const char *data, int64_t *seq, ap_err *err)
{
    prun *p = ud;
    if (prun_emit(p, type, data, true, seq) != AP_OK)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    return AP_OK;
}

static void host_log(void *ud, int level, const char *msg)
{
    prun *p = ud;
    log_msg((log_level)level,
            &(log_fields){.tenant_id = p->tenant_id, .panel_id = p->panel_id, .event = "script"},
            "%s", msg);
}

ap_status panel_engine_resolve_script(store *st, script_registry *reg, const char *tenant_id,
                                      const char *slug, script_kind kind, const char *name,
                                      script_entry *out, ap_err *err)
{
    if (st != NULL && tenant_id != NULL) {
        store_script sc = {0};
        ap_status rc =
            store_script_get_active(st, tenant_id, (store_script_kind)kind, name, &sc, err);
        if (rc == AP_OK) {
            rc = script_registry_validate(reg, kind, name, sc.source, strlen(sc.source), "override",
                                          out, err);
            store_script_free(&sc);
            return rc;
        }
        if (rc != AP_NOTFOUND)
            return rc;
    }
    return script_registry_resolve(reg, slug, kind, name, out, err);
}

static void queue_script_pin(prun *p, const script_entry *en)
{
    if (p->e->st == NULL)
        return;
    witem *w = witem_new(p, W_SCRIPT, 0);
    if (w == NULL)
        return;
    memcpy(w->script.tenant_id, p->tenant_id, sizeof w->script.tenant_id);
    w->script.kind = (store_script_kind)en->kind;
    w->script.name = strdup(en->name);
    w->script.version = strdup(en->version);
    w->script.source = strdup(en->source);
    w->script.origin = strdup(en->origin);
    if (w->script.name == NULL || w->script.version == NULL || w->script.source == NULL ||
        w->script.origin == NULL) {
        witem_free(w);
        return;
    }
    writer_push(p->e, w);
}

static ap_status host_consensus_source(void *ud, const char *name, char **source, size_t *len,
                                       ap_err *err)
{
    prun *p = ud;
    if (p->consensus_src != NULL && p->consensus != NULL && strcmp(name, p->consensus) == 0) {
        *source = malloc(p->consensus_len + 1);
        if (*source == NULL)
            return ap_err_set(err, AP_NOMEM, "out of memory");
        memcpy(*source, p->consensus_src, p->consensus_len + 1);
        *len = p->consensus_len;
        return AP_OK;
    }
    const char *pinned = jsonx_string(p->pins, name);
    if (pinned != NULL && p->e->st != NULL) {
        store_script sc = {0};
        ap_status rc = store_script_get_version(p->e->st, p->tenant_id, STORE_SCRIPT_CONSENSUS,
                                                name, pinned, &sc, err);
        if (rc == AP_OK) {
            *source = sc.source;
            *len = strlen(sc.source);
            sc.source = NULL;
            store_script_free(&sc);
            return AP_OK;
        }
        store_script_free(&sc);
        if (rc != AP_NOTFOUND)
            return rc;
    }
    script_entry en;
    ap_status rc = panel_engine_resolve_script(p->e->st, p->e->reg, p->tenant_id, p->tenant_slug,
                                               SCRIPT_CONSENSUS, name, &en, err);
    if (rc != AP_OK)
        return rc;
    if (pinned == NULL) {
        cJSON_DeleteItemFromObjectCaseSensitive(p->pins, name);
        cJSON_AddStringToObject(p->pins, name, en.version);
        free(p->pins_text);
        p->pins_text = NULL;
        queue_script_pin(p, &en);
        /* The pin is stored before the events its algorithm leads to (a checkpoint like the
         * node's last, with it): a resume after them runs this version, not a newer one. */
        prun_checkpoint(p, p->node, p->node_state, p->node_start_seq);
    }
    *source = en.source;
    *len = en.len;
    en.source = NULL;
    script_entry_free(&en);
    return AP_OK;
}

/* ---- running nodes -------------------------------------------------------------------- */

static void handle_step(prun *p, script_step *step);
static void run_node(prun *p);

static void journal_key(const script_ask *a, char out[JOURNAL_KEY_LEN + 1])
{
    /* The hash of "<expert>\n<prompt>\n<system>\n<schema>", fed piece by piece. */
    const char *sys = a->system != NULL ? a->system : "";
    const char *schema = a->schema_json != NULL ? a->schema_json : "";
    const ids_part parts[] = {
        {a->expert_id, strlen(a->expert_id)},
        {"\n", 1},
        {a->prompt, strlen(a->prompt)},
        {"\n", 1},
        {sys, strlen(sys)},
        {"\n", 1},
        {schema, strlen(schema)},
    };
    char hex[IDS_SHA256_HEX_LEN + 1];
    if (!ids_sha256_hex_parts(parts, sizeof parts / sizeof parts[0], hex))
        memset(hex, '0', JOURNAL_KEY_LEN);
    memcpy(out, hex, JOURNAL_KEY_LEN);
    out[JOURNAL_KEY_LEN] = '\0';
}

/* Whether journal entry e is an unused `kind` entry for key (any key when NULL) and for the
 * batch slot idx: answers are journaled as they arrive, so two asks of one batch with the same
 * key find their own answers by slot. Entries journaled without a slot match any. */
static bool replay_matches(const cJSON *e, const char *kind, const char *key, int idx)
{
    const char *k = jsonx_string(e, "k"), *ek = jsonx_string(e, "key");
    const cJSON *slot = cJSON_GetObjectItemCaseSensitive(e, "i");
    return k != NULL && strcmp(k, kind) == 0 &&
           (key == NULL || (ek != NULL && strcmp(ek, key) == 0)) &&
           (slot == NULL || (cJSON_IsNumber(slot) && slot->valuedouble == idx));
}

static const cJSON *replay_take(prun *p, const char *kind, const char *key, int idx)
{
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, p->replay)
    {
        if (!p->replay_used[i] && replay_matches(e, kind, key, idx)) {
            p->replay_used[i] = true;
            return e;
        }
        i++;
    }
    return NULL;
}

/* One answer, whether it came from the provider or from the journal. */
typedef struct answer {
    const char *text;      /* NULL on failure */
    const char *data_json; /* validated JSON or NULL */
    const char *error;     /* non-NULL on failure */
    int64_t pt, ct;
} answer;

/* About the bytes of an answer's outcome (escapes may add more). */
static size_t outcome_size(const answer *a)
{
    size_t n = 32;
    if (a->error != NULL)
        return n + strlen(a->error);
    n += a->text != NULL ? strlen(a->text) : 0;
    return n + (a->data_json != NULL ? strlen(a->data_json) : 0);
}

#define SCRATCH_KEEP (64 * 1024)

/* Done with a runner's scratch buffer for now: an unusually large one is not kept. */
static void scratch_done(buf *b)
{
    if (b->cap > SCRATCH_KEEP)
        buf_free(b);
}

/* An answer's outcome as JSON members, ,"error":... or ,"text":...,"data":... (data left out
 * when there is none), into the scratch buffer b (reset here). Built once per answer for
 * both its journal entry and its expert.message. */
static ap_status put_outcome(buf *b, const answer *a)
{
    buf_reset(b);
    ap_status rc = buf_reserve(b, outcome_size(a));
    if (rc == AP_OK && a->error != NULL) {
        rc = buf_puts(b, ",\"error\":");
        return rc == AP_OK ? json_str(b, a->error) : rc;
    }
    if (rc == AP_OK)
        rc = buf_puts(b, ",\"text\":");
    if (rc == AP_OK)
        rc = json_str(b, a->text != NULL ? a->text : "");
    if (rc == AP_OK && a->data_json != NULL)
        rc = buf_puts(b, ",\"data\":");
    if (rc == AP_OK && a->data_json != NULL)
        rc = buf_puts(b, a->data_json);
    return rc;
}

/* Appends v in decimal; these texts are built for every answer, so without printf. */
static ap_status put_int(buf *b, int64_t v)
{
    char tmp[JSONX_INT_MAX];
    return buf_append(b, tmp, jsonx_int_text(tmp, v));
}

/* Appends key and then v, e.g. ",\"pt\":" and 12. */
static ap_status put_key_int(buf *b, const char *key, int64_t v)
{
    ap_status rc = buf_puts(b, key);
    return rc == AP_OK ? put_int(b, v) : rc;
}

/* The journal entry of an answer whose outcome (put_outcome) is given (caller frees). */
static char *entry_json(const char *key, size_t slot, const answer *a, const buf *outcome)
{
    buf b;
    buf_init(&b, SCRATCH_MAX);
    ap_status rc = buf_reserve(&b, outcome->len + 96);
    if (rc == AP_OK)
        rc = buf_puts(&b, "{\"k\":\"ask\",\"key\":\"");
    if (rc == AP_OK)
        rc = buf_puts(&b, key);
    if (rc == AP_OK)
        rc = buf_puts(&b, "\"");
    if (rc == AP_OK)
        rc = put_key_int(&b, ",\"i\":", (int64_t)slot);
    if (rc == AP_OK)
        rc = buf_append(&b, outcome->data, outcome->len);
    if (rc == AP_OK)
        rc = put_key_int(&b, ",\"pt\":", a->pt);
    if (rc == AP_OK)
        rc = put_key_int(&b, ",\"ct\":", a->ct);
    if (rc == AP_OK)
        rc = buf_puts(&b, "}");
    char *out = rc == AP_OK ? buf_steal(&b) : NULL;
    buf_free(&b);
    return out;
}

/* The fields of a journal entry read back at a resume; *data_buf (caller frees) owns the
 * printed data. */
static void answer_of_entry(const cJSON *entry, answer *a, char **data_buf)
{
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(entry, "data");
    *data_buf = data != NULL ? jsonx_print(data) : NULL;
    a->error = jsonx_string(entry, "error");
    a->text = a->error == NULL ? jsonx_string(entry, "text") : NULL;
    if (a->error == NULL && a->text == NULL)
        a->text = "";
    a->data_json = *data_buf;
    a->pt = (int64_t)jsonx_number(entry, "pt", 0);
    a->ct = (int64_t)jsonx_number(entry, "ct", 0);
}

static void hold_message(prun *p, const char *data);

/* Emits expert.message for an answer whose outcome (put_outcome) is given, NULL when it
 * could not be built; built as text because it runs for every answer. hold: held back
 * instead (hold_message). */
static void emit_message(prun *p, const script_ask *ask, const char *name, const answer *a,
                         const buf *outcome, bool hold)
{
    buf *b = &p->r->message;
    buf_reset(b);
    ap_status rc = outcome != NULL
                       ? buf_reserve(b, outcome->len + strlen(ask->expert_id) + strlen(name) + 128)
                       : AP_NOMEM;
    if (rc == AP_OK)
        rc = buf_puts(b, "{\"expert\":");
    if (rc == AP_OK)
        rc = json_str(b, ask->expert_id);
    if (rc == AP_OK)
        rc = buf_puts(b, ",\"name\":");
    if (rc == AP_OK)
        rc = json_str(b, name);
    if (rc == AP_OK && ask->round > 0)
        rc = put_key_int(b, ",\"round\":", ask->round);
    if (rc == AP_OK)
        rc = buf_append(b, outcome->data, outcome->len);
    /* the event always says data, null when the answer has none */
    if (rc == AP_OK && a->error == NULL && a->data_json == NULL)
        rc = buf_puts(b, ",\"data\":null");
    if (rc == AP_OK)
        rc = put_key_int(b, ",\"usage\":{\"prompt_tokens\":", a->pt);
    if (rc == AP_OK)
        rc = put_key_int(b, ",\"completion_tokens\":", a->ct);
    if (rc == AP_OK)
        rc = buf_puts(b, "}}");
    if (rc == AP_OK && hold)
        hold_message(p, b->data);
    else if (rc == AP_OK)
        prun_emit(p, "expert.message", b->data, true, NULL);
    else
        log_error("panel %s: expert.message not emitted: %s", p->panel_id, ap_status_name(rc));
    scratch_done(b);
}

static void deliver_answer(prun *p, size_t idx, const answer *a)
{
    script_answer ans = {
        .text = a->text,
        .data_json = a->data_json,
        .prompt_tokens = a->pt,
        .completion_tokens = a->ct,
        .error = a->error,
    };
    ap_err err = {0};
    if (script_panel_deliver(p->sp, idx, &ans, &err) != AP_OK)
        log_error("panel %s: deliver: %s", p->panel_id, err.msg);
}

static void clear_slots(prun *p)
{
    free(p->slots);
    p->slots = NULL;
    p->nslots = p->pending = 0;
}

/* All answers of a batch are in (each journaled and checkpointed as it came): resume the
 * node. */
static void batch_complete(prun *p)
{
    clear_slots(p);
    if (p->journal_error[0] != '\0') {
        prun_fail(p, p->journal_error);
        return;
    }
    script_step step;
    if (script_panel_resume(p->sp, &step) != AP_OK) {
        prun_fail(p, "internal error: the node could not be resumed");
        return;
    }
    handle_step(p, &step);
}

static bool has_subscribers(panel_engine *e, const prun *p)
{
    bool found = false;
    pthread_rwlock_rdlock(&e->smu);
    for (panel_sub *x = e->subs[p->hash % MAP_BUCKETS]; x != NULL && !found; x = x->next)
        found = strcmp(x->panel_id, p->panel_id) == 0;
    pthread_rwlock_unlock(&e->smu);
    return found;
}

/* Deltas are ephemeral: only worth building when someone listens. */
static void on_delta(void *ud, const char *text, size_t len)
{
    ask_slot *s = ud;
    if (!has_subscribers(s->p->e, s->p))
        return;
    /* Raw text: the writer merges a panel's deltas per expert and builds the JSON once per
     * merged run. */
    size_t el = strlen(s->expert_id), used = 0;
    witem *w = witem_new(s->p, W_DELTA, len + el + 2);
    if (w == NULL)
        return;
    w->data = witem_text(w, &used, text, len);
    w->expert = witem_text(w, &used, s->expert_id, el);
    writer_push(s->p->e, w);
}

#define ANSWER_CKPT_JOURNAL 65536 /* bytes of journal that every answer checkpoints */
#define ANSWER_CKPT_MS 100

/* Whether an answer checkpoints the journal with it. Every checkpoint copies the whole
 * journal, so one per answer would be quadratic in a node of many long answers: past
 * ANSWER_CKPT_JOURNAL the answers of a batch checkpoint at most every ANSWER_CKPT_MS, and the
 * batch's last one always does. */
static bool checkpoint_due(prun *p)
{
    int64_t now = clock_mono_ms();
    if (p->pending > 0 && p->journal.len > ANSWER_CKPT_JOURNAL &&
        now - p->answer_ckpt_ms < ANSWER_CKPT_MS)
        return false;
    p->answer_ckpt_ms = now;
    return true;
}

/* Emits the held messages, in the order their answers came. */
static void release_held(prun *p)
{
    for (size_t i = 0; i < p->nheld; i++) {
        prun_emit(p, "expert.message", p->held[i], true, NULL);
        free(p->held[i]);
    }
    p->nheld = 0;
    if (p->held_timer != NULL) {
        llm_loop_timer_cancel(p->r->loop, p->held_timer);
        p->held_timer = NULL;
    }
}

/* Stores the held messages with the checkpoint that journals their answers. */
static void flush_held(prun *p)
{
    if (p->nheld == 0)
        return;
    p->answer_ckpt_ms = clock_mono_ms();
    prun_group_begin(p);
    release_held(p);
    prun_checkpoint(p, p->node, p->node_state, p->node_start_seq);
    prun_group_end(p);
}

static void held_timer_fired(llm_loop *loop, void *ud)
{
    (void)loop;
    prun *p = ud;
    p->held_timer = NULL;
    flush_held(p);
}

/* Holds back the message of an answer whose checkpoint is not due: a message is stored only
 * with (or after) the checkpoint that journals its answer, so that the events a resume finds
 * are those of the answers it replays, in seqs it counts again; a resume asks again only for
 * answers nobody saw. Held at most until ANSWER_CKPT_MS after the last checkpoint. */
static void hold_message(prun *p, const char *data)
{
    char *copy = strdup(data);
    if (copy != NULL && p->nheld == p->capheld) {
        size_t cap = p->capheld != 0 ? p->capheld * 2 : 8;
        char **grown = realloc(p->held, cap * sizeof *grown);
        if (grown != NULL) {
            p->held = grown;
            p->capheld = cap;
        }
    }
    if (copy == NULL || p->nheld == p->capheld) {
        free(copy);
        log_error("panel %s: expert.message not emitted: out of memory", p->panel_id);
        return;
    }
    p->held[p->nheld++] = copy;
    if (p->held_timer == NULL) {
        int64_t wait = ANSWER_CKPT_MS - (clock_mono_ms() - p->answer_ckpt_ms);
        p->held_timer = llm_loop_timer_add(p->r->loop, wait > 0 ? wait : 0, held_timer_fired, p);
    }
}

/* Records one answer (journal entry, usage, delivery) without resuming the node. */
static void answer_slot(ask_slot *s, const llm_response *r)
{
    prun *p = s->p;
    s->call = NULL;
    s->done = true;
    char msg[300];
    answer a = {.pt = r->prompt_tokens, .ct = r->completion_tokens};
    if (r->status != AP_OK) {
        snprintf(msg, sizeof msg, "%s: %s", r->provider != NULL ? r->provider : "llm",
                 r->error != NULL ? r->error : ap_status_name(r->status));
        a.error = msg;
    } else {
        a.text = r->text != NULL ? r->text : "";
        /* Provider output is untrusted: data goes into the journal and events verbatim, so it
         * must parse (the provider validated it against the schema); checked without a tree */
        jview v;
        jview_init(&v);
        if (r->data_json != NULL &&
            jview_parse(&v, r->data_json, strlen(r->data_json), 64, NULL) == AP_OK)
            a.data_json = r->data_json;
        jview_free(&v);
    }
    buf *oc = &p->r->outcome;
    bool oc_ok = put_outcome(oc, &a) == AP_OK;
    char *entry = oc_ok ? entry_json(s->key, s->idx, &a, oc) : NULL;
    /* The answer, its usage, its message and the checkpoint that journals it commit together:
     * a crash never leaves an answer paid for and shown but not journaled, which a resume
     * would ask for (and bill) again. */
    prun_group_begin(p);
    /* usage */
    if (p->e->st != NULL) {
        const char *provider = r->provider != NULL ? r->provider : "unknown";
        const char *model = r->model != NULL ? r->model : "unknown";
        const char *outcome = r->status == AP_OK ? "ok" : "error";
        size_t el = strlen(s->expert_id), pl = strlen(provider), ml = strlen(model),
               ol = strlen(outcome), used = 0;
        witem *w = witem_new(p, W_USAGE, el + pl + ml + ol + 4);
        if (w != NULL) {
            memcpy(w->usage.panel_id, p->panel_id, sizeof w->usage.panel_id);
            w->usage.expert_id = witem_text(w, &used, s->expert_id, el);
            w->usage.provider = witem_text(w, &used, provider, pl);
            w->usage.model = witem_text(w, &used, model, ml);
            w->usage.outcome = witem_text(w, &used, outcome, ol);
            w->usage.prompt_tokens = r->prompt_tokens;
            w->usage.completion_tokens = r->completion_tokens;
            w->usage.cost_usd = r->cost_usd;
            w->usage.latency_ms = r->latency_ms;
            w->usage.attempts = r->attempts;
            prun_push(p, w);
        }
    }
    journal_add(p, entry);
    free(entry);
    deliver_answer(p, s->idx, &a);
    p->pending--;
    /* A journal that failed fails the panel once the batch is in: no checkpoint to wait for */
    bool whole = p->journal_error[0] == '\0';
    bool ckpt = whole && checkpoint_due(p);
    if (ckpt)
        release_held(p);
    emit_message(p, &p->asks[s->idx], s->name, &a, oc_ok ? oc : NULL, whole && !ckpt);
    scratch_done(oc);
    if (ckpt)
        prun_checkpoint(p, p->node, p->node_state, p->node_start_seq);
    prun_group_end(p);
}

static void on_done(void *ud, const llm_response *r)
{
    ask_slot *s = ud;
    prun *p = s->p;
    answer_slot(s, r);
    /* Refused credentials fail every call of the panel the same way: stop at once (the
     * other calls are cancelled) instead of letting the strategy limp on without answers. */
    if (r->status == AP_DENIED) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s refused the request (check its API key): %s",
                 r->provider != NULL ? r->provider : "the LLM provider",
                 r->error != NULL ? r->error : ap_status_name(r->status));
        prun_fail(p, msg);
        return;
    }
    if (p->pending == 0)
        batch_complete(p);
}

static void start_asks(prun *p, const script_step *step)
{
    p->slots = calloc(step->n_asks, sizeof *p->slots);
    if (p->slots == NULL) {
        prun_fail(p, "out of memory");
        return;
    }
    p->nslots = step->n_asks;
    p->pending = step->n_asks;
    p->asks = step->asks;
    /* Replayed answers first (no provider call), then the real calls. */
    for (size_t i = 0; i < step->n_asks; i++) {
        ask_slot *s = &p->slots[i];
        s->p = p;
        s->idx = i;
        /* The host read the expert's name and model once per panel. */
        const script_ask *ask = &step->asks[i];
        s->expert_id = ask->expert_id;
        s->name = ask->expert_name != NULL ? ask->expert_name : ask->expert_id;
        s->model = ask->expert_model;
        journal_key(ask, s->key);
        const cJSON *old = p->replay != NULL ? replay_take(p, "ask", s->key, (int)i) : NULL;
        if (old != NULL) {
            answer a;
            char *data = NULL;
            answer_of_entry(old, &a, &data);
            char *entry = jsonx_print(old);
            journal_add(p, entry);
            free(entry);
            s->done = true;
            deliver_answer(p, i, &a);
            buf *oc = &p->r->outcome;
            bool oc_ok = put_outcome(oc, &a) == AP_OK;
            emit_message(p, ask, s->name, &a, oc_ok ? oc : NULL, false);
            scratch_done(oc);
            free(data);
            p->pending--;
        }
    }
    for (size_t i = 0; i < step->n_asks; i++) {
        ask_slot *s = &p->slots[i];
        if (s->done)
            continue;
        const script_ask *a = &step->asks[i];
        const char *model = p->model != NULL ? p->model : s->model;
        llm_request req = {
            .tenant_id = p->tenant_id,
            .panel_id = p->panel_id,
            .expert_id = a->expert_id,
            .expert_json = a->expert_json,
            .model = model,
            .system = a->system,
            .prompt = a->prompt,
            .schema_json = a->schema_json,
            .stream = true,
            .max_tokens = a->max_tokens,
            .temperature = a->temperature,
            .seed = p->seed,
        };
        llm_callbacks cb = {on_delta, on_done, s};
        ap_err err = {0};
        ap_status rc = llm_submit(p->r->llm, p->provider, &req, &cb, &s->call, &err);
        if (rc != AP_OK) {
            /* A call that cannot even start is an answer with an error. */
            llm_response r = {.status = rc, .error = err.msg, .provider = p->provider};
            answer_slot(s, &r);
        }
    }
    if (p->pending == 0)
        batch_complete(p);
}

static void deliver_input(prun *p, const char *input_json, bool replayed)
{
    ap_err err = {0};
    size_t ecap = strlen(input_json) + 32;
    char *entry = malloc(ecap);
    if (entry != NULL)
        snprintf(entry, ecap, "{\"k\":\"input\",\"input\":%s}", input_json);
    bool journaled = journal_add(p, entry);
    free(entry);
    if (!journaled) {
        prun_fail(p, p->journal_error);
        return;
    }
    size_t cap = strlen(input_json) + 16;
    char *data = malloc(cap);
    /* The input's events and the checkpoint that journals it commit together: a stored
     * input.received always has its input in the checkpoint a resume starts from. */
    prun_group_begin(p);
    if (data != NULL) {
        snprintf(data, cap, "{\"input\":%s}", input_json);
        prun_emit(p, "input.received", data, true, NULL);
        free(data);
    }
    /* Replayed or not, the same events in the same order, so seqs line up with the stored
     * ones (which are then not written twice). */
    prun_emit_status(p, "running");
    if (!replayed)
        prun_checkpoint(p, p->node, p->node_state, p->node_start_seq);
    prun_group_end(p);
    if (script_panel_deliver_input(p->sp, input_json, &err) != AP_OK) {
        prun_fail(p, err.msg);
        return;
    }
    script_step step;
    if (script_panel_resume(p->sp, &step) != AP_OK) {
        prun_fail(p, "internal error: the node could not be resumed");
        return;
    }
    handle_step(p, &step);
}

static void next_node_timer(llm_loop *loop, void *ud)
{
    (void)loop;
    prun *p = ud;
    p->timer = NULL;
    run_node(p);
}

static void handle_step(prun *p, script_step *step)
{
    switch (step->outcome) {
    case SCRIPT_NEXT: {
        p->step++;
        char *state = NULL;
        ap_err err = {0};
        if (script_panel_state_save(p->sp, &state, &err) != AP_OK) {
            prun_fail(p, err.msg);
            return;
        }
        size_t el = envelope_len(p, state);
        if (el > STORE_VALUE_MAX) {
            char msg[160] = "out of memory";
            if (el != SIZE_MAX)
                snprintf(msg, sizeof msg,
                         "ctx.state cannot be saved: with the checkpoint's own fields it is over "
                         "the %u bytes a checkpoint keeps",
                         STORE_VALUE_MAX);
            free(state);
            prun_fail(p, msg);
            return;
        }
        free(p->node);
        p->node = strdup(step->next_node);
        free(p->node_state);
        p->node_state = state;
        buf_reset(&p->journal);
        p->journal_error[0] = '\0';
        cJSON_Delete(p->replay);
        p->replay = NULL;
        prun_checkpoint(p, p->node, p->node_state, p->next_seq - 1);
        p->timer = llm_loop_timer_add(p->r->loop, 0, next_node_timer, p);
        if (p->node == NULL || p->timer == NULL)
            prun_fail(p, "out of memory");
        return;
    }
    case SCRIPT_DONE:
        p->step++;
        prun_complete(p, step->result_json);
        return;
    case SCRIPT_FAILED:
        prun_fail(p, step->error);
        return;
    case SCRIPT_ASK:
        start_asks(p, step);
        return;
    case SCRIPT_INPUT: {
        const cJSON *old = p->replay != NULL ? replay_take(p, "input", NULL, -1) : NULL;
        char *in = NULL;
        if (old != NULL)
            in = jsonx_print(cJSON_GetObjectItemCaseSensitive(old, "input"));
        else if (p->pending_input != NULL) {
            in = p->pending_input;
            p->pending_input = NULL;
        }
        size_t cap = strlen(step->input_request_json) + 16;
        char *data = malloc(cap);
        if (data == NULL) {
            free(in);
            prun_fail(p, "out of memory");
            return;
        }
        snprintf(data, cap, "{\"request\":%s}", step->input_request_json);
        /* Only a real wait changes the status; it lands before the event is published, so a
         * client reacting to the event can answer at once. A replayed or already given input
         * still emits the request (suppressed when stored) so seqs stay aligned. */
        bool waits = old == NULL && in == NULL;
        /* the checkpoint and events before the status change, which gives the lease up (see
         * prun_fail) */
        prun_group_begin(p);
        if (waits)
            prun_checkpoint(p, p->node, p->node_state, p->node_start_seq);
        prun_emit_status(p, "awaiting_input");
        prun_emit(p, "input.requested", data, true, NULL);
        free(data);
        if (waits)
            prun_transition(p, live_statuses, 1, "awaiting_input", NULL, NULL);
        if (old != NULL || in != NULL) {
            prun_group_end(p);
            deliver_input(p, in != NULL ? in : "{}", old != NULL);
            free(in);
            return;
        }
        /* A panel waiting for a human is held by no process (its lease goes with the status):
         * the answer, whichever process it reaches, claims the panel and resumes it from this
         * checkpoint. So the panel leaves this process before the wait can be seen in the
         * store, and an answer never finds it still here. */
        active_remove(p->e, p);
        prun_group_end(p);
        prun_free(p);
        return;
    }
    }
}

static uint64_t node_seed(const prun *p)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *c = p->panel_id; *c != '\0'; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ULL;
    return h ^ ((uint64_t)p->step * 0x9e3779b97f4a7c15ULL);
}

static void run_node(prun *p)
{
    if (p->step >= p->e->max_steps) {
        char msg[160];
        snprintf(msg, sizeof msg,
                 "node budget exceeded: the panel ran %lld nodes (runtime.max_steps); does a "
                 "node loop back forever?",
                 (long long)p->step);
        prun_fail(p, msg);
        return;
    }
    p->node_start_seq = p->next_seq - 1;
    script_step step;
    if (script_panel_run_node(p->sp, p->node, node_seed(p), &step) != AP_OK) {
        prun_fail(p, "out of memory");
        return;
    }
    handle_step(p, &step);
}

/* ---- starting panels (runner thread) -------------------------------------------------- */

static void start_on_runner(llm_loop *loop, void *ud)
{
    (void)loop;
    prun *p = ud;
    __atomic_sub_fetch(&p->r->starting, 1, __ATOMIC_RELAXED);
    script_host host = {p, host_emit, host_log, host_consensus_source};
    char *state = NULL;
    if (p->node_state != NULL)
        state = p->node_state;
    script_inputs in = {
        .panel_id = p->panel_id,
        .question = p->question,
        .params_json = p->params_json,
        .experts_json = p->experts_json,
        .tenant_json = p->tenant_json,
        .consensus = p->consensus,
        .state_json = state,
    };
    ap_err err = {0};
    /* A fresh panel's first event and its first checkpoint commit together: a resume always
     * has a checkpoint, and one without a checkpoint is never past that event. */
    prun_group_begin(p);
    if (p->fresh)
        prun_emit_status(p, "running");
    const char *failed = NULL;
    if (script_panel_new(&p->e->lim, &host, p->script.name, p->script.source, p->script.len, &in,
                         &p->sp, &err) != AP_OK)
        failed = err.msg;
    if (failed == NULL && p->node == NULL)
        p->node = strdup(script_panel_start_node(p->sp));
    if (failed == NULL && p->node_state == NULL)
        p->node_state = strdup("{}");
    if (failed == NULL && (p->node == NULL || p->node_state == NULL))
        failed = "out of memory";
    if (failed == NULL && p->fresh)
        prun_checkpoint(p, p->node, p->node_state, p->next_seq - 1);
    prun_group_end(p);
    if (failed != NULL)
        prun_fail(p, failed);
    else
        run_node(p);
}

/* ---- commands posted to runners ------------------------------------------------------- */

typedef enum cmd_kind { CMD_CANCEL = 1, CMD_LOST, CMD_STOP } cmd_kind;

typedef struct cmd {
    panel_engine *e;
    runner *r;
    cmd_kind kind;
    char panel_id[STORE_ID_MAX];
    uint64_t serial; /* CMD_LOST: the run that lost its lease */
} cmd;

static void run_cmd(llm_loop *loop, void *ud)
{
    cmd *c = ud;
    panel_engine *e = c->e;
    if (c->kind == CMD_STOP) {
        /* Free this runner's panels as they are: they stay "running" in the store. */
        for (;;) {
            prun *victim = NULL;
            pthread_mutex_lock(&e->amu);
            for (size_t b = 0; b < MAP_BUCKETS && victim == NULL; b++)
                for (prun *p = e->active[b]; p != NULL && victim == NULL; p = p->next)
                    if (p->r == c->r)
                        victim = p;
            pthread_mutex_unlock(&e->amu);
            if (victim == NULL)
                break;
            flush_held(victim); /* journaled answers: a resume need not ask for them again */
            prun_release(victim);
        }
        llm_loop_stop(loop);
        free(c);
        return;
    }
    pthread_mutex_lock(&e->amu);
    prun *p = active_find_locked(e, c->panel_id);
    pthread_mutex_unlock(&e->amu);
    if (p != NULL && p->r == c->r) {
        if (c->kind == CMD_CANCEL) {
            prun_group_begin(p); /* the event first (see prun_fail) */
            release_held(p);
            prun_end_after_stored(p);
            prun_emit_status(p, "cancelled");
            prun_transition(p, live_statuses, 4, "cancelled", NULL, NULL);
            prun_group_end(p);
            prun_release(p);
        } else if (c->kind == CMD_LOST && p->serial == c->serial) {
            /* Nothing is written for it: the store's panel belongs to whoever holds it now. */
            log_msg(LOG_LEVEL_WARN,
                    &(log_fields){.tenant_id = p->tenant_id, .panel_id = p->panel_id},
                    "the panel is no longer this process's to run (another process took it "
                    "over after its lease ran out, or it was cancelled elsewhere); stopping it "
                    "here");
            prun_release(p);
        }
    }
    free(c);
}

static ap_status post_cmd(panel_engine *e, runner *r, cmd_kind kind, const char *panel_id,
                          uint64_t serial)
{
    cmd *c = calloc(1, sizeof *c);
    if (c == NULL)
        return AP_NOMEM;
    c->e = e;
    c->r = r;
    c->kind = kind;
    if (panel_id != NULL)
        snprintf(c->panel_id, sizeof c->panel_id, "%s", panel_id);
    c->serial = serial;
    if (llm_loop_post(r->loop, run_cmd, c) != AP_OK) {
        free(c);
        return AP_NOMEM;
    }
    return AP_OK;
}

/* A run whose events the store fenced off has lost its panel to another process (which
 * took it over, or cancelled it): it stops now rather than at the next lease renewal, up to
 * lease_ms / 3 later, for which it would go on paying provider calls that nobody sees. */
static void stop_fenced(panel_engine *e, const witem *list)
{
    const char *last = NULL;
    for (const witem *w = list; w != NULL; w = w->next) {
        if (!w->fenced || (last != NULL && strcmp(last, w->panel_id) == 0))
            continue;
        last = w->panel_id;
        pthread_mutex_lock(&e->amu);
        prun *p = active_find_locked(e, w->panel_id);
        runner *r = p != NULL && p->serial == w->serial ? p->r : NULL;
        pthread_mutex_unlock(&e->amu);
        if (r != NULL && post_cmd(e, r, CMD_LOST, w->panel_id, w->serial) != AP_OK)
            log_error("event writer: out of memory while stopping a panel it lost");
        /* Its subscribers here get its end if it has ended (a cancel elsewhere took the lease):
         * stopped here, it is no longer renewed, so no renewal would tell them (review). */
        store_panel_ref ref;
        memcpy(ref.tenant_id, w->tenant_id, sizeof ref.tenant_id);
        memcpy(ref.panel_id, w->panel_id, sizeof ref.panel_id);
        publish_stored_end(e, &ref);
    }
}

static void *runner_main(void *arg)
{
    runner *r = arg;
    char name[16];
    snprintf(name, sizeof name, "ap-runner-%d", r->idx);
    pthread_setname_np(pthread_self(), name);
    /* Its panels' writer items and events go back to it once written and read (recycle.h);
     * without a pool they are malloc'd like any other block. */
    if (recycle_thread_begin(0) != AP_OK)
        log_warn("runner %d: no pool for its writer items; they are malloc'd", r->idx);
    llm_loop_run(r->loop);
    recycle_thread_end();
    return NULL;
}

/* ---- leases -----------------------------------------------------------------------------
 *
 * A running panel is held in the store by the engine instance that runs it, so that a second
 * process (another `serve` on the same database, `askpanel resume` while `askpanel run` still
 * runs it) cannot run it too: two provider calls per turn, usage billed twice, events twice.
 * Execute, resume and an answer to awaiting_input take the lease in the statement that makes
 * the panel running; the leaser thread renews the leases of the panels active here every
 * lease_ms / 3 in one statement, and stops here any panel whose lease it finds lost; leaving
 * running clears the lease, and a stopping engine gives its leases up. A process that died
 * holds its panels until its lease runs out, or not at all for a process of this host, whose
 * pid is then gone. */

/* Fills e->host and e->owner: the host name, the pid, and a boot id drawn at random so that a
 * later process that gets the same pid is not taken for this one. */
static ap_status lease_owner_init(panel_engine *e, ap_err *err)
{
    if (gethostname(e->host, sizeof e->host) != 0)
        snprintf(e->host, sizeof e->host, "localhost");
    e->host[sizeof e->host - 1] = '\0';
    for (char *c = e->host; *c != '\0'; c++)
        if (*c == ':') /* it separates the owner's fields */
            *c = '_';
    unsigned char boot[8];
    char hex[2 * sizeof boot + 1];
    if (ids_random(boot, sizeof boot) != AP_OK)
        return ap_err_set(err, AP_ERROR, "cannot draw the engine's boot id");
    ids_hex(boot, sizeof boot, hex);
    snprintf(e->owner, sizeof e->owner, "%s:%ld:%s", e->host, (long)getpid(), hex);
    return AP_OK;
}

/* The host and pid of a lease owner of the engine's form; false for any other text. */
static bool lease_owner_parse(const char *owner, char host[LEASE_HOST_MAX], long *pid)
{
    const char *colon = strchr(owner, ':');
    if (colon == NULL || colon == owner || (size_t)(colon - owner) >= LEASE_HOST_MAX)
        return false;
    char *end = NULL;
    errno = 0;
    long v = strtol(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != ':' || v <= 0 || v > INT_MAX)
        return false;
    snprintf(host, LEASE_HOST_MAX, "%.*s", (int)(colon - owner), owner);
    *pid = v;
    return true;
}

/* Whether process pid has exited but not been reaped: kill() still finds a zombie, which runs
 * nothing (review: where pid 1 reaps slowly, a killed serve's panels waited for their lease to
 * run out). Read from /proc/<pid>/stat, whose state follows the command's closing ')'; false
 * when that cannot be read. */
static bool pid_is_zombie(long pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return false;
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    const char *close = strrchr(line, ')');
    return close != NULL && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X');
}

/* Whether owner was a process of this host that no longer exists (or only as a zombie).
 * (Processes that share a host name are assumed to share a pid namespace, as they do unless
 * containers share a UTS namespace but not their pids.) */
static bool lease_owner_gone(const panel_engine *e, const char *owner)
{
    char host[LEASE_HOST_MAX];
    long pid = 0;
    if (!lease_owner_parse(owner, host, &pid) || strcmp(host, e->host) != 0)
        return false;
    if (kill((pid_t)pid, 0) != 0)
        return errno == ESRCH;
    return pid_is_zombie(pid);
}

/* Whether this engine may claim the running panel of row now: its lease is free, expired or
 * ours, or held by a process of this host that is gone (then *takeover names that owner). */
static bool lease_claimable(const panel_engine *e, const store_panel *row, const char **takeover)
{
    *takeover = NULL;
    const char *o = row->lease_owner;
    if (o == NULL || row->lease_expires_at <= clock_wall_ms() || strcmp(o, e->owner) == 0)
        return true;
    if (!lease_owner_gone(e, o))
        return false;
    *takeover = o;
    return true;
}

/* Why a panel that row shows cannot be resumed here (AP_CONFLICT). */
static ap_status resume_refused(const store_panel *row, ap_err *err)
{
    if (strcmp(row->status, "running") != 0)
        return ap_err_set(err, AP_CONFLICT, "the panel is %.32s, not running", row->status);
    if (row->lease_owner == NULL)
        return ap_err_set(err, AP_CONFLICT,
                          "another process resumed or let go of the panel meanwhile; try again");
    char when[32] = "?";
    time_t t = (time_t)((row->lease_expires_at + 999) / 1000);
    struct tm tm;
    if (gmtime_r(&t, &tm) != NULL)
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    char host[LEASE_HOST_MAX];
    long pid = 0;
    if (lease_owner_parse(row->lease_owner, host, &pid))
        return ap_err_set(err, AP_CONFLICT,
                          "the panel is running in another process (host %s, pid %ld); retry "
                          "after %s if that process is gone",
                          host, pid, when);
    return ap_err_set(err, AP_CONFLICT,
                      "the panel is running in another process (%.64s); retry after %s if that "
                      "process is gone",
                      row->lease_owner, when);
}

/* A panel active here, as the leaser saw it before renewing. */
typedef struct lease_seen {
    store_panel_ref ref;
    uint64_t serial;
    runner *r;
} lease_seen;

/* The panels active here (caller frees); *n their count. */
static lease_seen *lease_snapshot(panel_engine *e, size_t *n)
{
    *n = 0;
    pthread_mutex_lock(&e->amu);
    lease_seen *seen = e->nactive > 0 ? malloc(e->nactive * sizeof *seen) : NULL;
    for (size_t b = 0; b < MAP_BUCKETS && seen != NULL; b++) {
        for (const prun *p = e->active[b]; p != NULL; p = p->next) {
            lease_seen *s = &seen[(*n)++];
            memcpy(s->ref.tenant_id, p->tenant_id, sizeof s->ref.tenant_id);
            memcpy(s->ref.panel_id, p->panel_id, sizeof s->ref.panel_id);
            s->serial = p->serial;
            s->r = p->r;
        }
    }
    pthread_mutex_unlock(&e->amu);
    return seen;
}

/* Whether an event ends its panel: its completion, its failure or its cancel. */
static bool ends_panel(const char *type, const char *data)
{
    return strcmp(type, "panel.completed") == 0 || strcmp(type, "panel.failed") == 0 ||
           (strcmp(type, "panel.status") == 0 && strstr(data, "\"cancelled\"") != NULL);
}

/* Hands a panel's stored last event to its subscribers here when it ended the panel (a cancel
 * through another process): they saw the events of this process's runner, not that one, and
 * would wait on. */
static void publish_stored_end(panel_engine *e, const store_panel_ref *ref)
{
    int64_t last = 0;
    store_event *rows = NULL;
    size_t n = 0;
    ap_err err = {0};
    if (store_events_last_seq(e->st, ref->tenant_id, ref->panel_id, &last, &err) != AP_OK ||
        last < 1 ||
        store_events_list(e->st, ref->tenant_id, ref->panel_id, last - 1, 1, &rows, &n, &err) !=
            AP_OK)
        return;
    if (n == 1 && ends_panel(rows[0].type, rows[0].data))
        publish_now(e, &rows[0]);
    store_events_free(rows, n);
}

/* Renews the leases of the panels active here, STORE_WRITE_MAX at a time; a panel whose lease
 * was not renewed (it left running elsewhere, or another process claimed it after its lease
 * ran out) is stopped here. */
static void lease_renew(panel_engine *e)
{
    size_t n = 0;
    lease_seen *seen = lease_snapshot(e, &n);
    store_panel_ref *refs = n > 0 ? malloc(n * sizeof *refs) : NULL;
    bool *renewed = n > 0 ? malloc(n * sizeof *renewed) : NULL;
    if (n > 0 && (refs == NULL || renewed == NULL)) {
        log_error("lease renewal: out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        refs[i] = seen[i].ref;
    for (size_t at = 0; at < n; at += STORE_WRITE_MAX) {
        size_t k = n - at < STORE_WRITE_MAX ? n - at : STORE_WRITE_MAX;
        ap_err err = {0};
        if (store_panel_leases_renew(e->st, e->owner, refs + at, k, e->lease_ms, renewed + at,
                                     &err) != AP_OK) {
            /* the store is away: nothing is known to be lost, so nothing is stopped */
            log_warn("lease renewal of %zu panels failed: %s", k, err.msg);
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (renewed[i])
            continue;
        if (post_cmd(e, seen[i].r, CMD_LOST, seen[i].ref.panel_id, seen[i].serial) != AP_OK)
            log_error("lease renewal: out of memory");
        publish_stored_end(e, &seen[i].ref);
    }
out:
    free(renewed);
    free(refs);
    free(seen);
}

static ap_status sweep(panel_engine *e, size_t *started, ap_err *err);

static void *leaser_main(void *arg)
{
    panel_engine *e = arg;
    pthread_setname_np(pthread_self(), "ap-leaser");
    int64_t next_sweep = clock_mono_ms() + e->lease_ms;
    pthread_mutex_lock(&e->lmu);
    while (!e->lstop) {
        struct timespec at = clock_mono_at(clock_mono_us() + e->lease_ms / 3 * 1000);
        while (!e->lstop && pthread_cond_timedwait(&e->lcond, &e->lmu, &at) != ETIMEDOUT) {
        }
        if (e->lstop)
            break;
        pthread_mutex_unlock(&e->lmu);
        lease_renew(e);
        /* A panel whose process died keeps its status and its lease in the store: once the
         * lease has run out, the first node that looks takes it over (resume claims it in one
         * statement, so two nodes never both do). */
        if (e->adopt && clock_mono_ms() >= next_sweep) {
            size_t n = 0;
            ap_err err = {0};
            if (sweep(e, &n, &err) != AP_OK)
                log_warn("looking for panels to take over failed: %s", err.msg);
            else if (n > 0)
                log_info("took over %zu running panel(s) whose process no longer held them", n);
            next_sweep = clock_mono_ms() + e->lease_ms;
        }
        pthread_mutex_lock(&e->lmu);
    }
    pthread_mutex_unlock(&e->lmu);
    return NULL;
}

/* ---- preparing a panel (caller thread) ------------------------------------------------ */

static char *tenant_json_of(const store_tenant *t)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "slug", t->slug != NULL ? t->slug : "");
    cJSON *cfg = t->config != NULL ? jsonx_parse(t->config, strlen(t->config), 32, NULL) : NULL;
    const cJSON *flags = cJSON_GetObjectItemCaseSensitive(cfg, "flags");
    cJSON *fl = cJSON_AddObjectToObject(o, "flags");
    const cJSON *f;
    cJSON_ArrayForEach(f, flags)
    {
        if (cJSON_IsBool(f))
            cJSON_AddBoolToObject(fl, f->string, cJSON_IsTrue(f));
    }
    cJSON_Delete(cfg);
    char *s = jsonx_print(o);
    cJSON_Delete(o);
    return s;
}

/* Loads everything a panel needs to run from the store; the runner only builds Lua. */
/* Sets the panel's provider and model (borrowed, NULL: none) and their checkpoint text. */
static ap_status set_llm(prun *p, const char *provider, const char *model)
{
    buf b;
    buf_init(&b, 1024);
    ap_status rc = AP_OK;
    if (provider != NULL || model != NULL) {
        rc = buf_puts(&b, ",\"llm\":{");
        if (rc == AP_OK && provider != NULL) {
            rc = buf_puts(&b, "\"provider\":");
            if (rc == AP_OK)
                rc = json_str(&b, provider);
        }
        if (rc == AP_OK && model != NULL)
            rc = buf_puts(&b, provider != NULL ? ",\"model\":" : "\"model\":");
        if (rc == AP_OK && model != NULL)
            rc = json_str(&b, model);
        if (rc == AP_OK)
            rc = buf_putc(&b, '}');
    }
    p->provider = dup_or_null(provider);
    p->model = dup_or_null(model);
    p->llm_text = rc == AP_OK ? buf_steal(&b) : NULL;
    buf_free(&b);
    if (p->llm_text == NULL || (provider != NULL && p->provider == NULL) ||
        (model != NULL && p->model == NULL))
        return rc == AP_LIMIT ? AP_INVALID : AP_NOMEM;
    return AP_OK;
}

/* Whether a panel in this status waits for its first execute (it never ran). */
static bool status_fresh(const char *status)
{
    return strcmp(status, "created") == 0 || strcmp(status, "queued") == 0;
}

static ap_status prepare(panel_engine *e, const char *tenant_id, const char *panel_id, prun **out,
                         ap_err *err)
{
    store_panel row = {0};
    store_tenant tenant = {0};
    store_checkpoint ck = {0};
    bool has_ck = false;
    *out = NULL;
    prun *p = calloc(1, sizeof *p);
    if (p == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    p->e = e;
    ap_status rc = store_panel_get(e->st, tenant_id, panel_id, &row, err);
    if (rc == AP_OK)
        rc = store_tenant_get(e->st, tenant_id, &tenant, err);
    if (rc != AP_OK)
        goto out;
    snprintf(p->tenant_id, sizeof p->tenant_id, "%s", row.tenant_id);
    snprintf(p->panel_id, sizeof p->panel_id, "%s", row.id);
    p->hash = bucket_hash(p->panel_id);
    ap_err ckerr = {0};
    /* A created panel never ran (nothing moves a panel back to created), so it has no
     * checkpoint: one read less on every execute. */
    ap_status ckrc = strcmp(row.status, "created") == 0
                         ? AP_NOTFOUND
                         : store_checkpoint_get(e->st, tenant_id, panel_id, &ck, &ckerr);
    if (ckrc == AP_OK)
        has_ck = true;
    else if (ckrc != AP_NOTFOUND) {
        rc = ap_err_set(err, ckrc, "%s", ckerr.msg);
        goto out;
    }
    p->tenant_slug = dup_or_null(tenant.slug);
    p->tenant_json = tenant_json_of(&tenant);
    p->max_live = store_tenant_limit(&tenant, "concurrent_panels");
    p->question = dup_or_null(row.question);
    p->consensus = dup_or_null(row.consensus);
    const char *version =
        has_ck && ck.script_version != NULL ? ck.script_version : row.strategy_version;
    if (version != NULL && version[0] != '\0') {
        rc = script_registry_cached_version(e->reg, SCRIPT_STRATEGY, row.strategy, version,
                                            &p->script);
        if (rc == AP_NOTFOUND) {
            store_script sc = {0};
            rc = store_script_get_version(e->st, tenant_id, STORE_SCRIPT_STRATEGY, row.strategy,
                                          version, &sc, err);
            if (rc == AP_OK)
                rc = script_registry_validate(e->reg, SCRIPT_STRATEGY, row.strategy, sc.source,
                                              strlen(sc.source), sc.origin, &p->script, err);
            store_script_free(&sc);
        } else if (rc != AP_OK) {
            ap_err_set(err, rc, "out of memory");
        }
    } else {
        rc = panel_engine_resolve_script(e->st, e->reg, tenant_id, tenant.slug, SCRIPT_STRATEGY,
                                         row.strategy, &p->script, err);
    }
    if (rc != AP_OK)
        goto out;
    rc = script_params_apply(p->script.info.params_json, row.params, &p->params_json, err);
    if (rc != AP_OK)
        goto out;
    p->experts_json =
        strdup(row.experts != NULL && strcmp(row.experts, "[]") != 0 && row.experts[0] != '\0'
                   ? row.experts
                   : panel_roster_default_json());
    p->pins = NULL;
    if (has_ck) {
        cJSON *env = jsonx_parse(ck.state, strlen(ck.state), 128, NULL);
        cJSON *pins = cJSON_DetachItemFromObjectCaseSensitive(env, "pins");
        const cJSON *state = cJSON_GetObjectItemCaseSensitive(env, "state");
        p->pins = cJSON_IsObject(pins) ? pins : NULL;
        if (p->pins == NULL)
            cJSON_Delete(pins);
        p->node_state = state != NULL ? jsonx_print(state) : strdup("{}");
        const char *seed = jsonx_string(env, "seed");
        p->seed = seed != NULL ? strtoull(seed, NULL, 10) : e->seed;
        const cJSON *llm = cJSON_GetObjectItemCaseSensitive(env, "llm");
        rc = set_llm(p, e->provider != NULL ? e->provider : jsonx_string(llm, "provider"),
                     e->model != NULL ? e->model : jsonx_string(llm, "model"));
        cJSON_Delete(env);
        if (rc != AP_OK) {
            ap_err_set(err, rc, "out of memory");
            goto out;
        }
        /* Every later turn would fail on it: the panel waits for a process that has it. */
        if (p->provider != NULL &&
            !llm_provider_known(e->cfg != NULL ? e->cfg->llm : NULL, p->provider)) {
            rc = ap_err_set(err, AP_INVALID,
                            "the panel runs on LLM provider '%s', which this process does not "
                            "have configured",
                            p->provider);
            goto out;
        }
        p->step = ck.step;
        p->node = dup_or_null(ck.next_node);
        p->next_seq = ck.last_seq + 1;
        p->replay =
            ck.journal != NULL ? jsonx_parse(ck.journal, strlen(ck.journal), 128, NULL) : NULL;
        if (p->replay != NULL && !cJSON_IsArray(p->replay)) {
            cJSON_Delete(p->replay);
            p->replay = NULL;
        }
        if (p->replay != NULL)
            p->replay_used = calloc((size_t)cJSON_GetArraySize(p->replay) + 1, sizeof(bool));
        if (ck.next_node == NULL) {
            rc = ap_err_set(err, AP_CONFLICT, "the panel has already finished");
            goto out;
        }
    } else {
        p->next_seq = 1;
        p->seed = e->seed;
        if ((rc = set_llm(p, e->provider, e->model)) != AP_OK) {
            ap_err_set(err, rc, "out of memory");
            goto out;
        }
    }
    if (p->pins == NULL)
        p->pins = cJSON_CreateObject();
    buf_init(&p->journal, STORE_VALUE_MAX);
    /* A panel that never ran has no events; others may have some past their checkpoint. */
    if (!status_fresh(row.status) &&
        (rc = store_events_last_seq(e->st, tenant_id, panel_id, &p->stored_seq, err)) != AP_OK)
        goto out;
    if (!has_ck && p->stored_seq >= p->next_seq)
        p->next_seq = p->stored_seq + 1;
    /* Running without a checkpoint or an event: the process that claimed it stopped before its
     * start committed (the first event and checkpoint go together). Nothing of that start was
     * stored, so this is its start, with this process's seed, provider and model: it says so
     * with its running status, as a start does (review: a resume began at round.started). */
    if (!has_ck && p->stored_seq == 0 && strcmp(row.status, "running") == 0)
        p->fresh = true;
    if (p->tenant_json == NULL || p->question == NULL || p->experts_json == NULL ||
        p->pins == NULL || (p->replay != NULL && p->replay_used == NULL)) {
        rc = ap_err_set(err, AP_NOMEM, "out of memory");
        goto out;
    }
    /* The panel's own consensus algorithm is loaded here, off the runner thread, so running
     * it never waits for the store. */
    if (p->consensus != NULL && p->consensus[0] != '\0') {
        const char *pinned = jsonx_string(p->pins, p->consensus);
        ap_err cerr = {0};
        script_entry c = {0};
        if (pinned != NULL && script_registry_cached_version(e->reg, SCRIPT_CONSENSUS, p->consensus,
                                                             pinned, &c) == AP_OK) {
            p->consensus_len = c.len;
            p->consensus_src = c.source;
            c.source = NULL;
        } else if (pinned != NULL) {
            store_script sc = {0};
            if (store_script_get_version(e->st, tenant_id, STORE_SCRIPT_CONSENSUS, p->consensus,
                                         pinned, &sc, &cerr) == AP_OK) {
                p->consensus_len = strlen(sc.source);
                p->consensus_src = sc.source;
                sc.source = NULL;
            }
            store_script_free(&sc);
        } else {
            if (panel_engine_resolve_script(e->st, e->reg, tenant_id, tenant.slug, SCRIPT_CONSENSUS,
                                            p->consensus, &c, &cerr) == AP_OK) {
                cJSON_AddStringToObject(p->pins, p->consensus, c.version);
                if (pin_script(e, tenant_id, &c, &cerr) == AP_OK) {
                    p->consensus_src = c.source;
                    p->consensus_len = c.len;
                    c.source = NULL;
                }
            }
        }
        script_entry_free(&c);
        /* A missing algorithm is reported when the script asks for it. */
    }
    /* Pin the version now so a restart runs the same source. */
    if ((version == NULL || version[0] == '\0') &&
        (rc = pin_script(e, tenant_id, &p->script, err)) != AP_OK)
        goto out;
    *out = p;
    p = NULL;
out:
    prun_free(p);
    store_panel_free(&row);
    store_tenant_free(&tenant);
    if (has_ck)
        store_checkpoint_free(&ck);
    return rc;
}

/* The runner with the fewest starts waiting, round robin among equals. Runners share the
 * cores with the threads that start panels and with the writer, so under a burst of starts
 * one may get less CPU than another (measured: one runner at a third of a core, the other
 * at three quarters); dealt in turn, the slower one's queue and its panels' start times
 * grow, while the waiting count steers new panels to the runner that keeps up. */
static runner *pick_runner(panel_engine *e)
{
    unsigned first = __atomic_fetch_add(&e->rr, 1, __ATOMIC_RELAXED) % (unsigned)e->nrunners;
    runner *best = &e->runners[first];
    unsigned least = __atomic_load_n(&best->starting, __ATOMIC_RELAXED);
    for (int k = 1; k < e->nrunners && least > 0; k++) {
        runner *r = &e->runners[(first + (unsigned)k) % (unsigned)e->nrunners];
        unsigned n = __atomic_load_n(&r->starting, __ATOMIC_RELAXED);
        if (n < least) {
            best = r;
            least = n;
        }
    }
    return best;
}

static ap_status launch(panel_engine *e, prun *p, ap_err *err)
{
    p->r = pick_runner(e);
    if (!active_add(e, p)) {
        prun_free(p);
        return ap_err_set(err, AP_CONFLICT, "the panel is already running in this process");
    }
    __atomic_add_fetch(&p->r->starting, 1, __ATOMIC_RELAXED);
    if (llm_loop_post(p->r->loop, start_on_runner, p) != AP_OK) {
        __atomic_sub_fetch(&p->r->starting, 1, __ATOMIC_RELAXED);
        prun_release(p);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    return AP_OK;
}

/* ---- public API ----------------------------------------------------------------------- */

ap_status panel_engine_start(const panel_engine_opts *o, panel_engine **out, ap_err *err)
{
    *out = NULL;
    panel_engine *e = calloc(1, sizeof *e);
    if (e == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    e->cfg = o->cfg;
    e->st = o->store;
    e->reg = o->registry;
    e->provider = dup_or_null(o->provider);
    e->model = dup_or_null(o->model);
    e->seed = o->seed;
    script_limits_default(&e->lim);
    e->max_steps = 500;
    if (o->cfg != NULL) {
        e->lim.memory_bytes = (size_t)o->cfg->runtime_lua_memory_mb * 1024 * 1024;
        e->lim.instructions = o->cfg->runtime_node_instructions;
        e->lim.timeout_ms = o->cfg->runtime_node_timeout_ms;
        e->max_steps = o->cfg->runtime_max_steps;
    }
    int n = o->runners > 0 ? o->runners : (o->cfg != NULL ? (int)o->cfg->runtime_runners : 0);
    if (n <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = cores > 0 ? (int)cores : 1;
    }
    pthread_mutex_init(&e->wmu, NULL);
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    /* a subscribe must not wait out a stream of readers */
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&e->smu, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&e->amu, NULL);
    pthread_mutex_init(&e->pmu, NULL);
    pthread_mutex_init(&e->lmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->lcond, &ca);
    pthread_cond_init(&e->wcond, &ca);
    pthread_condattr_destroy(&ca);
    e->gather_us = 1000 * (o->cfg != NULL ? o->cfg->runtime_writer_gather_ms : WRITER_GATHER_MS);
    e->lease_ms = o->cfg != NULL ? o->cfg->runtime_lease_ms : LEASE_MS_DEFAULT;
    e->adopt = o->adopt;
    ap_status orc = lease_owner_init(e, err);
    if (orc != AP_OK) {
        panel_engine_stop(e);
        return orc;
    }
    e->runners = calloc((size_t)n, sizeof *e->runners);
    if (e->runners == NULL || (o->provider != NULL && e->provider == NULL)) {
        panel_engine_stop(e);
        return ap_err_set(err, AP_NOMEM, "out of memory");
    }
    if (o->provider != NULL &&
        !llm_provider_known(o->cfg != NULL ? o->cfg->llm : NULL, o->provider)) {
        panel_engine_stop(e);
        return ap_err_set(err, AP_INVALID, "unknown LLM provider '%s'", o->provider);
    }
    if (pthread_create(&e->writer, NULL, writer_main, e) != 0) {
        panel_engine_stop(e);
        return ap_err_set(err, AP_ERROR, "cannot start the event writer");
    }
    e->writer_started = true;
    e->nrunners = n;
    for (int i = 0; i < n; i++) {
        runner *r = &e->runners[i];
        r->e = e;
        r->idx = i;
        buf_init(&r->outcome, SCRATCH_MAX);
        buf_init(&r->message, SCRATCH_MAX);
        ap_status rc = llm_loop_new(&r->loop, err);
        if (rc == AP_OK)
            rc = llm_client_new(r->loop, o->cfg != NULL ? o->cfg->llm : NULL, &r->llm, err);
        if (rc == AP_OK && pthread_create(&r->th, NULL, runner_main, r) != 0)
            rc = ap_err_set(err, AP_ERROR, "cannot start a runner thread");
        if (rc != AP_OK) {
            panel_engine_stop(e);
            return rc;
        }
        r->started = true;
    }
    if (e->st != NULL) {
        if (pthread_create(&e->leaser, NULL, leaser_main, e) != 0) {
            panel_engine_stop(e);
            return ap_err_set(err, AP_ERROR, "cannot start the lease thread");
        }
        e->leaser_started = true;
    }
    *out = e;
    return AP_OK;
}

void panel_engine_stop(panel_engine *e)
{
    if (e == NULL)
        return;
    if (e->leaser_started) {
        pthread_mutex_lock(&e->lmu);
        __atomic_store_n(&e->lstop, true, __ATOMIC_RELAXED); /* a sweep reads it unlocked */
        pthread_cond_signal(&e->lcond);
        pthread_mutex_unlock(&e->lmu);
        pthread_join(e->leaser, NULL);
    }
    for (int i = 0; i < e->nrunners; i++) {
        runner *r = &e->runners[i];
        if (r->started) {
            if (post_cmd(e, r, CMD_STOP, NULL, 0) != AP_OK)
                llm_loop_stop(r->loop);
            pthread_join(r->th, NULL);
        }
        llm_client_free(r->llm);
        llm_loop_free(r->loop);
        buf_free(&r->outcome);
        buf_free(&r->message);
    }
    if (e->writer_started) {
        pthread_mutex_lock(&e->wmu);
        e->wstop = true;
        pthread_cond_signal(&e->wcond);
        pthread_mutex_unlock(&e->wmu);
        pthread_join(e->writer, NULL);
    }
    /* The panels stopped here (still running in the store) may be resumed elsewhere at once;
     * everything they wrote is stored by now. */
    ap_err lerr = {0};
    if (e->leaser_started && store_panel_leases_release(e->st, e->owner, &lerr) != AP_OK)
        log_warn("the leases of this engine's panels were not given up (%s); they can be "
                 "resumed elsewhere once they run out",
                 lerr.msg);
    free(e->runners);
    free(e->provider);
    free(e->model);
    pthread_mutex_destroy(&e->wmu);
    pthread_cond_destroy(&e->wcond);
    pthread_rwlock_destroy(&e->smu);
    pthread_mutex_destroy(&e->amu);
    for (size_t i = 0; i < e->npinned; i++)
        free(e->pinned[i]);
    free(e->pinned);
    pthread_mutex_destroy(&e->pmu);
    pthread_mutex_destroy(&e->lmu);
    pthread_cond_destroy(&e->lcond);
    free(e);
}

ap_status panel_engine_create(panel_engine *e, const char *tenant_id, const panel_create_req *req,
                              store_panel *out, ap_err *err)
{
    store_tenant tenant = {0};
    script_entry en = {0};
    char *params = NULL;
    if (e->st == NULL)
        return ap_err_set(err, AP_INVALID, "no store");
    if (req->question == NULL || req->question[0] == '\0')
        return ap_err_set(err, AP_INVALID, "a panel needs a question");
    if (req->strategy == NULL)
        return ap_err_set(err, AP_INVALID, "a panel needs a strategy");
    ap_status rc = store_tenant_get(e->st, tenant_id, &tenant, err);
    if (rc == AP_OK)
        rc = panel_engine_resolve_script(e->st, e->reg, tenant_id, tenant.slug, SCRIPT_STRATEGY,
                                         req->strategy, &en, err);
    if (rc == AP_OK)
        rc = script_params_apply(en.info.params_json, req->params_json, &params, err);
    if (rc == AP_OK && req->consensus != NULL && req->consensus[0] != '\0') {
        script_entry c = {0};
        rc = panel_engine_resolve_script(e->st, e->reg, tenant_id, tenant.slug, SCRIPT_CONSENSUS,
                                         req->consensus, &c, err);
        script_entry_free(&c);
    }
    if (rc == AP_OK)
        rc = pin_script(e, tenant.id, &en, err);
    if (rc == AP_OK) {
        store_panel in = {
            .title = (char *)req->title,
            .question = (char *)req->question,
            .strategy = en.name,
            .strategy_version = en.version,
            .consensus =
                (char *)(req->consensus != NULL && req->consensus[0] != '\0' ? req->consensus
                                                                             : en.info.consensus),
            .params = params,
            .experts = (char *)(req->experts_json != NULL ? req->experts_json
                                                          : panel_roster_default_json()),
            .status = "created",
            .idempotency_key = (char *)req->idempotency_key,
            .request_hash = (char *)req->request_hash,
        };
        store_panel tmp = {0};
        rc = store_panel_create(e->st, tenant_id, &in, out != NULL ? out : &tmp, err);
        store_panel_free(&tmp);
    }
    free(params);
    script_entry_free(&en);
    store_tenant_free(&tenant);
    return rc;
}

/* Whether the panel is still waiting for its first execute (created or queued). */
static bool still_fresh(panel_engine *e, const char *tenant_id, const char *panel_id)
{
    store_panel row = {0};
    bool fresh = store_panel_get(e->st, tenant_id, panel_id, &row, NULL) == AP_OK &&
                 status_fresh(row.status);
    store_panel_free(&row);
    return fresh;
}

ap_status panel_engine_execute(panel_engine *e, const char *tenant_id, const char *panel_id,
                               ap_err *err)
{
    static const char *const from[] = {"created", "queued"};
    if (e->st == NULL)
        return ap_err_set(err, AP_INVALID, "no store");
    prun *p = NULL;
    ap_status rc = prepare(e, tenant_id, panel_id, &p, err);
    if (rc != AP_OK)
        return rc;
    /* the lease comes with the status: the panel start makes no extra round trip for it */
    rc = store_panel_claim(e->st, tenant_id, panel_id, from, 2, e->owner, e->lease_ms, NULL,
                           p->max_live, err);
    if (rc == AP_LIMIT && !still_fresh(e, tenant_id, panel_id))
        rc = AP_CONFLICT; /* the limit was counted first, but the panel has moved on anyway */
    if (rc != AP_OK) {
        if (rc == AP_CONFLICT)
            ap_err_set(err, AP_CONFLICT, "the panel was already started");
        else if (rc == AP_LIMIT)
            ap_err_set(err, AP_LIMIT,
                       "this tenant already runs %lld panels, its limit; retry when one finishes",
                       (long long)p->max_live);
        prun_free(p);
        return rc;
    }
    p->fresh = true;
    return launch(e, p, err);
}

/* panel_engine_resume; a sweep (see sweep) leaves alone the panels under this
 * engine's own lease: one that ends here is still running in the store until the writer has
 * stored its end, and taking it again would run its node again and pay for its answers twice. */
static ap_status resume_one(panel_engine *e, const char *tenant_id, const char *panel_id,
                            bool sweep, ap_err *err)
{
    static const char *const from[] = {"running"};
    if (e->st == NULL)
        return ap_err_set(err, AP_INVALID, "no store");
    store_panel row = {0};
    prun *p = NULL;
    const char *takeover = NULL;
    ap_status rc = store_panel_get(e->st, tenant_id, panel_id, &row, err);
    if (rc != AP_OK)
        goto out;
    if (sweep && (strcmp(row.status, "running") != 0 ||
                  (row.lease_owner != NULL && strcmp(row.lease_owner, e->owner) == 0))) {
        rc = ap_err_set(err, AP_CONFLICT, "not the sweep's to take");
        goto out;
    }
    if (status_fresh(row.status)) {
        rc = panel_engine_execute(e, tenant_id, panel_id, err);
        goto out;
    }
    if (strcmp(row.status, "running") != 0 || !lease_claimable(e, &row, &takeover)) {
        rc = resume_refused(&row, err);
        goto out;
    }
    /* Claimed before the checkpoint is read: from here on no other process writes one. */
    rc = store_panel_claim(e->st, tenant_id, panel_id, from, 1, e->owner, e->lease_ms, takeover, 0,
                           err);
    if (rc == AP_CONFLICT) {
        /* another process was quicker since the read: say who */
        store_panel_free(&row);
        if ((rc = store_panel_get(e->st, tenant_id, panel_id, &row, err)) == AP_OK)
            rc = resume_refused(&row, err);
        goto out;
    }
    if (rc != AP_OK)
        goto out;
    if ((rc = prepare(e, tenant_id, panel_id, &p, err)) == AP_OK)
        rc = launch(e, p, err);
    if (rc != AP_OK && !panel_engine_runs(e, row.id)) {
        /* Nothing runs it here: the lease runs out at once, for a process that can. */
        store_panel_ref ref = {0};
        snprintf(ref.tenant_id, sizeof ref.tenant_id, "%s", row.tenant_id);
        snprintf(ref.panel_id, sizeof ref.panel_id, "%s", row.id);
        bool renewed = false;
        ap_err ignore = {0};
        store_panel_leases_renew(e->st, e->owner, &ref, 1, 1, &renewed, &ignore);
    }
out:
    store_panel_free(&row);
    return rc;
}

ap_status panel_engine_resume(panel_engine *e, const char *tenant_id, const char *panel_id,
                              ap_err *err)
{
    return resume_one(e, tenant_id, panel_id, false, err);
}

/* Counts of one pass of resumes, for its one summary line. */
typedef struct resume_tally {
    size_t started, failed;
    char first[AP_ERR_MSG_MAX + STORE_ID_MAX + 4]; /* the first failure */
} resume_tally;

/* Resumes one panel of a pass and counts the outcome. A sweep sums up those it could not run (a
 * provider or script this process lacks: their lease runs out again at once) and is silent on
 * those another process holds; the pass at start says why of each. */
static void resume_counted(panel_engine *e, const char *tenant_id, const char *panel_id, bool sweep,
                           resume_tally *t)
{
    ap_err one = {0};
    ap_status rc = resume_one(e, tenant_id, panel_id, sweep, &one);
    if (rc == AP_OK) {
        t->started++;
    } else if (sweep && rc != AP_CONFLICT) {
        if (t->failed++ == 0)
            snprintf(t->first, sizeof t->first, "%s: %s", panel_id, one.msg);
    } else if (!sweep) {
        log_msg(rc == AP_CONFLICT ? LOG_LEVEL_INFO : LOG_LEVEL_WARN,
                &(log_fields){.tenant_id = tenant_id, .panel_id = panel_id},
                "not resuming panel: %s", one.msg);
    }
}

static void tally_log(const resume_tally *t)
{
    if (t->failed > 0)
        log_warn("%zu running panel(s) whose lease ran out cannot run here (first: %s)", t->failed,
                 t->first);
}

/* Resumes the store's running panels at start (panel_engine_resume_all). */
static ap_status resume_running(panel_engine *e, size_t *started, ap_err *err)
{
    store_panel_ref *refs = NULL;
    size_t count = 0;
    resume_tally t = {0};
    ap_status rc = store_panels_in_status(e->st, "running", &refs, &count, err);
    for (size_t i = 0; rc == AP_OK && i < count; i++)
        resume_counted(e, refs[i].tenant_id, refs[i].panel_id, false, &t);
    tally_log(&t);
    free(refs);
    *started = t.started;
    return rc;
}

/* One sweep: takes over the running panels that no live process holds, from the store's
 * candidates (lease free, run out, or held by another process of this host whose holder here
 * is gone), one page at a time after the last sweep's. A sweep runs on the leaser's thread: it
 * gives way to the next renewal of this engine's own leases after a third of a lease period,
 * and the next one goes on from where it stopped, so a backlog of orphans is read once, not
 * once per sweep. It skips the panels this engine runs or holds: one that ends here is still
 * running in the store until the writer has stored its end. *started gets how many. */
static ap_status sweep(panel_engine *e, size_t *started, ap_err *err)
{
    char prefix[LEASE_HOST_MAX + 2];
    snprintf(prefix, sizeof prefix, "%s:", e->host);
    resume_tally t = {0};
    int64_t until = clock_mono_ms() + e->lease_ms / 3;
    ap_status rc = AP_OK;
    bool more = true;
    while (rc == AP_OK && more) {
        store_lease_ref *page = NULL;
        size_t n = 0, i = 0;
        rc = store_panels_lease_free(e->st, e->owner, prefix,
                                     e->sweep_after.panel_id[0] != '\0' ? &e->sweep_after : NULL,
                                     SWEEP_PAGE, &page, &n, err);
        for (; rc == AP_OK && i < n; i++) {
            if (__atomic_load_n(&e->lstop, __ATOMIC_RELAXED) || clock_mono_ms() > until)
                break;
            const store_lease_ref *l = &page[i];
            bool held = l->owner[0] != '\0' && l->expires_at > clock_wall_ms() &&
                        !lease_owner_gone(e, l->owner);
            if (!held && !panel_engine_runs(e, l->panel_id))
                resume_counted(e, l->tenant_id, l->panel_id, true, &t);
        }
        /* The next page starts after the last candidate looked at, or from the oldest again
         * once the last page was read to its end. */
        bool to_end = rc == AP_OK && i == n;
        if (i > 0)
            e->sweep_after = page[i - 1];
        if (to_end && n < SWEEP_PAGE)
            e->sweep_after.panel_id[0] = '\0';
        more = to_end && n == SWEEP_PAGE;
        free(page);
    }
    tally_log(&t);
    *started = t.started;
    return rc;
}

ap_status panel_engine_resume_all(panel_engine *e, size_t *n, ap_err *err)
{
    size_t started = 0;
    ap_status rc = e->st != NULL ? resume_running(e, &started, err) : AP_OK;
    if (n != NULL)
        *n = started;
    return rc;
}

#define CANCEL_EVENT_TRIES 5

/* Cancels a panel this process does not run, in the store: the status, then the event that
 * says so after the panel's last. The status change takes the lease from whoever held it, so
 * from then on the store refuses that process's writes (it stops at its next renewal); one of
 * its events still committing meanwhile can take the seq, and the next one is tried. */
static ap_status cancel_in_store(panel_engine *e, const char *tenant_id, const char *panel_id,
                                 ap_err *err)
{
    ap_status rc = store_panel_transition(e->st, tenant_id, panel_id, live_statuses, 4, "cancelled",
                                          NULL, NULL, err);
    if (rc != AP_OK)
        return rc;
    ap_err one = {0};
    ap_status stored = AP_CONFLICT;
    for (int i = 0; i < CANCEL_EVENT_TRIES && stored == AP_CONFLICT; i++) {
        int64_t last = 0;
        if ((stored = store_events_last_seq(e->st, tenant_id, panel_id, &last, &one)) != AP_OK)
            break;
        store_event ev = {
            .seq = last + 1, .type = "panel.status", .data = "{\"status\":\"cancelled\"}"};
        snprintf(ev.panel_id, sizeof ev.panel_id, "%s", panel_id);
        if ((stored = store_events_append(e->st, tenant_id, &ev, 1, &one)) == AP_OK)
            publish_now(e, &ev);
    }
    if (stored != AP_OK)
        log_warn("cancel of %s: event not stored: %s", panel_id, one.msg);
    return AP_OK;
}

#define CANCEL_WAIT_MS 2000
#define CANCEL_SUB_QUEUE 1024
#define CANCEL_DURABLE_MS 10000

/* Waits at most ms for the first event published to sub that wanted accepts (the writer
 * publishes an event once it is stored); true with it in *ev (caller clears), false when
 * none came in time. */
static bool wait_published(panel_sub *sub, int64_t ms, bool (*wanted)(const panel_event *ev),
                           panel_event *ev)
{
    int64_t deadline = clock_mono_ms() + ms;
    for (int64_t left = ms; left > 0; left = deadline - clock_mono_ms()) {
        int got = panel_sub_next(sub, ev, (int)left);
        if (got < 0)
            continue;
        if (got == 0)
            break;
        if (wanted(ev))
            return true;
        panel_event_clear(ev);
    }
    return false;
}

static bool ends(const panel_event *ev)
{
    return ends_panel(ev->type, ev->data);
}

/* Waits until the end of the panel is stored: AP_OK for the cancel this process's runner was
 * handed, AP_CONFLICT when the panel ended otherwise first (the runner had finished it when
 * the cancel came), AP_TIMEOUT when neither came. */
static ap_status wait_cancel_durable(panel_sub *sub)
{
    panel_event ev;
    if (!wait_published(sub, CANCEL_DURABLE_MS, ends, &ev))
        return AP_TIMEOUT;
    bool cancelled = strcmp(ev.type, "panel.status") == 0;
    panel_event_clear(&ev);
    return cancelled ? AP_OK : AP_CONFLICT;
}

/* A panel this process runs is cancelled by its runner; any other in the store (see
 * cancel_in_store), except one this process has just claimed (an input, a resume) and is
 * about to start, which is waited for (CANCEL_WAIT_MS at most) so that its runner does it. */
static ap_status cancel_panel(panel_engine *e, const char *tenant_id, const char *panel_id,
                              panel_sub *sub, ap_err *err)
{
    int64_t deadline = clock_mono_ms() + CANCEL_WAIT_MS;
    for (;;) {
        store_panel row = {0};
        if (e->st != NULL) {
            ap_status rc = store_panel_get(e->st, tenant_id, panel_id, &row, err);
            if (rc != AP_OK)
                return rc;
            if (strcmp(row.status, "completed") == 0 || strcmp(row.status, "failed") == 0 ||
                strcmp(row.status, "cancelled") == 0) {
                store_panel_free(&row);
                return ap_err_set(err, AP_CONFLICT, "the panel has already finished");
            }
        }
        pthread_mutex_lock(&e->amu);
        prun *p = active_find_locked(e, panel_id);
        runner *r = p != NULL ? p->r : NULL;
        pthread_mutex_unlock(&e->amu);
        /* a runner here whose lease another process has taken (it stops at its next renewal)
         * could write nothing: the cancel goes to the store */
        bool lost =
            e->st != NULL && row.lease_owner != NULL && strcmp(row.lease_owner, e->owner) != 0;
        if (r != NULL && lost) {
            store_panel_free(&row);
            return cancel_in_store(e, tenant_id, panel_id, err);
        }
        if (r != NULL) {
            store_panel_free(&row);
            if (post_cmd(e, r, CMD_CANCEL, panel_id, 0) != AP_OK)
                return ap_err_set(err, AP_NOMEM, "out of memory");
            /* Answered once the cancel is stored: the runner may have finished the panel in
             * the meantime, which a cancel answered at once reported as done. */
            ap_status rc = wait_cancel_durable(sub);
            if (rc == AP_CONFLICT)
                return ap_err_set(err, AP_CONFLICT, "the panel has already finished");
            if (rc == AP_TIMEOUT)
                log_warn("a cancel handed to the runner is not stored after %d ms; answering "
                         "its request anyway",
                         CANCEL_DURABLE_MS);
            return AP_OK;
        }
        if (e->st == NULL)
            return ap_err_set(err, AP_NOTFOUND, "no such panel");
        bool ours = strcmp(row.status, "running") == 0 && row.lease_owner != NULL &&
                    strcmp(row.lease_owner, e->owner) == 0;
        store_panel_free(&row);
        if (!ours || clock_mono_ms() >= deadline)
            return cancel_in_store(e, tenant_id, panel_id, err);
        usleep(2000); /* claimed here a moment ago: it is about to start */
    }
}

ap_status panel_engine_cancel(panel_engine *e, const char *tenant_id, const char *panel_id,
                              ap_err *err)
{
    /* Subscribed before anything is looked at, so that an end published meanwhile is seen. */
    panel_sub *sub = NULL;
    ap_status rc =
        panel_engine_subscribe(e, tenant_id, panel_id, CANCEL_SUB_QUEUE, NULL, NULL, &sub, err);
    if (rc == AP_OK)
        rc = cancel_panel(e, tenant_id, panel_id, sub, err);
    panel_engine_unsubscribe(e, sub);
    return rc;
}

#define INPUT_SUB_QUEUE 256
#define INPUT_DURABLE_MS 10000

/* Waits until the panel's input.received is published, which the writer does only once it is
 * stored together with the checkpoint that journals the input (deliver_input), or until the
 * panel ends first. Before that the input lives only in this process: answering the caller
 * earlier, a crash could lose an input it was told had been accepted. */
static bool input_settled(const panel_event *ev)
{
    return strcmp(ev->type, "input.received") == 0 || strcmp(ev->type, "input.requested") == 0 ||
           ends(ev);
}

static void wait_input_durable(panel_sub *sub)
{
    panel_event ev;
    if (wait_published(sub, INPUT_DURABLE_MS, input_settled, &ev))
        panel_event_clear(&ev);
    else
        log_warn("an input is not stored after %d ms; answering its request anyway",
                 INPUT_DURABLE_MS);
}

/* The seq of the request a panel waits for, as its events show it: a wait is stored in one
 * transaction ending with its input.requested (handle_step), so while the panel waits that is
 * its last event, and any earlier request was answered already. *seq is 0 when the last event
 * is another (the panel runs, or its store was written before the two were stored together). */
static ap_status last_request(panel_engine *e, const char *tenant_id, const char *panel_id,
                              int64_t *seq, ap_err *err)
{
    store_event *rows = NULL;
    size_t n = 0;
    int64_t last = 0;
    *seq = 0;
    ap_status rc = store_events_last_seq(e->st, tenant_id, panel_id, &last, err);
    if (rc == AP_OK && last > 0)
        rc = store_events_list(e->st, tenant_id, panel_id, last - 1, 1, &rows, &n, err);
    if (rc == AP_OK && n == 1 && rows[0].seq == last &&
        strcmp(rows[0].type, "input.requested") == 0)
        *seq = last;
    store_events_free(rows, n);
    return rc;
}

static ap_status stale_request(ap_err *err, int64_t request_seq, int64_t pending)
{
    if (pending > 0)
        return ap_err_set(err, AP_CONFLICT,
                          "request %lld is not the pending one: the panel's latest request is %lld",
                          (long long)request_seq, (long long)pending);
    return ap_err_set(err, AP_CONFLICT,
                      "request %lld is not pending: the panel's pending request is not on record",
                      (long long)request_seq);
}

ap_status panel_engine_input(panel_engine *e, const char *tenant_id, const char *panel_id,
                             const char *input_json, int64_t request_seq, ap_err *err)
{
    static const char *const from[] = {"awaiting_input"};
    char *input = NULL;
    bool claimed = false;
    size_t len = input_json != NULL ? strlen(input_json) : 0;
    if (e->st == NULL)
        return ap_err_set(err, AP_INVALID, "no store");
    if (request_seq < 0)
        return ap_err_set(err, AP_INVALID, "request_seq must be 1 or more (0: not given)");
    if (len == 0 || len > MAX_INPUT_BYTES)
        return ap_err_set(err, AP_INVALID, "input must be 1 byte to 256 KiB");
    if (!jsonx_utf8_valid(input_json, len))
        return ap_err_set(err, AP_INVALID, "input is not valid UTF-8");
    /* {"text":"a\u0000b"} would be read as "a" */
    if (jsonx_escapes_nul(input_json, len))
        return ap_err_set(err, AP_INVALID, "input may not contain NUL (\\u0000)");
    cJSON *in = jsonx_parse(input_json, len, 32, NULL);
    if (!cJSON_IsObject(in)) {
        /* Plain text becomes {"text": ...}. */
        cJSON_Delete(in);
        in = cJSON_CreateObject();
        cJSON_AddStringToObject(in, "text", input_json);
    }
    input = jsonx_print(in);
    cJSON_Delete(in);
    if (input == NULL)
        return ap_err_set(err, AP_NOMEM, "out of memory");
    /* Subscribed before the claim, so the input's own event cannot pass unseen. */
    panel_sub *sub = NULL;
    ap_status rc =
        panel_engine_subscribe(e, tenant_id, panel_id, INPUT_SUB_QUEUE, NULL, NULL, &sub, err);
    if (rc != AP_OK)
        goto out;
    /* An answer to a request already answered is refused before the claim, so that it does not
     * hold the panel even for a moment: the right answer, arriving then, would find it taken. */
    int64_t pending = 0;
    if (request_seq > 0 && (rc = last_request(e, tenant_id, panel_id, &pending, err)) != AP_OK)
        goto out;
    if (pending > 0 && pending != request_seq) {
        rc = stale_request(err, request_seq, pending);
        goto out;
    }
    /* A waiting panel is held by no process (see handle_step): the answer claims it, whichever
     * process it reaches, and resumes it here from its checkpoint with the answer waiting. */
    /* no limit: the panel was live already while it waited */
    rc =
        store_panel_claim(e->st, tenant_id, panel_id, from, 1, e->owner, e->lease_ms, NULL, 0, err);
    if (rc == AP_CONFLICT && request_seq > 0)
        ap_err_set(err, AP_CONFLICT,
                   "request %lld is not pending: the panel is not waiting for input",
                   (long long)request_seq);
    else if (rc == AP_CONFLICT)
        ap_err_set(err, AP_CONFLICT, "the panel is not waiting for input");
    if (rc != AP_OK)
        goto out;
    claimed = true;
    /* Checked again once claimed, when no other answer can come in between: since the look
     * above, another may have taken the request and the panel may wait for its next one. */
    if (request_seq > 0 && (rc = last_request(e, tenant_id, panel_id, &pending, err)) == AP_OK &&
        pending != request_seq)
        rc = stale_request(err, request_seq, pending);
    prun *np = NULL;
    if (rc == AP_OK && (rc = prepare(e, tenant_id, panel_id, &np, err)) == AP_OK) {
        np->pending_input = input;
        input = NULL;
        rc = launch(e, np, err);
    }
    if (rc == AP_OK)
        wait_input_durable(sub);
out:
    if (claimed && rc != AP_OK) {
        /* give the input back: the panel still waits for it */
        static const char *const running[] = {"running"};
        ap_err ignore = {0};
        store_panel_transition(e->st, tenant_id, panel_id, running, 1, "awaiting_input", NULL, NULL,
                               &ignore);
    }
    panel_engine_unsubscribe(e, sub);
    free(input);
    return rc;
}

/* ---- scripts -------------------------------------------------------------------------- */

static cJSON *script_json(const script_entry *en)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", en->name);
    cJSON_AddStringToObject(o, "version", en->version);
    cJSON_AddStringToObject(o, "origin", en->origin);
    if (en->kind == SCRIPT_STRATEGY) {
        cJSON_AddStringToObject(o, "description", en->info.description ? en->info.description : "");
        if (en->info.consensus != NULL)
            cJSON_AddStringToObject(o, "consensus", en->info.consensus);
        else
            cJSON_AddNullToObject(o, "consensus");
        cJSON *params =
            en->info.params_json != NULL
                ? jsonx_parse(en->info.params_json, strlen(en->info.params_json), 32, NULL)
                : NULL;
        cJSON_AddItemToObject(o, "params", params != NULL ? params : cJSON_CreateObject());
        cJSON *nodes = en->info.nodes_json != NULL
                           ? jsonx_parse(en->info.nodes_json, strlen(en->info.nodes_json), 4, NULL)
                           : NULL;
        cJSON_AddItemToObject(o, "nodes", nodes != NULL ? nodes : cJSON_CreateArray());
    }
    return o;
}

static int cmp_by_name(const void *a, const void *b)
{
    const char *x = jsonx_string(*(cJSON *const *)a, "name");
    const char *y = jsonx_string(*(cJSON *const *)b, "name");
    return strcmp(x != NULL ? x : "", y != NULL ? y : "");
}

/* The items of arr in a new array sorted by name; takes ownership of arr. (cJSON's in-place
 * detach and insert is not reliable enough to sort with.) */
static cJSON *sorted_by_name(cJSON *arr)
{
    int count = cJSON_GetArraySize(arr);
    if (count <= 1)
        return arr;
    cJSON **items = calloc((size_t)count, sizeof *items);
    if (items == NULL) {
        cJSON_Delete(arr);
        return NULL;
    }
    for (int i = 0; i < count; i++)
        items[i] = cJSON_DetachItemFromArray(arr, 0);
    qsort(items, (size_t)count, sizeof *items, cmp_by_name);
    for (int i = 0; i < count; i++)
        cJSON_AddItemToArray(arr, items[i]);
    free(items);
    return arr;
}

ap_status panel_engine_list_scripts(panel_engine *e, const char *tenant_id, script_kind kind,
                                    char **json, ap_err *err)
{
    store_tenant tenant = {0};
    store_script *rows = NULL;
    size_t n = 0;
    script_entry *files = NULL;
    size_t nfiles = 0;
    *json = NULL;
    ap_status rc = e->st != NULL ? store_tenant_get(e->st, tenant_id, &tenant, err) : AP_OK;
    if (rc == AP_OK && e->st != NULL)
        rc = store_script_list(e->st, tenant_id, (store_script_kind)kind, NULL, &rows, &n, err);
    if (rc == AP_OK)
        rc = script_registry_list(e->reg, tenant.slug, kind, &files, &nfiles, err);
    if (rc != AP_OK)
        goto out;
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr != NULL && i < n; i++) {
        if (!rows[i].active)
            continue;
        script_entry en = {0};
        ap_err one = {0};
        if (script_registry_validate(e->reg, kind, rows[i].name, rows[i].source,
                                     strlen(rows[i].source), "override", &en, &one) == AP_OK)
            cJSON_AddItemToArray(arr, script_json(&en));
        else
            log_warn("override %s of tenant %s no longer passes: %s", rows[i].name, tenant_id,
                     one.msg);
        script_entry_free(&en);
    }
    for (size_t i = 0; arr != NULL && i < nfiles; i++) {
        bool overridden = false;
        const cJSON *x;
        cJSON_ArrayForEach(x, arr) overridden =
            overridden || strcmp(jsonx_string(x, "name"), files[i].name) == 0;
        if (!overridden)
            cJSON_AddItemToArray(arr, script_json(&files[i]));
    }
    arr = sorted_by_name(arr);
    *json = arr != NULL ? jsonx_print(arr) : NULL;
    cJSON_Delete(arr);
    rc = *json != NULL ? AP_OK : ap_err_set(err, AP_NOMEM, "out of memory");
out:
    store_scripts_free(rows, n);
    script_entries_free(files, nfiles);
    store_tenant_free(&tenant);
    return rc;
}

static int line_of(const char *name, const char *msg)
{
    char chunk[96];
    snprintf(chunk, sizeof chunk, "%s.lua:", name);
    const char *hit = strstr(msg, chunk);
    return hit != NULL ? (int)strtol(hit + strlen(chunk), NULL, 10) : 0;
}

static const char sample_ballots[] =
    "[{\"expert\":\"a\",\"name\":\"A\",\"position\":\"yes\",\"confidence\":0.8,\"weight\":1,"
    "\"ranking\":[\"x\",\"y\"],\"approvals\":[\"x\"],\"estimate\":10,"
    "\"distribution\":{\"x\":0.6,\"y\":0.4},\"reason\":\"r\"},"
    "{\"expert\":\"b\",\"name\":\"B\",\"position\":\"no\",\"confidence\":0.6,\"weight\":2,"
    "\"ranking\":[\"y\",\"x\"],\"approvals\":[\"y\"],\"estimate\":14,"
    "\"distribution\":{\"x\":0.3,\"y\":0.7},\"reason\":\"r\"}]";

ap_status panel_engine_put_script(panel_engine *e, const char *tenant_id, script_kind kind,
                                  const char *name, const char *source, size_t len, char *version,
                                  int *line, ap_err *err)
{
    script_entry en = {0};
    char *result = NULL;
    if (line != NULL)
        *line = 0;
    if (e->st == NULL)
        return ap_err_set(err, AP_INVALID, "no store");
    ap_status rc = script_registry_validate(e->reg, kind, name, source, len, "override", &en, err);
    script_limits dry_lim;
    script_limits_for_check(&e->lim, &dry_lim);
    if (rc == AP_OK && kind == SCRIPT_CONSENSUS)
        rc = script_consensus_dry_run(&dry_lim, name, source, len, sample_ballots, NULL, &result,
                                      err);
    if (rc == AP_OK && kind == SCRIPT_STRATEGY && e->cfg != NULL) {
        panel_dry_result dry;
        rc = panel_dry_run(e->cfg, &en, &dry, err);
    }
    if (rc == AP_OK) {
        store_script sc = {.kind = (store_script_kind)kind,
                           .name = en.name,
                           .version = en.version,
                           .source = en.source,
                           .origin = "override"};
        snprintf(sc.tenant_id, sizeof sc.tenant_id, "%s", tenant_id);
        rc = store_script_put(e->st, tenant_id, &sc, true, err);
        if (rc == AP_OK && version != NULL)
            memcpy(version, en.version, IDS_SHA256_HEX_LEN + 1);
    } else if (line != NULL && err != NULL) {
        *line = line_of(name, err->msg);
    }
    free(result);
    script_entry_free(&en);
    if (rc == AP_LIMIT && err != NULL) {
        /* a script that breaks a limit while being checked is simply invalid */
        char msg[AP_ERR_MSG_MAX];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return ap_err_set(err, AP_INVALID, "%s", msg);
    }
    return rc == AP_LIMIT ? AP_INVALID : rc;
}
