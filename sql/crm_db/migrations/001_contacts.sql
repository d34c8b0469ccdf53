-- CRM contacts. Applied to each tenant schema with
-- `SET LOCAL search_path = tenant_<id>`, so names stay unqualified.
-- Written to be safe to re-run: the migration record lives in the registry
-- database, so a crash between applying and recording it repeats it.
CREATE TABLE IF NOT EXISTS contacts (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    email      text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS contacts_email_idx ON contacts (email);
