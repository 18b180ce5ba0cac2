-- 004_panel_lease.sql: the lease of a running panel (who runs it, and until when).
--
-- A panel is run by one engine instance at a time. The one that moves it to running (execute,
-- resume, an answer to awaiting_input) writes its owner id ("<host>:<pid>:<boot id>") and an
-- expiry in the same UPDATE, renews the expiry while it runs the panel, and any move out of
-- running clears both. Another process may take a running panel over only when its lease is
-- free: no owner, expired, or held by a process of the same host that no longer exists (the
-- engine checks that before it claims; see panel_engine_resume). Rows of panels that were
-- running before this migration have no owner, so they stay resumable as they were.
--
-- No index: the renewal finds its rows by primary key, the release at shutdown by status
-- (panels_status), and both are rare next to the writes every panel makes.

ALTER TABLE panels ADD COLUMN lease_owner TEXT;
ALTER TABLE panels ADD COLUMN lease_expires_at INTEGER NOT NULL DEFAULT 0;
