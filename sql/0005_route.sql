-- The client dialect's route of each request (chat, messages, responses, completions,
-- embeddings): one usage record per request names it. Earlier records were all chat or
-- embeddings; they read as chat.
ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS route text NOT NULL DEFAULT 'chat';
