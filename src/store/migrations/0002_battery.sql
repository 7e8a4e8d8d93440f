-- The social battery: its history (one row per accepted interaction, in acceptance
-- order `seq`), running totals per type (so summaries without a time filter are O(1)),
-- and idempotency keys for POST .../record.
ALTER TABLE users ADD COLUMN battery_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN battery_updated_at INTEGER;

CREATE TABLE battery_events (
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    energy_impact    INTEGER,
    sleep_quality    TEXT,
    target_level     INTEGER,
    name             TEXT,
    energy_delta     INTEGER NOT NULL,
    level_before     INTEGER NOT NULL,
    level_after      INTEGER NOT NULL,
    duration_minutes INTEGER NOT NULL,
    occurred_at      INTEGER NOT NULL,
    recorded_at      INTEGER NOT NULL,
    notes            TEXT,
    people_count     INTEGER,
    interaction_type TEXT,
    PRIMARY KEY (user_id, seq)
) STRICT;
CREATE INDEX battery_events_by_kind ON battery_events(user_id, kind, seq);
CREATE INDEX battery_events_by_time ON battery_events(user_id, occurred_at);

CREATE TABLE battery_stats (
    user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    count          INTEGER NOT NULL,
    total_positive INTEGER NOT NULL,
    total_negative INTEGER NOT NULL,
    level_sum      INTEGER NOT NULL,
    PRIMARY KEY (user_id, kind)
) STRICT;

CREATE TABLE idempotency_keys (
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT;
CREATE INDEX idempotency_keys_by_time ON idempotency_keys(created_at);
