-- The durable mail outbox. `next_attempt_at` doubles as the lease of a claimed mail.
CREATE TABLE mail_outbox (
    id              TEXT PRIMARY KEY NOT NULL,
    recipient       TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    expires_at      INTEGER,
    finished_at     INTEGER,
    last_error      TEXT
) STRICT;
CREATE INDEX mail_outbox_due ON mail_outbox(status, next_attempt_at);
