-- Who owns a key, and whether its requests use the response cache (docs/keys.md).
-- `owner` is the tenant (organization, team) the key belongs to: cached answers are shared
-- by the keys of one owner and never across owners; 'default' is a self-hosted
-- organization's single tenant, and the admin key's. `cache` opts every request of the key
-- into the response cache.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS owner text NOT NULL DEFAULT 'default'
    CHECK (char_length(owner) BETWEEN 1 AND 128);
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS cache boolean NOT NULL DEFAULT false;
