-- Devices (issue 13): the client description and coarse network a session was opened
-- from. NULL for sessions opened before this migration.
ALTER TABLE sessions ADD COLUMN client TEXT;
ALTER TABLE sessions ADD COLUMN ip TEXT;
CREATE INDEX sessions_by_user_and_use ON sessions(user_id, refreshed_at);
