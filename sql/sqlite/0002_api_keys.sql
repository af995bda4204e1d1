-- API keys (SQLite twin of sql/0002_api_keys.sql). Timestamps are ISO-8601 UTC text with
-- microseconds, written by the gateway, so they compare in time order as strings.
CREATE TABLE IF NOT EXISTS api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL DEFAULT '',
    key_hash      TEXT NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    limit_nusd    INTEGER CHECK (limit_nusd >= 0),
    limit_period  TEXT NOT NULL DEFAULT 'monthly' CHECK (limit_period IN ('monthly', 'total')),
    rpm           INTEGER CHECK (rpm > 0),
    tpm           INTEGER CHECK (tpm > 0),
    labels        TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
    expiry        TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    deleted_at    TEXT,
    spend_period  TEXT,
    spend_nusd    INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS api_keys_updated_at ON api_keys (updated_at);
