-- The usage ledger: one row per request that reached routing, and the rollups reports read.
--
-- Records are one table with a BRIN index on ts rather than monthly partitions: a partitioned
-- table can only enforce uniqueness on keys that include the partition column, and the
-- writer's idempotency (replays never double-count) rests on a unique request_id. Records
-- arrive in time order, so BRIN keeps a time-window scan proportional to the window at a
-- tiny fraction of a B-tree's size and insert cost. Reports read raw records only for the
-- partial hours at a window's edges; everything else comes from the rollups below.
CREATE TABLE IF NOT EXISTS usage_records (
    request_id         text PRIMARY KEY,
    ts                 timestamptz NOT NULL,
    key_id             text NOT NULL,
    model_requested    text NOT NULL,
    model              text NOT NULL,
    provider           text NOT NULL,
    region             text NOT NULL,
    status             integer NOT NULL,
    finish_reason      text,
    error_code         text,
    prompt_tokens      bigint NOT NULL,
    completion_tokens  bigint NOT NULL,
    cached_tokens      bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    cost_nusd          bigint NOT NULL,            -- integer nano-USD
    savings_nusd       bigint NOT NULL,
    latency_ms         double precision NOT NULL,
    ttft_ms            double precision,
    stream             boolean NOT NULL,
    cache_hit          boolean NOT NULL,
    attempts           integer NOT NULL,
    estimated          boolean NOT NULL,
    user_id            text,
    trace_id           text,
    tags               text[] NOT NULL,            -- distinct, non-empty, in first-seen order
    extra              jsonb NOT NULL,
    headers            jsonb NOT NULL              -- X-Requesty-* headers
);

CREATE INDEX IF NOT EXISTS usage_records_ts_brin ON usage_records
    USING brin (ts) WITH (pages_per_range = 16, autosummarize = on);
-- One key's records in a window: its reports by user_id, tag or extra.<field>, the edge
-- hours of its other reports, and spend().
CREATE INDEX IF NOT EXISTS usage_records_key_ts ON usage_records (key_id, ts);

-- Rollups. Every flush upserts all of them in the transaction that inserts the records,
-- counting only the rows actually inserted, so a replayed batch adds nothing.
-- Each serves one family of reports so that a report reads rows in proportion to
-- (hours or days) x (groups), never to requests:
--   usage_hourly      hour x key x model x provider x status: one key's reports, spend()
--   usage_org_hourly  hour x model x provider x status: organization reports by model,
--                     provider, status, or no group (1,000 keys' rows folded away)
--   usage_key_hourly  hour x key, and usage_key_daily day x key: organization reports by key
--                     (whole days from the daily table, the partial days from the hourly one)
--   usage_dim_hourly  hour x (user_id | tag | extra.<field>) x value: organization reports
--                     by request metadata (tags fan out: a record with two tags counts under
--                     both). It has no key column on purpose: per key, metadata values
--                     (users, say) multiply into about as many rows as there are records, so
--                     such a rollup would cost as much to write as the records and save
--                     nothing; one key's metadata report reads its records by (key_id, ts).
-- fillfactor leaves room on each page for the updated row versions (HOT updates).
CREATE TABLE IF NOT EXISTS usage_hourly (
    key_id            text NOT NULL,
    hour              timestamptz NOT NULL,
    model             text NOT NULL,
    provider          text NOT NULL,
    status            integer NOT NULL,
    requests          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    cost_nusd         bigint NOT NULL,
    savings_nusd      bigint NOT NULL,
    cached_requests   bigint NOT NULL,
    PRIMARY KEY (key_id, hour, model, provider, status)
) WITH (fillfactor = 80);

CREATE TABLE IF NOT EXISTS usage_org_hourly (
    hour              timestamptz NOT NULL,
    model             text NOT NULL,
    provider          text NOT NULL,
    status            integer NOT NULL,
    requests          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    cost_nusd         bigint NOT NULL,
    savings_nusd      bigint NOT NULL,
    cached_requests   bigint NOT NULL,
    PRIMARY KEY (hour, model, provider, status)
) WITH (fillfactor = 70);

CREATE TABLE IF NOT EXISTS usage_key_hourly (
    hour              timestamptz NOT NULL,
    key_id            text NOT NULL,
    requests          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    cost_nusd         bigint NOT NULL,
    savings_nusd      bigint NOT NULL,
    cached_requests   bigint NOT NULL,
    PRIMARY KEY (hour, key_id)
) WITH (fillfactor = 70);

CREATE TABLE IF NOT EXISTS usage_key_daily (
    day               timestamptz NOT NULL,        -- midnight UTC
    key_id            text NOT NULL,
    requests          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    cost_nusd         bigint NOT NULL,
    savings_nusd      bigint NOT NULL,
    cached_requests   bigint NOT NULL,
    PRIMARY KEY (day, key_id)
) WITH (fillfactor = 70);

CREATE TABLE IF NOT EXISTS usage_dim_hourly (
    dim               text NOT NULL,               -- 'user_id', 'tag' or 'extra.<field>'
    hour              timestamptz NOT NULL,
    value             text NOT NULL,               -- '' under 'tag': the untagged records
    requests          bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    cost_nusd         bigint NOT NULL,
    savings_nusd      bigint NOT NULL,
    cached_requests   bigint NOT NULL,
    PRIMARY KEY (dim, hour, value)
) WITH (fillfactor = 70);
