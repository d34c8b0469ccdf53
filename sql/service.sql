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
