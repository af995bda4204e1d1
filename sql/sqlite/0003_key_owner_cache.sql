-- Key owner and per-key response caching (SQLite twin of sql/0003_key_owner_cache.sql).
ALTER TABLE api_keys ADD COLUMN owner TEXT NOT NULL DEFAULT 'default'
    CHECK (length(owner) BETWEEN 1 AND 128);
ALTER TABLE api_keys ADD COLUMN cache INTEGER NOT NULL DEFAULT 0 CHECK (cache IN (0, 1));
