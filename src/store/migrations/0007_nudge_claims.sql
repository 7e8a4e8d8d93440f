-- Nudges by mail (issue 14.3): one claim per (user, list, period), so a low-battery mail
-- goes out at most once a day and a weekly summary once a week, whatever the number of
-- instances. Purged once expired.
CREATE TABLE nudge_claims (
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    list       TEXT NOT NULL CHECK (list IN ('low_battery', 'weekly_summary')),
    period     TEXT NOT NULL,
    claimed_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, list, period)
) STRICT;
CREATE INDEX nudge_claims_by_expiry ON nudge_claims(expires_at);
