-- Accounts: users, sessions with their refresh tokens, one-time codes, mail budget.
-- Times are Unix milliseconds (UTC).
CREATE TABLE users (
    id                      TEXT PRIMARY KEY NOT NULL,
    email                   TEXT NOT NULL UNIQUE,
    hashed_password         TEXT NOT NULL,
    display_name            TEXT,
    avatar_url              TEXT,
    bio                     TEXT,
    timezone                TEXT,
    introvert_level         INTEGER,
    is_verified             INTEGER NOT NULL DEFAULT 0,
    onboarding_completed    INTEGER NOT NULL DEFAULT 0,
    onboarding_completed_at INTEGER,
    preferences             TEXT NOT NULL DEFAULT '{}',
    battery_level           INTEGER NOT NULL DEFAULT 70,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
) STRICT;

CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    refreshed_at INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_by_user ON sessions(user_id);
CREATE INDEX sessions_by_expiry ON sessions(expires_at);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    issued_at  INTEGER NOT NULL,
    rotated_at INTEGER
) STRICT;
CREATE INDEX refresh_tokens_by_session ON refresh_tokens(session_id);

CREATE TABLE one_time_codes (
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL,
    code_hash  TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, purpose)
) STRICT;
CREATE INDEX one_time_codes_by_expiry ON one_time_codes(expires_at);

CREATE TABLE mail_sends (
    email   TEXT NOT NULL,
    sent_at INTEGER NOT NULL
) STRICT;
CREATE INDEX mail_sends_by_email ON mail_sends(email, sent_at);
CREATE INDEX mail_sends_by_time ON mail_sends(sent_at);
