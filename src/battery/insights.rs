//! Battery insights, pure: the per-quarter-hour aggregates both stores keep on write
//! ([`Bucket`]) and how a period's per-day figures in a time zone are composed from them
//! ([`compose`]).
//!
//! Buckets are UTC quarter hours (`floor(occurred_at / 15 min)`). Since 2000 every IANA
//! zone's offset from UTC has been a multiple of 15 minutes, so every local midnight is a
//! bucket boundary: a day in any zone, a 23- or 25-hour DST day and a later change of the
//! profile's zone are all exact sums of whole buckets, with nothing to rebuild. Only
//! buckets with records exist, so a period reads at most 96 buckets per day whatever the
//! length of the history.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Channel, InteractionKind, SleepQuality};

/// The length of a bucket.
pub const BUCKET_MILLIS: i64 = 15 * 60 * 1000;

/// The bucket of an instant.
pub fn bucket_of(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis().div_euclid(BUCKET_MILLIS)
}

/// The first instant of a bucket.
pub fn bucket_start(bucket: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(bucket.saturating_mul(BUCKET_MILLIS))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How many counters a bucket has (see [`COUNTERS`]).
pub const COUNTER_COUNT: usize = 29;

/// The names of a bucket's counters, as stored (SQLite columns, MongoDB fields), in the
/// order of [`Bucket::counters`]: the record count; counts per kind; drained and recharged
/// (the magnitudes of the negative and positive `energy_delta`s); per `interaction_type`
/// (and `untyped`) a count `n_` and what it drained `d_`; per sleep quality a count `n_`
/// and the sum of its `energy_delta`s `s_`.
pub const COUNTERS: [&str; COUNTER_COUNT] = [
    "count",
    "n_depletion",
    "n_recharge",
    "n_sleep",
    "n_set",
    "drained",
    "recharged",
    "n_call",
    "d_call",
    "n_message",
    "d_message",
    "n_in_person",
    "d_in_person",
    "n_video",
    "d_video",
    "n_email",
    "d_email",
    "n_social",
    "d_social",
    "n_other",
    "d_other",
    "n_untyped",
    "d_untyped",
    "n_good",
    "s_good",
    "n_medium",
    "s_medium",
    "n_bad",
    "s_bad",
];

const COUNT: usize = 0;
const DRAINED: usize = 5;
const RECHARGED: usize = 6;

fn kind_index(kind: InteractionKind) -> usize {
    1 + InteractionKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in ALL")
}

/// The index of `n_<channel>` (`d_<channel>` follows it); `None` is `untyped`.
fn channel_index(channel: Option<Channel>) -> usize {
    let at = channel.map_or(Channel::ALL.len(), |c| {
        Channel::ALL
            .iter()
            .position(|x| *x == c)
            .expect("every channel is in ALL")
    });
    7 + 2 * at
}

/// The index of `n_<quality>` (`s_<quality>` follows it).
fn sleep_index(quality: SleepQuality) -> usize {
    23 + 2 * SleepQuality::ALL
        .iter()
        .position(|q| *q == quality)
        .expect("every quality is in ALL")
}

/// What a bucket needs of one recorded interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub kind: InteractionKind,
    pub sleep_quality: Option<SleepQuality>,
    pub interaction_type: Option<Channel>,
    /// The change actually applied (after clamping).
    pub energy_delta: i32,
    pub level_after: i32,
}

impl Entry {
    /// What this entry adds to each counter.
    pub fn counters(&self) -> [i64; COUNTER_COUNT] {
        let mut c = [0; COUNTER_COUNT];
        let delta = i64::from(self.energy_delta);
        let drained = (-delta).max(0);
        c[COUNT] = 1;
        c[kind_index(self.kind)] = 1;
        c[DRAINED] = drained;
        c[RECHARGED] = delta.max(0);
        let channel = channel_index(self.interaction_type);
        c[channel] = 1;
        c[channel + 1] = drained;
        if let (InteractionKind::Sleep, Some(quality)) = (self.kind, self.sleep_quality) {
            let at = sleep_index(quality);
            c[at] = 1;
            c[at + 1] = delta;
        }
        c
    }
}

/// The aggregate of one user's records that occurred in one quarter hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// `floor(occurred_at / 15 min)`.
    pub bucket: i64,
    /// Named by [`COUNTERS`].
    pub counters: [i64; COUNTER_COUNT],
    /// The lowest and highest `level_after`.
    pub lowest: i32,
    pub highest: i32,
    /// `level_after` of the last record by `(occurred_at, seq)`, and that key (Unix ms).
    pub closing_level: i32,
    pub closing_at: i64,
    pub closing_seq: i64,
    /// The highest `seq` in the bucket (MongoDB's guard against applying a record twice).
    pub last_seq: i64,
}

impl Bucket {
    /// The bucket of one entry.
    pub fn of(entry: &Entry) -> Self {
        Self {
            bucket: bucket_of(entry.occurred_at),
            counters: entry.counters(),
            lowest: entry.level_after,
            highest: entry.level_after,
            closing_level: entry.level_after,
            closing_at: entry.occurred_at.timestamp_millis(),
            closing_seq: entry.seq,
            last_seq: entry.seq,
        }
    }

    /// Adds an entry of this bucket.
    pub fn add(&mut self, entry: &Entry) {
        for (total, add) in self.counters.iter_mut().zip(entry.counters()) {
            *total += add;
        }
        self.lowest = self.lowest.min(entry.level_after);
        self.highest = self.highest.max(entry.level_after);
        let at = entry.occurred_at.timestamp_millis();
        if (at, entry.seq) > (self.closing_at, self.closing_seq) {
            self.closing_level = entry.level_after;
            self.closing_at = at;
            self.closing_seq = entry.seq;
        }
        self.last_seq = self.last_seq.max(entry.seq);
    }

    /// The buckets of some entries, ascending.
    pub fn all_of<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<Bucket> {
        let mut buckets = std::collections::BTreeMap::<i64, Bucket>::new();
        for entry in entries {
            buckets
                .entry(bucket_of(entry.occurred_at))
                .and_modify(|b| b.add(entry))
                .or_insert_with(|| Bucket::of(entry));
        }
        buckets.into_values().collect()
    }

    fn counter(&self, at: usize) -> i64 {
        self.counters[at]
    }
}

/// What a store answers for a period: the buckets in a range, ascending, and the closing
/// level of the last bucket before it (`None` when the user had no record before).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredBuckets {
    pub carried: Option<i32>,
    pub buckets: Vec<Bucket>,
}

/// `week` (7 local days ending today) or `month` (30).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 2] = [Period::Week, Period::Month];

    pub fn days(self) -> i64 {
        match self {
            Period::Week => 7,
            Period::Month => 30,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == raw)
            .ok_or_else(|| format!("unknown period {raw:?}"))
    }
}

/// The zone insights are computed in: the profile's if it is a zone of the IANA
/// database, else UTC.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub tz: Tz,
    /// The profile's `timezone` as stored (`None`: not set).
    pub profile: Option<String>,
}

impl Zone {
    pub fn of_profile(profile: Option<&str>) -> Self {
        Self {
            tz: profile
                .and_then(|name| name.parse().ok())
                .unwrap_or(Tz::UTC),
            profile: profile.map(str::to_owned),
        }
    }
}

/// Whether `name` is a zone (or link) of the IANA time zone database, exactly spelt.
pub fn is_iana_zone(name: &str) -> bool {
    name.parse::<Tz>().is_ok()
}

/// The first instant of a local date: its midnight, or where midnight does not exist
/// (a DST change at 00:00), the first valid instant after it; the earlier of two
/// midnights (a change back over midnight).
pub fn day_start(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_time(NaiveTime::MIN);
    // A gap is a whole number of quarter hours (offsets are), at most a day.
    for quarter in 0..=96 {
        let local = midnight + Duration::minutes(15 * quarter);
        if let Some(at) = tz.from_local_datetime(&local).earliest() {
            return at.with_timezone(&Utc);
        }
    }
    Utc.from_utc_datetime(&midnight)
}

/// The local days of a period and the bucket range that covers it and the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub period: Period,
    /// The first day of the previous period.
    pub previous_from: NaiveDate,
    /// The first day of this period and today (its last).
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Buckets `from_bucket..to_bucket` hold both periods.
    pub from_bucket: i64,
    pub to_bucket: i64,
}

impl Window {
    pub fn new(period: Period, tz: Tz, now: DateTime<Utc>) -> Self {
        let to = now.with_timezone(&tz).date_naive();
        let from = to - Duration::days(period.days() - 1);
        let previous_from = from - Duration::days(period.days());
        Self {
            period,
            previous_from,
            from,
            to,
            from_bucket: bucket_of(day_start(tz, previous_from)),
            to_bucket: bucket_of(day_start(tz, to + Duration::days(1))),
        }
    }
}

/// Records per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct KindCounts {
    pub depletion: i64,
    pub recharge: i64,
    pub sleep: i64,
    pub set: i64,
}

/// Records per `interaction_type`; `none` counts records without one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ChannelCounts {
    pub call: i64,
    pub message: i64,
    #[serde(rename = "in-person")]
    pub in_person: i64,
    pub video: i64,
    pub email: i64,
    pub social: i64,
    pub other: i64,
    pub none: i64,
}

/// One local day.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DayFigures {
    /// The local date (`YYYY-MM-DD`).
    pub date: NaiveDate,
    /// Records that occurred that day.
    pub count: i64,
    /// The level after the day's last record (by `occurred_at`); on a day without records
    /// the last known closing level before it; `null` before the user's first record.
    #[schema(minimum = 0, maximum = 100)]
    pub closing_level: Option<i32>,
    /// The lowest `level_after` of the day's records; `null` without records.
    #[schema(minimum = 0, maximum = 100)]
    pub lowest_level: Option<i32>,
    /// The highest `level_after` of the day's records; `null` without records.
    #[schema(minimum = 0, maximum = 100)]
    pub highest_level: Option<i32>,
    /// What the day's records drained: the magnitudes of their negative `energy_delta`s.
    pub drained: i64,
    /// What the day's records recharged: their positive `energy_delta`s.
    pub recharged: i64,
    /// Records per type.
    pub counts: KindCounts,
    /// Records per `interaction_type`.
    pub by_interaction_type: ChannelCounts,
}

/// An interaction type and what its records drained over the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Draining {
    pub interaction_type: Channel,
    /// A positive magnitude.
    pub drained: i64,
    /// Records of this type in the period.
    pub count: i64,
}

/// Nights of one sleep quality over the period.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SleepFigures {
    pub quality: SleepQuality,
    pub count: i64,
    /// The mean `energy_delta` actually applied (after clamping; negative when it
    /// drained), one decimal; `null` without nights of this quality.
    pub average_recharge: Option<f64>,
}

/// Totals of one period.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PeriodTotals {
    /// Its first and last local day.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Records in the period.
    pub count: i64,
    /// Drained over the period (a positive magnitude).
    pub drained: i64,
    /// Recharged over the period.
    pub recharged: i64,
    /// `recharged - drained`.
    pub net: i64,
    /// Days with at least one record.
    pub active_days: i64,
    /// The mean of the days' closing levels (days before the first record left out),
    /// one decimal; `null` when no day has one.
    pub average_closing_level: Option<f64>,
}

/// This period minus the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PeriodChange {
    /// Each figure of this period minus the previous period's.
    pub count: i64,
    pub drained: i64,
    pub recharged: i64,
    pub net: i64,
    pub active_days: i64,
    /// `null` when either period has no average.
    pub average_closing_level: Option<f64>,
}

/// Insights over a period, in the user's time zone.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Insights {
    pub period: Period,
    /// The IANA zone the days are in: the profile's, or `UTC` when it has none or it is
    /// not a zone of the IANA database (see `profile_timezone`).
    pub timezone: String,
    /// The profile's `timezone` as stored.
    pub profile_timezone: Option<String>,
    /// This period's first and last local day (today).
    pub from: NaiveDate,
    /// Today in the zone.
    pub to: NaiveDate,
    /// Every day of this period, oldest first.
    pub days: Vec<DayFigures>,
    /// Interaction types by what they drained this period, most first (only types that
    /// drained).
    pub most_draining: Vec<Draining>,
    /// Sleep this period, by quality (good, medium, bad).
    pub sleep: Vec<SleepFigures>,
    /// This period's totals.
    pub current: PeriodTotals,
    /// The previous period's (the same number of days just before).
    pub previous: PeriodTotals,
    /// This period minus the previous one.
    pub change: PeriodChange,
}

/// A mean to one decimal.
fn mean(sum: i64, count: i64) -> Option<f64> {
    (count > 0).then(|| (sum as f64 / count as f64 * 10.0).round() / 10.0)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One day's sums, before it becomes [`DayFigures`].
#[derive(Debug, Clone)]
struct DaySums {
    counters: [i64; COUNTER_COUNT],
    lowest: Option<i32>,
    highest: Option<i32>,
    closing: Option<i32>,
}

fn totals(days: &[DayFigures]) -> PeriodTotals {
    let closing: Vec<i64> = days
        .iter()
        .filter_map(|d| d.closing_level.map(i64::from))
        .collect();
    let (drained, recharged) = (
        days.iter().map(|d| d.drained).sum::<i64>(),
        days.iter().map(|d| d.recharged).sum::<i64>(),
    );
    PeriodTotals {
        from: days.first().map_or(NaiveDate::MIN, |d| d.date),
        to: days.last().map_or(NaiveDate::MIN, |d| d.date),
        count: days.iter().map(|d| d.count).sum(),
        drained,
        recharged,
        net: recharged - drained,
        active_days: days.iter().filter(|d| d.count > 0).count() as i64,
        average_closing_level: mean(closing.iter().sum(), closing.len() as i64),
    }
}

/// The insights of `window` in `zone` from the buckets of its range.
pub fn compose(window: &Window, zone: &Zone, stored: &StoredBuckets) -> Insights {
    let all_days = (window.to - window.previous_from).num_days() + 1;
    let mut sums: Vec<DaySums> = (0..all_days)
        .map(|_| DaySums {
            counters: [0; COUNTER_COUNT],
            lowest: None,
            highest: None,
            closing: None,
        })
        .collect();
    for bucket in &stored.buckets {
        let date = bucket_start(bucket.bucket)
            .with_timezone(&zone.tz)
            .date_naive();
        let Ok(at) = usize::try_from((date - window.previous_from).num_days()) else {
            continue;
        };
        let Some(day) = sums.get_mut(at) else {
            continue;
        };
        for (total, add) in day.counters.iter_mut().zip(bucket.counters) {
            *total += add;
        }
        day.lowest = Some(day.lowest.map_or(bucket.lowest, |l| l.min(bucket.lowest)));
        day.highest = Some(
            day.highest
                .map_or(bucket.highest, |h| h.max(bucket.highest)),
        );
        // Buckets come in time order: the day's last one closes it.
        day.closing = Some(bucket.closing_level);
    }
    let mut carried = stored.carried;
    let days: Vec<DayFigures> = sums
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            carried = s.closing.or(carried);
            let c = |at: usize| s.counters[at];
            let ch = |channel: Option<Channel>| c(channel_index(channel));
            DayFigures {
                date: window.previous_from + Duration::days(i as i64),
                count: c(COUNT),
                closing_level: carried,
                lowest_level: s.lowest,
                highest_level: s.highest,
                drained: c(DRAINED),
                recharged: c(RECHARGED),
                counts: KindCounts {
                    depletion: c(kind_index(InteractionKind::Depletion)),
                    recharge: c(kind_index(InteractionKind::Recharge)),
                    sleep: c(kind_index(InteractionKind::Sleep)),
                    set: c(kind_index(InteractionKind::Set)),
                },
                by_interaction_type: ChannelCounts {
                    call: ch(Some(Channel::Call)),
                    message: ch(Some(Channel::Message)),
                    in_person: ch(Some(Channel::InPerson)),
                    video: ch(Some(Channel::Video)),
                    email: ch(Some(Channel::Email)),
                    social: ch(Some(Channel::Social)),
                    other: ch(Some(Channel::Other)),
                    none: ch(None),
                },
            }
        })
        .collect();
    let split = window.period.days() as usize;
    let (previous_days, current_days) = days.split_at(days.len() - split);
    // Per-type and sleep figures of this period, from its buckets.
    let mut period = [0_i64; COUNTER_COUNT];
    let current_from = bucket_of(day_start(zone.tz, window.from));
    for bucket in stored.buckets.iter().filter(|b| b.bucket >= current_from) {
        for (total, add) in period.iter_mut().zip(bucket.counters) {
            *total += add;
        }
    }
    let mut most_draining: Vec<Draining> = Channel::ALL
        .into_iter()
        .map(|channel| {
            let at = channel_index(Some(channel));
            Draining {
                interaction_type: channel,
                drained: period[at + 1],
                count: period[at],
            }
        })
        .filter(|d| d.drained > 0)
        .collect();
    most_draining.sort_by(|a, b| b.drained.cmp(&a.drained).then(b.count.cmp(&a.count)));
    let sleep = SleepQuality::ALL
        .into_iter()
        .map(|quality| {
            let at = sleep_index(quality);
            SleepFigures {
                quality,
                count: period[at],
                average_recharge: mean(period[at + 1], period[at]),
            }
        })
        .collect();
    let (current, previous) = (totals(current_days), totals(previous_days));
    let change = PeriodChange {
        count: current.count - previous.count,
        drained: current.drained - previous.drained,
        recharged: current.recharged - previous.recharged,
        net: current.net - previous.net,
        active_days: current.active_days - previous.active_days,
        average_closing_level: current
            .average_closing_level
            .zip(previous.average_closing_level)
            .map(|(a, b)| round1(a - b)),
    };
    Insights {
        period: window.period,
        timezone: zone.tz.name().to_owned(),
        profile_timezone: zone.profile.clone(),
        from: window.from,
        to: window.to,
        days: current_days.to_vec(),
        most_draining,
        sleep,
        current,
        previous,
        change,
    }
}

impl Bucket {
    /// Its records.
    pub fn count(&self) -> i64 {
        self.counter(COUNT)
    }

    /// What they drained (a positive magnitude).
    pub fn drained(&self) -> i64 {
        self.counter(DRAINED)
    }

    /// What they recharged.
    pub fn recharged(&self) -> i64 {
        self.counter(RECHARGED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn entry(seq: i64, occurred_at: &str, delta: i32, level_after: i32) -> Entry {
        Entry {
            seq,
            occurred_at: at(occurred_at),
            kind: if delta < 0 {
                InteractionKind::Depletion
            } else {
                InteractionKind::Recharge
            },
            sleep_quality: None,
            interaction_type: Some(Channel::Call),
            energy_delta: delta,
            level_after,
        }
    }

    #[test]
    fn counters_have_one_name_each() {
        let names: std::collections::HashSet<_> = COUNTERS.iter().collect();
        assert_eq!(names.len(), COUNTER_COUNT);
        assert_eq!(COUNTERS[channel_index(None)], "n_untyped");
        assert_eq!(
            COUNTERS[channel_index(Some(Channel::InPerson))],
            "n_in_person"
        );
        assert_eq!(COUNTERS[sleep_index(SleepQuality::Bad) + 1], "s_bad");
        assert_eq!(COUNTERS[kind_index(InteractionKind::Set)], "n_set");
    }

    #[test]
    fn a_bucket_closes_on_its_last_record_by_time_then_seq() {
        let entries = [
            entry(1, "2026-03-01T10:05:00Z", -10, 60),
            entry(3, "2026-03-01T10:01:00Z", 5, 65),
            entry(2, "2026-03-01T10:05:00Z", -20, 40),
        ];
        let buckets = Bucket::all_of(&entries);
        assert_eq!(buckets.len(), 1);
        let b = &buckets[0];
        assert_eq!((b.lowest, b.highest, b.closing_level), (40, 65, 40));
        assert_eq!((b.closing_seq, b.last_seq), (2, 3));
        assert_eq!((b.drained(), b.counters[RECHARGED]), (30, 5));
    }

    #[test]
    fn a_midnight_that_does_not_exist_starts_the_day_at_the_first_valid_instant() {
        // Santiago moved its clocks from 00:00 to 01:00 on 2024-09-08 (-04 → -03).
        let tz: Tz = "America/Santiago".parse().unwrap();
        let start = day_start(tz, NaiveDate::from_ymd_opt(2024, 9, 8).unwrap());
        assert_eq!(start, at("2024-09-08T04:00:00Z"));
        assert_eq!(start.timestamp_millis() % BUCKET_MILLIS, 0);
    }

    #[test]
    fn days_are_local_and_empty_days_carry_the_closing_level() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let zone = Zone::of_profile(Some("Europe/Berlin"));
        let window = Window::new(Period::Week, tz, at("2026-03-10T12:00:00Z"));
        assert_eq!(window.to, NaiveDate::from_ymd_opt(2026, 3, 10).unwrap());
        assert_eq!(window.from, NaiveDate::from_ymd_opt(2026, 3, 4).unwrap());
        // 23:30 UTC on the 5th is the 6th in Berlin.
        let stored = StoredBuckets {
            carried: Some(70),
            buckets: Bucket::all_of(&[entry(1, "2026-03-05T23:30:00Z", -30, 40)]),
        };
        let insights = compose(&window, &zone, &stored);
        let day = |d: u32| {
            insights
                .days
                .iter()
                .find(|x| x.date == NaiveDate::from_ymd_opt(2026, 3, d).unwrap())
                .unwrap()
        };
        assert_eq!((day(5).count, day(5).closing_level), (0, Some(70)));
        assert_eq!((day(6).count, day(6).closing_level), (1, Some(40)));
        assert_eq!(
            (day(7).closing_level, day(7).lowest_level),
            (Some(40), None)
        );
        assert_eq!(insights.most_draining[0].drained, 30);
        assert_eq!(insights.previous.average_closing_level, Some(70.0));
    }
}
