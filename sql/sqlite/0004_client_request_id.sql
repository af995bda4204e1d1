-- The client's own X-Request-Id, beside the gateway's unique request_id (see sql/0004).
ALTER TABLE usage_records ADD COLUMN client_request_id TEXT;
