-- Registration attempts and the refresh grace window (SECURITY.md 25, 28, issue 8).
--
-- One-time codes become challenges: per (user, purpose) one guess count in
-- `code_challenges`, shared by its live codes in `one_time_codes` (several per challenge:
-- each registration attempt of an unverified address keeps its own code, with the
-- password hash and display name it puts in force).
CREATE TABLE code_challenges (
    user_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    purpose  TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    PRIMARY KEY (user_id, purpose)
) STRICT;

CREATE TABLE one_time_codes_v2 (
    user_id       TEXT NOT NULL,
    purpose       TEXT NOT NULL,
    code_hash     TEXT NOT NULL,
    password_hash TEXT,
    display_name  TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (user_id, purpose, code_hash),
    FOREIGN KEY (user_id, purpose) REFERENCES code_challenges(user_id, purpose) ON DELETE CASCADE
) STRICT;

INSERT INTO code_challenges (user_id, purpose, attempts)
    SELECT user_id, purpose, attempts FROM one_time_codes;
INSERT INTO one_time_codes_v2 (user_id, purpose, code_hash, created_at, expires_at)
    SELECT user_id, purpose, code_hash, created_at, expires_at FROM one_time_codes;
DROP TABLE one_time_codes;
ALTER TABLE one_time_codes_v2 RENAME TO one_time_codes;
CREATE INDEX one_time_codes_by_expiry ON one_time_codes(expires_at);

-- A rotated refresh token keeps its child sealed for the grace window.
ALTER TABLE refresh_tokens ADD COLUMN child_sealed TEXT;
CREATE INDEX refresh_tokens_sealed ON refresh_tokens(rotated_at) WHERE child_sealed IS NOT NULL;

-- Accounts never verified are purged after a week.
CREATE INDEX users_unverified_by_age ON users(created_at) WHERE is_verified = 0;

-- One row that a code check rewrites when it finds no challenge to count against (an
-- unknown address, or an account without a live code), so that every check writes one
-- page and commits it, like a counted one: a no-op UPDATE writes nothing to the WAL, and
-- the difference tells who has an account (SECURITY.md 29).
CREATE TABLE timing_ballast (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
) STRICT;
INSERT INTO timing_ballast (id, n) VALUES (1, 0);
