-- 002_cheaper_writes.sql: the same rows and rules, cheaper to write for the event writer.
--
-- SQLite cannot alter a constraint in place, so the tables are rebuilt (the documented
-- new-table, copy, drop, rename procedure). The migration runner applies migrations with
-- foreign keys off and checks them (PRAGMA foreign_key_check) before committing, so dropping
-- the old panels table neither cascades into its events and checkpoints nor leaves a
-- dangling reference; the children refer to the table by name and find the new one.
--
-- - panels: the status CHECK lists its statuses as comparisons. As `status IN (...)` SQLite
--   built a temporary b-tree of the seven names for every insert and status change.
-- - checkpoints: no json_valid CHECKs on state and journal, as panel_events has none on data.
--   The store validates both before every write (store_checkpoint_put parses them, the
--   engine's batch path checks its own JSON), and the CHECKs parsed each checkpoint again on
--   every put, ~5 % of the writer's instructions.
-- - Keys that hold a panel id and its tenant id list the panel id first: the unique
--   (id, tenant_id) that events and checkpoints refer to, the events' primary key
--   (panel_id, tenant_id, seq) and the checkpoints' (panel_id, tenant_id). The same columns
--   and the same rules; but every key comparison of a b-tree seek began with the tenant id,
--   which is equal in most rows (one tenant's panels), so SQLite compared the whole records.
--   A (mostly) distinct first column ends most comparisons at their first field, SQLite's
--   fast path: each event insert (its primary key and its foreign key) and each checkpoint
--   put seeks twice. Lookups bind both columns, so every query finds the same rows by the
--   same index.

CREATE TABLE panels_002 (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title            TEXT,
    question         TEXT NOT NULL,
    strategy         TEXT NOT NULL,
    strategy_version TEXT,
    consensus        TEXT,
    params           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    experts          TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(experts)),
    status           TEXT NOT NULL CHECK (status = 'created' OR status = 'queued'
                         OR status = 'running' OR status = 'awaiting_input'
                         OR status = 'completed' OR status = 'failed' OR status = 'cancelled'),
    result           TEXT CHECK (result IS NULL OR json_valid(result)),
    error            TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (id, tenant_id)
);
INSERT INTO panels_002 (id, tenant_id, title, question, strategy, strategy_version, consensus,
                        params, experts, status, result, error, idempotency_key, request_hash,
                        created_at, updated_at)
    SELECT id, tenant_id, title, question, strategy, strategy_version, consensus, params,
           experts, status, result, error, idempotency_key, request_hash, created_at,
           updated_at
    FROM panels ORDER BY rowid;
DROP TABLE panels;
ALTER TABLE panels_002 RENAME TO panels;
CREATE UNIQUE INDEX panels_idempotency ON panels (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX panels_page ON panels (tenant_id, created_at, id);
CREATE INDEX panels_status ON panels (status);

CREATE TABLE checkpoints_002 (
    tenant_id      TEXT NOT NULL,
    panel_id       TEXT NOT NULL,
    step           INTEGER NOT NULL,
    next_node      TEXT,
    state          TEXT NOT NULL,
    script_version TEXT,
    journal        TEXT NOT NULL DEFAULT '[]',
    last_seq       INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (panel_id, tenant_id),
    FOREIGN KEY (tenant_id, panel_id) REFERENCES panels (tenant_id, id) ON DELETE CASCADE
);
INSERT INTO checkpoints_002 (tenant_id, panel_id, step, next_node, state, script_version, journal,
                             last_seq, created_at)
    SELECT tenant_id, panel_id, step, next_node, state, script_version, journal, last_seq,
           created_at
    FROM checkpoints ORDER BY rowid;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_002 RENAME TO checkpoints;

CREATE TABLE panel_events_002 (
    tenant_id  TEXT NOT NULL,
    panel_id   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (panel_id, tenant_id, seq),
    FOREIGN KEY (tenant_id, panel_id) REFERENCES panels (tenant_id, id) ON DELETE CASCADE
) WITHOUT ROWID;
INSERT INTO panel_events_002 (tenant_id, panel_id, seq, type, data, created_at)
    SELECT tenant_id, panel_id, seq, type, data, created_at FROM panel_events;
DROP TABLE panel_events;
ALTER TABLE panel_events_002 RENAME TO panel_events;
