-- The wallets the Polymarket feed watches, with the legacy service's fields (its seed_whales.py
-- wrote them; `ingestd whales add|list|enable|disable` does now). A wallet is polled while
-- is_copying_enabled is true; the feed reads the table again every whales_reload_s.
-- Same on plain PostgreSQL and TimescaleDB. Idempotent: safe to run again by hand.

CREATE TABLE IF NOT EXISTS whales (
    address            text             PRIMARY KEY CHECK (address ~ '^0x[0-9a-f]{40}$'),  -- lowercase
    pseudonym          text,
    tier               text,                       -- MEGA, LARGE, MEDIUM, SMALL
    notes              text,
    cluster_name       text,
    is_famous          boolean          NOT NULL DEFAULT false,
    estimated_pnl      double precision,           -- USDC
    primary_category   text,                       -- politics, sports, crypto, ...
    win_rate           double precision,           -- percent
    total_volume       double precision,           -- USDC
    is_confirmed       boolean          NOT NULL DEFAULT false,
    is_copying_enabled boolean          NOT NULL DEFAULT false,
    created_at         timestamptz      NOT NULL DEFAULT now(),
    updated_at         timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS whales_enabled ON whales (address) WHERE is_copying_enabled;
