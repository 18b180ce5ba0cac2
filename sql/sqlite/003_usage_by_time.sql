-- 003_usage_by_time.sql: usage rows keyed by what the summaries read, one index fewer.
--
-- usage_records was a rowid table with three b-trees per row: the table, the automatic index
-- of `id TEXT PRIMARY KEY` and usage_records_time (tenant_id, created_at). Every summary
-- (store_usage_summary: a tenant's rows in [from, to) grouped by expert, model or day) walked
-- usage_records_time and looked each row up in the table by rowid.
--
-- Now the table itself is that order: WITHOUT ROWID, keyed by (tenant_id, created_at, id), so
-- a summary is one range scan of the table, with no lookups, and usage_records_time goes. The
-- id stays UNIQUE on its own, as before (a duplicate id is a conflict whatever its tenant and
-- time), which is the second and last b-tree of a row. Usage is written in time order (ids
-- are UUIDv7, created_at is the time of the write), so both trees are appended at their ends.
-- The writer's cost per row stays the same (the key b-tree holds the whole row); the gain is
-- the summaries' (a month of 480 K rows: 67 -> 57 ms), which every panel start of a tenant
-- with a monthly budget runs.
--
-- The rows are copied over unchanged. A WITHOUT ROWID key cannot hold NULL, and no row could
-- hold one in these columns: tenant_id and created_at were NOT NULL, and every id the store
-- writes is a UUID.

CREATE TABLE usage_records_003 (
    id                TEXT NOT NULL UNIQUE,
    tenant_id         TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    panel_id          TEXT,
    expert_id         TEXT,
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd          REAL NOT NULL,
    latency_ms        INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, created_at, id)
) WITHOUT ROWID;
INSERT INTO usage_records_003 (id, tenant_id, panel_id, expert_id, provider, model, prompt_tokens,
                               completion_tokens, cost_usd, latency_ms, attempts, outcome,
                               created_at)
    SELECT id, tenant_id, panel_id, expert_id, provider, model, prompt_tokens, completion_tokens,
           cost_usd, latency_ms, attempts, outcome, created_at
    FROM usage_records;
DROP TABLE usage_records;
ALTER TABLE usage_records_003 RENAME TO usage_records;
