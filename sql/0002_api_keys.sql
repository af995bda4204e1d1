-- API keys. Only a keyed hash (HMAC-SHA-256 with the server's key secret) and a short
-- display prefix of each secret are stored; the secret itself is returned once, on creation.
-- Deleting a key is a soft delete (deleted_at) so that the other workers' periodic refresh,
-- which reads rows changed since its last pass, sees the deletion too.
CREATE TABLE IF NOT EXISTS api_keys (
    id            text PRIMARY KEY,
    name          text NOT NULL DEFAULT '',
    key_hash      text NOT NULL UNIQUE,
    key_prefix    text NOT NULL,
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    limit_nusd    bigint CHECK (limit_nusd >= 0),            -- spend limit, nano-USD; NULL: none
    limit_period  text NOT NULL DEFAULT 'monthly' CHECK (limit_period IN ('monthly', 'total')),
    rpm           integer CHECK (rpm > 0),
    tpm           integer CHECK (tpm > 0),
    labels        text[] NOT NULL DEFAULT '{}',
    expiry        timestamptz,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at    timestamptz,
    -- Durable floor of the spend counter ("2025-06" or "total"): a counter Redis lost is
    -- rebuilt from max(this, the usage ledger), so a budget never resets with Redis.
    spend_period  text,
    spend_nusd    bigint NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS api_keys_updated_at ON api_keys (updated_at);
