-- 002_panel_lease.sql: the lease of a running panel (who runs it, and until when).
--
-- A panel is run by one engine instance at a time. The one that moves it to running (execute,
-- resume, an answer to awaiting_input) writes its owner id ("<host>:<pid>:<boot id>") and an
-- expiry in the same UPDATE, renews the expiry while it runs the panel, and any move out of
-- running clears both. Another node may take a running panel over only when its lease is free:
-- no owner, expired, or held by a process of the same host that no longer exists (the engine
-- checks that before it claims). Rows of panels that were running before this migration have
-- no owner, so they stay resumable as they were.
--
-- An engine renews the leases of all its running panels, of every tenant, in one statement, and
-- gives them all up in one when it stops: operator-scope writes, so they go through SECURITY
-- DEFINER functions like the other cross-tenant operations of 001_init.sql. They touch only the
-- two lease columns of rows still running under the given owner, and return nothing but ids.

ALTER TABLE panels ADD COLUMN lease_owner text,
                   ADD COLUMN lease_expires_at bigint NOT NULL DEFAULT 0;

CREATE FUNCTION askpanel_panel_leases_renew(p_owner text, p_ids uuid[], p_until bigint)
RETURNS TABLE (tenant_id uuid, id uuid)
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    UPDATE public.panels p SET lease_expires_at = p_until
    WHERE p.id = ANY (p_ids) AND p.lease_owner = p_owner AND p.status = 'running'
    RETURNING p.tenant_id, p.id
$$;

CREATE FUNCTION askpanel_panel_leases_release(p_owner text)
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    WITH u AS (UPDATE public.panels SET lease_owner = NULL, lease_expires_at = 0
               WHERE lease_owner = p_owner AND status = 'running' RETURNING 1)
    SELECT count(*) FROM u
$$;

DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['askpanel_panel_leases_renew(text, uuid[], bigint)',
                             'askpanel_panel_leases_release(text)']
    LOOP
        EXECUTE 'ALTER FUNCTION ' || f || ' OWNER TO askpanel_owner';
        EXECUTE 'REVOKE ALL ON FUNCTION ' || f || ' FROM PUBLIC';
        EXECUTE 'GRANT EXECUTE ON FUNCTION ' || f || ' TO askpanel_app';
    END LOOP;
END
$$;
