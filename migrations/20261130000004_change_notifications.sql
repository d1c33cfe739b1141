-- Change notifications for the web tier's read caches. A committed change
-- of something the panel shows is announced on the channel
-- 'stockade_changes' with a payload naming what it touches:
--   't:<tenant id>'  a tenant, its quota overrides, jails or uploads;
--   'u:<user id>'    a user (the sessions of that user are re-read);
--   's:<hex>'        a session that ended (hex of its token hash);
--   '*'              everything (a plan: every tenant on it).
-- PostgreSQL delivers notifications at commit and folds identical ones of a
-- transaction into one.

-- Rows that belong to a tenant (jails, uploads, quota overrides).
CREATE FUNCTION notify_tenant_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('stockade_changes', 't:' || OLD.tenant_id);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.tenant_id <> OLD.tenant_id) THEN
        PERFORM pg_notify('stockade_changes', 't:' || NEW.tenant_id);
    END IF;
    RETURN NULL;
END $$;

-- Tenants and users themselves (announced by their own id).
CREATE FUNCTION notify_row_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('stockade_changes', TG_ARGV[0] || NEW.id);
    ELSE
        PERFORM pg_notify('stockade_changes', TG_ARGV[0] || OLD.id);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION notify_everything() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stockade_changes', '*');
    RETURN NULL;
END $$;

CREATE FUNCTION notify_session_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stockade_changes', 's:' || encode(OLD.token_hash, 'hex'));
    RETURN NULL;
END $$;

CREATE TRIGGER tenants_changed AFTER INSERT OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION notify_row_id('t:');
CREATE TRIGGER tenants_updated AFTER UPDATE ON tenants
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_row_id('t:');

CREATE TRIGGER overrides_changed AFTER INSERT OR DELETE ON tenant_quota_overrides
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();
CREATE TRIGGER overrides_updated AFTER UPDATE ON tenant_quota_overrides
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_tenant_row();

CREATE TRIGGER jails_changed AFTER INSERT OR DELETE ON jails
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();
CREATE TRIGGER jails_updated AFTER UPDATE ON jails
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_tenant_row();

CREATE TRIGGER jail_uploads_changed AFTER INSERT OR DELETE ON jail_uploads
    FOR EACH ROW EXECUTE FUNCTION notify_tenant_row();
CREATE TRIGGER jail_uploads_updated AFTER UPDATE ON jail_uploads
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_tenant_row();

CREATE TRIGGER plans_changed AFTER INSERT OR UPDATE OR DELETE ON plans
    FOR EACH STATEMENT EXECUTE FUNCTION notify_everything();

CREATE TRIGGER users_changed AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION notify_row_id('u:');
CREATE TRIGGER users_updated AFTER UPDATE ON users
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION notify_row_id('u:');

CREATE TRIGGER sessions_ended AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION notify_session_end();
