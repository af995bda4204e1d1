-- The client's own X-Request-Id, kept beside the gateway's unique request_id: clients reuse
-- ids (retries, fixed ids in scripts), and the ledger's idempotency must not drop those records.
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS client_request_id text;
