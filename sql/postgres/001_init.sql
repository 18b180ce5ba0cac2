-- 001_init.sql: roles, tables and row-level security of the PostgreSQL store.
--
-- Run by `askpanel migrate` as a superuser or as a role that can create roles and is a member
-- of askpanel_owner; the engine itself connects as a LOGIN role inheriting askpanel_app.
--
-- Isolation model (DESIGN §5, layer 3):
--   * askpanel_owner owns every table and the SECURITY DEFINER functions below; it never
--     serves requests.
--   * askpanel_app (NOLOGIN, NOBYPASSRLS, owns nothing) gets plain DML. The engine's login
--     role is created by the operator: CREATE ROLE askpanel_engine LOGIN PASSWORD '...'
--     IN ROLE askpanel_app;
--   * Every table with a tenant_id column has RLS enabled AND forced (so even the owner is
--     subject to it) with the policy
--         tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid
--     The engine sets app.tenant_id with set_config(..., true) inside each transaction; when
--     it is unset the policy compares with NULL and every query sees nothing (fail closed).
--   * tenants has no tenant_id column; its policy matches on id instead, so a transaction
--     scoped to tenant X sees (and can create) only the row X. Operator-scope lookups that
--     happen before a tenant is known (tenant by slug, API key by prefix, key revocation,
--     panels to resume at start-up) go through SECURITY DEFINER functions owned by
--     askpanel_owner. They switch on app.operator for their own duration only (function SET
--     clause); a second policy admits askpanel_owner when app.operator is on, so a session
--     of the owner role still sees nothing by accident.
-- Ids are uuid, times epoch milliseconds (bigint), JSON columns json (kept byte-for-byte).
-- Tables hanging off a panel reference it by (tenant_id, panel_id), so no row can point at
-- another tenant's panel even though foreign-key checks bypass RLS.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'askpanel_owner') THEN
        CREATE ROLE askpanel_owner NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'askpanel_app') THEN
        CREATE ROLE askpanel_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

GRANT USAGE, CREATE ON SCHEMA public TO askpanel_owner;
GRANT USAGE ON SCHEMA public TO askpanel_app;

CREATE TABLE tenants (
    id         uuid PRIMARY KEY,
    slug       text NOT NULL UNIQUE,
    name       text NOT NULL,
    config     json NOT NULL DEFAULT '{}',
    created_at bigint NOT NULL
);

CREATE TABLE api_keys (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    prefix     text NOT NULL UNIQUE,
    hash       text NOT NULL,
    role       text NOT NULL CHECK (role IN ('member', 'admin')),
    created_at bigint NOT NULL,
    revoked_at bigint
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE experts (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name       text NOT NULL,
    role       text NOT NULL DEFAULT '',
    expertise  json NOT NULL DEFAULT '[]',
    persona    text NOT NULL DEFAULT '',
    model      text,
    weight     double precision NOT NULL DEFAULT 1,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);
CREATE INDEX experts_page ON experts (tenant_id, created_at, id);

CREATE TABLE panels (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title            text,
    question         text NOT NULL,
    strategy         text NOT NULL,
    strategy_version text,
    consensus        text,
    params           json NOT NULL DEFAULT '{}',
    experts          json NOT NULL DEFAULT '[]',
    status           text NOT NULL CHECK (status IN ('created', 'queued', 'running',
                         'awaiting_input', 'completed', 'failed', 'cancelled')),
    result           json,
    error            text,
    idempotency_key  text,
    request_hash     text,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    UNIQUE (tenant_id, id)
);
CREATE UNIQUE INDEX panels_idempotency ON panels (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX panels_page ON panels (tenant_id, created_at, id);
CREATE INDEX panels_status ON panels (status);

CREATE TABLE panel_events (
    tenant_id  uuid NOT NULL,
    panel_id   uuid NOT NULL,
    seq        bigint NOT NULL,
    type       text NOT NULL,
    data       json NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, panel_id, seq),
    FOREIGN KEY (tenant_id, panel_id) REFERENCES panels (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE checkpoints (
    tenant_id      uuid NOT NULL,
    panel_id       uuid NOT NULL,
    step           bigint NOT NULL,
    next_node      text,
    state          json NOT NULL,
    script_version text,
    journal        json NOT NULL DEFAULT '[]',
    last_seq       bigint NOT NULL,
    created_at     bigint NOT NULL,
    PRIMARY KEY (tenant_id, panel_id),
    FOREIGN KEY (tenant_id, panel_id) REFERENCES panels (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE scripts (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('strategy', 'consensus')),
    name       text NOT NULL,
    version    text NOT NULL,
    source     text NOT NULL,
    origin     text NOT NULL,
    active     boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL,
    PRIMARY KEY (tenant_id, kind, name, version)
);
-- At most one active override per name.
CREATE UNIQUE INDEX scripts_active ON scripts (tenant_id, kind, name) WHERE active;

CREATE TABLE usage_records (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    panel_id          uuid,
    expert_id         text,
    provider          text NOT NULL,
    model             text NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_usd          double precision NOT NULL,
    latency_ms        bigint NOT NULL,
    attempts          integer NOT NULL,
    outcome           text NOT NULL,
    created_at        bigint NOT NULL
);
CREATE INDEX usage_records_time ON usage_records (tenant_id, created_at);

-- Ownership, privileges and policies.
ALTER TABLE schema_migrations OWNER TO askpanel_owner;
GRANT SELECT ON schema_migrations TO askpanel_app;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'api_keys', 'experts', 'panels', 'panel_events',
                             'checkpoints', 'scripts', 'usage_records']
    LOOP
        EXECUTE format('ALTER TABLE %I OWNER TO askpanel_owner', t);
        EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO askpanel_app', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (%I = '
                       'NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)',
                       t, CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['tenants', 'api_keys', 'panels']
    LOOP
        EXECUTE format('CREATE POLICY operator_functions ON %I TO askpanel_owner '
                       'USING (current_setting(''app.operator'', true) = ''on'')', t);
    END LOOP;
END
$$;

-- Operator-scope functions: the only ways to read across tenants.
CREATE FUNCTION askpanel_tenant_by_slug(p_slug text)
RETURNS TABLE (id uuid, slug text, name text, config json, created_at bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    SELECT t.id, t.slug, t.name, t.config, t.created_at FROM public.tenants t
    WHERE t.slug = p_slug
$$;

CREATE FUNCTION askpanel_key_lookup(p_prefix text)
RETURNS TABLE (id uuid, tenant_id uuid, prefix text, hash text, role text, created_at bigint,
               revoked_at bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    SELECT k.id, k.tenant_id, k.prefix, k.hash, k.role, k.created_at, k.revoked_at
    FROM public.api_keys k WHERE k.prefix = p_prefix
$$;

CREATE FUNCTION askpanel_key_revoke(p_id uuid, p_at bigint)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    WITH u AS (UPDATE public.api_keys SET revoked_at = COALESCE(revoked_at, p_at)
               WHERE id = p_id RETURNING 1)
    SELECT count(*) > 0 FROM u
$$;

CREATE FUNCTION askpanel_panels_in_status(p_status text)
RETURNS TABLE (tenant_id uuid, id uuid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    SELECT p.tenant_id, p.id FROM public.panels p WHERE p.status = p_status
    ORDER BY p.created_at, p.id
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['askpanel_tenant_by_slug(text)', 'askpanel_key_lookup(text)',
                             'askpanel_key_revoke(uuid, bigint)',
                             'askpanel_panels_in_status(text)']
    LOOP
        EXECUTE 'ALTER FUNCTION ' || f || ' OWNER TO askpanel_owner';
        EXECUTE 'REVOKE ALL ON FUNCTION ' || f || ' FROM PUBLIC';
        EXECUTE 'GRANT EXECUTE ON FUNCTION ' || f || ' TO askpanel_app';
    END LOOP;
END
$$;
