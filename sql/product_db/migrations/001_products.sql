-- Product catalogue. Applied to each tenant schema with
-- `SET LOCAL search_path = tenant_<id>`, so names stay unqualified.
-- Written to be safe to re-run (see crm_db/migrations/001_contacts.sql).
CREATE TABLE IF NOT EXISTS products (
    id    bigserial PRIMARY KEY,
    sku   text UNIQUE,
    name  text,
    price numeric(12, 2)
);
