-- pgtenant service-database setup: applied by `pgtenant init` to every service
-- database (`crm_db`, `product_db`, ...) as the admin role, inside one
-- transaction. Idempotent. Tenant schemas (`tenant_<id>`) and their grants are
-- made by `pgtenant tenant create`, not here.

-- Nobody but the admin role creates objects in `public` (already so in PG 15+).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Shared master data, readable by every tenant role.
CREATE SCHEMA IF NOT EXISTS commons;
REVOKE ALL ON SCHEMA commons FROM PUBLIC;

CREATE TABLE IF NOT EXISTS commons.countries (
    code text PRIMARY KEY CHECK (code ~ '^[A-Z]{2}$'),
    name text NOT NULL
);

INSERT INTO commons.countries (code, name) VALUES
    ('DE', 'Germany'),
    ('FR', 'France'),
    ('GB', 'United Kingdom'),
    ('IN', 'India'),
    ('JP', 'Japan'),
    ('US', 'United States')
ON CONFLICT (code) DO NOTHING;

-- The tenant this session serves. The proxy sets `app.current_tenant` in every
-- backend's startup packet; a session without it is a bug, so this raises
-- instead of returning NULL (a NULL would silently match nothing, or everything).
CREATE OR REPLACE FUNCTION commons.get_current_tenant() RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    tenant text := current_setting('app.current_tenant', true);
BEGIN
    IF tenant IS NULL OR tenant = '' THEN
        RAISE EXCEPTION 'app.current_tenant is not set'
            USING ERRCODE = '22023',
                  HINT = 'Connect through pgtenant, or SET app.current_tenant = ''<tenant id>''.';
    END IF;
    RETURN tenant;
END
$$;

-- Whether the current request holds an application permission.
--
-- The application sets `app.permissions` per request (e.g.
-- `SET LOCAL app.permissions = '["contacts.read","contacts.write"]'`), usually
-- from `commons.tenant_users.permissions` or its own auth layer. The value is
-- JSON: an array of permission names, or an object whose keys are permission
-- names and whose values are not false/null. Unset or empty means no
-- permissions (false); malformed JSON raises an error.
CREATE OR REPLACE FUNCTION commons.has_permission(permission text) RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog
AS $$
DECLARE
    raw   text := current_setting('app.permissions', true);
    perms jsonb;
BEGIN
    IF raw IS NULL OR raw = '' OR permission IS NULL THEN
        RETURN false;
    END IF;
    perms := raw::jsonb;
    IF jsonb_typeof(perms) = 'array' THEN
        RETURN perms ? permission;
    ELSIF jsonb_typeof(perms) = 'object' THEN
        RETURN coalesce((perms -> permission) NOT IN ('false'::jsonb, 'null'::jsonb), false);
    END IF;
    RETURN false;
END
$$;

REVOKE ALL ON FUNCTION commons.get_current_tenant() FROM PUBLIC;
REVOKE ALL ON FUNCTION commons.has_permission(text) FROM PUBLIC;

-- The tenant a tenant role serves: `acme` for tenant_acme_rw and
-- tenant_acme_ro, NULL for any other role. Keyed on the role the server
-- connection logged in as, which nothing a client sends can change (unlike
-- a setting such as app.current_tenant): the key for row-level security.
CREATE OR REPLACE FUNCTION commons.role_tenant() RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog
AS $$
    SELECT substring(current_user::text FROM '^tenant_([a-z][a-z0-9_]*)_r[ow]$')
$$;

-- Row-level security on shared tables: every table in `commons` with a
-- `tenant_id` column gets RLS and the policy `pgtenant_tenant_rows`, so a
-- tenant role sees and writes only its own rows (other roles but the
-- owner see none unless given policies of their own). Idempotent; run by
-- `pgtenant init` and every `tenant create`. Returns how many tables.
CREATE OR REPLACE FUNCTION commons.apply_tenant_row_security() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    t record;
    n integer := 0;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS tbl, c.relrowsecurity AS on_already
          FROM pg_class c
          JOIN pg_namespace s ON s.oid = c.relnamespace
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'
                             AND a.attnum > 0 AND NOT a.attisdropped
         WHERE s.nspname = 'commons' AND c.relkind IN ('r', 'p')
    LOOP
        IF NOT t.on_already THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.tbl);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_policy
                        WHERE polrelid = t.tbl AND polname = 'pgtenant_tenant_rows') THEN
            EXECUTE format(
                'CREATE POLICY pgtenant_tenant_rows ON %s
                     USING (tenant_id::text = commons.role_tenant())
                     WITH CHECK (tenant_id::text = commons.role_tenant())',
                t.tbl);
        END IF;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

SELECT commons.apply_tenant_row_security();
