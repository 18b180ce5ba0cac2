-- 003_live_limit.sql: a tenant's limit of live panels holds across nodes.
--
-- A tenant may be limited to N live panels (limits.concurrent_panels). Counting its live panels
-- and then claiming one are two steps, so two nodes starting panels of one tenant at the same
-- moment would each count N - 1 and both start. askpanel_panel_claim_limited makes them one:
-- it first takes a transaction-scoped advisory lock of the tenant (its limited claims queue
-- up there, other tenants' do not), then counts with a snapshot taken after the lock (each
-- statement of a VOLATILE plpgsql function sees what committed before it began, the claim
-- that held the lock included), then claims as Q_PANEL_CLAIM does. It runs as the caller
-- (SECURITY INVOKER) inside the tenant's transaction, so row-level security applies as usual.
-- Claims without a limit keep their single statement and take no lock.

CREATE FUNCTION askpanel_panel_claim_limited(p_owner text, p_until bigint, p_now bigint,
                                             p_tenant uuid, p_id uuid, p_from text[],
                                             p_takeover text, p_max bigint)
RETURNS TABLE (n_claimed bigint, panel_exists boolean, n_live bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, public
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('askpanel.live.' || p_tenant::text, 0));
    SELECT count(*) INTO n_live FROM public.panels p
     WHERE p.tenant_id = p_tenant AND p.id <> p_id
       AND p.status IN ('queued', 'running', 'awaiting_input');
    panel_exists := EXISTS (SELECT 1 FROM public.panels p
                             WHERE p.tenant_id = p_tenant AND p.id = p_id);
    n_claimed := 0;
    IF panel_exists AND n_live < p_max THEN
        UPDATE public.panels p SET status = 'running', lease_owner = p_owner,
               lease_expires_at = p_until, updated_at = p_now
         WHERE p.tenant_id = p_tenant AND p.id = p_id AND p.status = ANY (p_from)
           AND (p.lease_owner IS NULL OR p.lease_expires_at <= p_now
                OR p.lease_owner = p_owner OR p.lease_owner = p_takeover);
        GET DIAGNOSTICS n_claimed = ROW_COUNT;
    END IF;
    RETURN NEXT;
END
$$;

ALTER FUNCTION askpanel_panel_claim_limited(text, bigint, bigint, uuid, uuid, text[], text, bigint)
    OWNER TO askpanel_owner;
REVOKE ALL ON FUNCTION
    askpanel_panel_claim_limited(text, bigint, bigint, uuid, uuid, text[], text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    askpanel_panel_claim_limited(text, bigint, bigint, uuid, uuid, text[], text, bigint)
    TO askpanel_app;
