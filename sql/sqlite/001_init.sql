-- 001_init.sql: schema of the embedded SQLite store.
--
-- Mirrors sql/postgres/001_init.sql without roles or row-level security: SQLite runs in the
-- engine's own process, so isolation rests on the store API (every query filters on
-- tenant_id) and on layer-4 verification of rows read back. Ids are canonical lower-case UUID
-- text, times are epoch milliseconds, JSON columns are compact JSON text.
-- Tables that hang off a panel reference it by (tenant_id, panel_id), so a row can never point
-- at another tenant's panel.

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    config     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(config)),
    created_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    prefix     TEXT NOT NULL UNIQUE,
    hash       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('member', 'admin')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE experts (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL DEFAULT '',
    expertise  TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(expertise)),
    persona    TEXT NOT NULL DEFAULT '',
    model      TEXT,
    weight     REAL NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX experts_page ON experts (tenant_id, created_at, id);

CREATE TABLE panels (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title            TEXT,
    question         TEXT NOT NULL,
    strategy         TEXT NOT NULL,
    strategy_version TEXT,
    consensus        TEXT,
    params           TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
    experts          TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(experts)),
    status           TEXT NOT NULL CHECK (status IN ('created', 'queued', 'running',
                         'awaiting_input', 'completed', 'failed', 'cancelled')),
    result           TEXT CHECK (result IS NULL OR json_valid(result)),
    error            TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (tenant_id, id)
);
CREATE UNIQUE INDEX panels_idempotency ON panels (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX panels_page ON panels (tenant_id, created_at, id);
CREATE INDEX panels_status ON panels (status);

CREATE TABLE panel_events (
    tenant_id  TEXT NOT NULL,
    panel_id   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, panel_id, seq),
    FOREIGN KEY (tenant_id, panel_id) REFERENCES panels (tenant_id, id) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    tenant_id      TEXT NOT NULL,
    panel_id       TEXT NOT NULL,
    step           INTEGER NOT NULL,
    next_node      TEXT,
    state          TEXT NOT NULL CHECK (json_valid(state)),
    script_version TEXT,
    journal        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(journal)),
    last_seq       INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, panel_id),
    FOREIGN KEY (tenant_id, panel_id) REFERENCES panels (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE scripts (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('strategy', 'consensus')),
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    source     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    active     INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kind, name, version)
);
-- At most one active override per name.
CREATE UNIQUE INDEX scripts_active ON scripts (tenant_id, kind, name) WHERE active = 1;

CREATE TABLE usage_records (
    id                TEXT PRIMARY KEY,
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
    created_at        INTEGER NOT NULL
);
CREATE INDEX usage_records_time ON usage_records (tenant_id, created_at);
