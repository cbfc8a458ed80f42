-- Least privilege (CONTRACT "Least privilege"): the gateway's role can only
-- read; the worker's can change the registration tables but not the schema.
-- Roles belong to the cluster. Where an administrator created them already
-- (infra/local/up, production), the owner running this needs no CREATEROLE;
-- where not (tests run as a superuser), they are created here, tolerating a
-- migration of another database creating them at the same moment.
-- Passwords are never set here.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'addonreg_gateway') THEN
        CREATE ROLE addonreg_gateway LOGIN;
        -- Read-only sessions even if a write grant is added by mistake. Set
        -- only by the creator: concurrent ALTER ROLEs would collide.
        ALTER ROLE addonreg_gateway SET default_transaction_read_only = on;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'addonreg_worker') THEN
        CREATE ROLE addonreg_worker LOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

GRANT USAGE ON SCHEMA public TO addonreg_gateway, addonreg_worker;
GRANT SELECT ON records, receipts TO addonreg_gateway;
GRANT SELECT, INSERT, UPDATE, DELETE ON records, receipts TO addonreg_worker;
