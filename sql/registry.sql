-- pgtenant tenant registry: applied by `pgtenant init` to the registry database
-- (default `tenant_db`) as the admin role, inside one transaction. Idempotent.
--
-- Tenant roles must never connect to this database: it holds password secrets.
-- `pgtenant init` revokes PUBLIC's CONNECT on it (the database name is configurable,
-- so that statement is issued from Rust, not here).

CREATE SCHEMA IF NOT EXISTS commons;

CREATE TABLE IF NOT EXISTS commons.tenants (
    id         text PRIMARY KEY
               CHECK (id ~ '^[a-z][a-z0-9_]*$' AND length(id) <= 40),
    name       text NOT NULL DEFAULT '',
    status     text NOT NULL DEFAULT 'provisioning'
               CHECK (status IN ('provisioning', 'active', 'suspended', 'dropping')),
    tier       text NOT NULL DEFAULT 'shared'
               CHECK (tier IN ('shared', 'dedicated')),
    -- For `dedicated` tenants: the name of a backend in the config.
    backend    text,
    -- Per-tenant settings, e.g. {"pool_size": 5}.
    config     jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- While the tenant is `suspended`: proxies also close its connected clients
-- and server connections (`tenant suspend --now`), not only refuse new ones.
-- Nullable (NULL = false) so backups taken before it existed restore as they are.
-- Checked first: ALTER TABLE locks the table even when the column exists, and
-- `pgtenant init` runs while tenants are created (it must not deadlock with them).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'commons.tenants'::regclass
                      AND attname = 'disconnect_clients' AND NOT attisdropped) THEN
        ALTER TABLE commons.tenants ADD COLUMN disconnect_clients boolean DEFAULT false;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS commons.tenant_users (
    tenant_id   text NOT NULL REFERENCES commons.tenants (id) ON DELETE CASCADE,
    username    text NOT NULL,
    -- A SCRAM verifier as in pg_authid ("SCRAM-SHA-256$4096:..."), an md5 hash
    -- ("md5..."), or a plain password (development only).
    secret      text NOT NULL,
    access      text NOT NULL DEFAULT 'rw' CHECK (access IN ('rw', 'ro')),
    -- Application permissions, handed to the application as `app.permissions`.
    permissions jsonb NOT NULL DEFAULT '{}',
    active      boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant_id, username)
);

-- Which migration files have been applied to which tenant schema, per database.
CREATE TABLE IF NOT EXISTS commons.schema_migrations (
    tenant_id  text NOT NULL,
    database   text NOT NULL,
    version    text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, database, version)
);

-- Keeps tenants.updated_at current.
CREATE OR REPLACE FUNCTION commons.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

-- Tells every listening pgtenant process which tenant changed:
-- NOTIFY pgtenant_registry, '<tenant id>'.
CREATE OR REPLACE FUNCTION commons.notify_registry_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    new_row jsonb;
    old_row jsonb;
    new_id  text;
    old_id  text;
BEGIN
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
        new_id := coalesce(new_row ->> 'tenant_id', new_row ->> 'id');
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
        old_id := coalesce(old_row ->> 'tenant_id', old_row ->> 'id');
    END IF;
    IF new_id IS NOT NULL THEN
        PERFORM pg_notify('pgtenant_registry', new_id);
    END IF;
    IF old_id IS NOT NULL AND old_id IS DISTINCT FROM new_id THEN
        PERFORM pg_notify('pgtenant_registry', old_id);
    END IF;
    RETURN NULL;
END
$$;

-- Triggers are created when missing only: dropping and re-creating them would
-- lock both tables on every `pgtenant init` (the functions they call are
-- replaced above without any table lock).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'commons.tenants'::regclass AND tgname = 'tenants_touch') THEN
        CREATE TRIGGER tenants_touch
            BEFORE UPDATE ON commons.tenants
            FOR EACH ROW EXECUTE FUNCTION commons.touch_updated_at();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'commons.tenants'::regclass AND tgname = 'tenants_notify') THEN
        CREATE TRIGGER tenants_notify
            AFTER INSERT OR UPDATE OR DELETE ON commons.tenants
            FOR EACH ROW EXECUTE FUNCTION commons.notify_registry_change();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                    WHERE tgrelid = 'commons.tenant_users'::regclass AND tgname = 'tenant_users_notify') THEN
        CREATE TRIGGER tenant_users_notify
            AFTER INSERT OR UPDATE OR DELETE ON commons.tenant_users
            FOR EACH ROW EXECUTE FUNCTION commons.notify_registry_change();
    END IF;
END
$$;

REVOKE ALL ON SCHEMA commons FROM PUBLIC;
