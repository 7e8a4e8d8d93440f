-- History is ordered by when things happened (`occurred_at`), ties by acceptance order
-- (`seq`), and paged by keyset on that pair: one index for the whole history and one
-- for a history filtered by type. They replace the indexes on `(user_id, occurred_at)`
-- and `(user_id, kind, seq)`, which they cover (time-window summaries use the first).
CREATE INDEX battery_events_by_occurrence ON battery_events(user_id, occurred_at, seq);
CREATE INDEX battery_events_by_kind_occurrence ON battery_events(user_id, kind, occurred_at, seq);
DROP INDEX battery_events_by_time;
DROP INDEX battery_events_by_kind;
