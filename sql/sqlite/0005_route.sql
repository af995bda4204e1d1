-- The client dialect's route of each request (see sql/0005).
ALTER TABLE usage_records ADD COLUMN route TEXT NOT NULL DEFAULT 'chat';
