-- 004_lease_sweep.sql: the running panels a node may take over, found by one query.
--
-- Every node looks once per lease period for running panels whose process is gone. It read the
-- list of all running panels of the cluster and then each panel, one round trip each, to find
-- the few it may take: with tens of thousands of panels running that was tens of thousands of
-- reads per node per period. askpanel_panels_lease_free returns only the candidates, with
-- their leases: panels whose lease is free or has run out at p_now, and panels held by another
-- process of the caller's host (owner ids begin with the host name and a colon; the caller
-- checks whether that process still exists), never the caller's own. Like
-- askpanel_panels_in_status it reads across tenants (operator scope), and returns ids and
-- leases only.

CREATE FUNCTION askpanel_panels_lease_free(p_owner text, p_host_prefix text, p_now bigint)
RETURNS TABLE (tenant_id uuid, id uuid, lease_owner text, lease_expires_at bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    SELECT p.tenant_id, p.id, p.lease_owner, p.lease_expires_at FROM public.panels p
     WHERE p.status = 'running'
       AND (p.lease_owner IS NULL
            OR (p.lease_owner <> p_owner
                AND (p.lease_expires_at <= p_now
                     OR left(p.lease_owner, length(p_host_prefix)) = p_host_prefix)))
     ORDER BY p.created_at, p.id
$$;

ALTER FUNCTION askpanel_panels_lease_free(text, text, bigint) OWNER TO askpanel_owner;
REVOKE ALL ON FUNCTION askpanel_panels_lease_free(text, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION askpanel_panels_lease_free(text, text, bigint) TO askpanel_app;
