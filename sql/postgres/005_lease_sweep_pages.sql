-- 005_lease_sweep_pages.sql: the sweep's candidates a page at a time.
--
-- askpanel_panels_lease_free (004) returned every candidate at once, and a sweep works through
-- them for a third of a lease period before it gives way: with a backlog of n orphaned panels
-- (a node with tens of thousands of them gone), each pass read all n again to take a slice,
-- and draining them read n rows n/slice times. The function now takes the page's last panel
-- (its created_at and id; NULL: from the oldest) and a limit, and returns created_at with each
-- row for the next page. The order stays (created_at, id).

DROP FUNCTION askpanel_panels_lease_free(text, text, bigint);

CREATE FUNCTION askpanel_panels_lease_free(p_owner text, p_host_prefix text, p_now bigint,
                                           p_after_created bigint, p_after_id uuid,
                                           p_limit integer)
RETURNS TABLE (tenant_id uuid, id uuid, lease_owner text, lease_expires_at bigint,
               created_at bigint)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, public SET app.operator = 'on'
AS $$
    SELECT p.tenant_id, p.id, p.lease_owner, p.lease_expires_at, p.created_at
      FROM public.panels p
     WHERE p.status = 'running'
       AND (p.lease_owner IS NULL
            OR (p.lease_owner <> p_owner
                AND (p.lease_expires_at <= p_now
                     OR left(p.lease_owner, length(p_host_prefix)) = p_host_prefix)))
       AND (p_after_created IS NULL OR (p.created_at, p.id) > (p_after_created, p_after_id))
     ORDER BY p.created_at, p.id
     LIMIT p_limit
$$;

ALTER FUNCTION askpanel_panels_lease_free(text, text, bigint, bigint, uuid, integer)
    OWNER TO askpanel_owner;
REVOKE ALL ON FUNCTION askpanel_panels_lease_free(text, text, bigint, bigint, uuid, integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION askpanel_panels_lease_free(text, text, bigint, bigint, uuid, integer)
    TO askpanel_app;
