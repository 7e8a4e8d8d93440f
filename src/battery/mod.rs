//! The social battery rules, pure: no HTTP, no storage (PRODUCT.md §4).
//!
//! A level is an integer 0–100. An interaction moves it: `depletion` and `recharge` by
//! their `energy_impact` (a magnitude; the sign comes from the type), `sleep` by its
//! quality (good +50, medium +10, bad −5), and `set` to a given level. The result is
//! clamped to 0–100; what was applied is described by an [`Applied`].

mod channel;
pub mod insights;
mod totals;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use channel::Channel;
pub use totals::{KindTotals, Totals};

/// The level a new account starts at.
pub const INITIAL_LEVEL: BatteryLevel = BatteryLevel(70);

/// A battery level, 0–100 inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i32")]
pub struct BatteryLevel(u8);

impl BatteryLevel {
    pub const MIN: BatteryLevel = BatteryLevel(0);
    pub const MAX: BatteryLevel = BatteryLevel(100);

    /// Clamps any integer into 0–100.
    pub fn clamped(value: i64) -> Self {
        Self(value.clamp(0, 100) as u8)
    }

    pub fn value(self) -> i32 {
        i32::from(self.0)
    }

    pub fn status(self) -> BatteryStatus {
        match self.0 {
            0..=19 => BatteryStatus::Critical,
            20..=39 => BatteryStatus::Low,
            40..=59 => BatteryStatus::Moderate,
            60..=79 => BatteryStatus::Good,
            _ => BatteryStatus::Excellent,
        }
    }

    /// `level < 20`.
    pub fn is_low(self) -> bool {
        self.0 < 20
    }
}

/// Out of the 0–100 range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("battery level must be between 0 and 100, got {0}")]
pub struct LevelOutOfRange(pub i64);

impl TryFrom<i64> for BatteryLevel {
    type Error = LevelOutOfRange;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (0..=100).contains(&value) {
            Ok(Self(value as u8))
        } else {
            Err(LevelOutOfRange(value))
        }
    }
}

impl From<BatteryLevel> for i32 {
    fn from(level: BatteryLevel) -> Self {
        level.value()
    }
}

/// Named bands of the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatteryStatus {
    /// below 20
    Critical,
    /// 20–39
    Low,
    /// 40–59
    Moderate,
    /// 60–79
    Good,
    /// 80–100
    Excellent,
}

/// How well someone slept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SleepQuality {
    Good,
    Medium,
    Bad,
}

impl SleepQuality {
    pub const ALL: [SleepQuality; 3] = [Self::Good, Self::Medium, Self::Bad];

    pub fn delta(self) -> i64 {
        match self {
            Self::Good => 50,
            Self::Medium => 10,
            Self::Bad => -5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Good => "good",
            Self::Medium => "medium",
            Self::Bad => "bad",
        }
    }
}

impl std::str::FromStr for SleepQuality {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|q| q.as_str() == raw)
            .ok_or_else(|| format!("unknown sleep quality {raw:?}"))
    }
}

/// An energy magnitude, 1–100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnergyImpact(u8);

impl EnergyImpact {
    pub const MIN: EnergyImpact = EnergyImpact(1);

    pub fn new(value: i64) -> Option<Self> {
        (1..=100).contains(&value).then_some(Self(value as u8))
    }

    pub fn value(self) -> i32 {
        i32::from(self.0)
    }
}

/// The four kinds of interaction, each with exactly the data it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// A social interaction: drains.
    Depletion(EnergyImpact),
    /// Alone time, a quiet activity: recharges.
    Recharge(EnergyImpact),
    Sleep(SleepQuality),
    /// The user moves the slider.
    Set(BatteryLevel),
}

/// The stored names of the interaction types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InteractionKind {
    Depletion,
    Recharge,
    Sleep,
    Set,
}

impl InteractionKind {
    pub const ALL: [InteractionKind; 4] = [Self::Depletion, Self::Recharge, Self::Sleep, Self::Set];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Depletion => "depletion",
            Self::Recharge => "recharge",
            Self::Sleep => "sleep",
            Self::Set => "set",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

impl std::str::FromStr for InteractionKind {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw).ok_or_else(|| format!("unknown interaction type {raw:?}"))
    }
}

impl Interaction {
    pub fn kind(&self) -> InteractionKind {
        match self {
            Self::Depletion(_) => InteractionKind::Depletion,
            Self::Recharge(_) => InteractionKind::Recharge,
            Self::Sleep(_) => InteractionKind::Sleep,
            Self::Set(_) => InteractionKind::Set,
        }
    }
}

/// What applying one interaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub level_before: BatteryLevel,
    pub level_after: BatteryLevel,
    /// `level_after - level_before`: the signed change actually applied (after clamping).
    pub energy_delta: i32,
}

/// Applies one interaction to a level.
pub fn apply(level: BatteryLevel, interaction: &Interaction) -> Applied {
    let before = i64::from(level.value());
    let after = match interaction {
        Interaction::Depletion(impact) => BatteryLevel::clamped(before - i64::from(impact.value())),
        Interaction::Recharge(impact) => BatteryLevel::clamped(before + i64::from(impact.value())),
        Interaction::Sleep(quality) => BatteryLevel::clamped(before + quality.delta()),
        Interaction::Set(target) => *target,
    };
    Applied {
        level_before: level,
        level_after: after,
        energy_delta: after.value() - level.value(),
    }
}

/// Applies a sequence in order and returns the final level.
pub fn replay<'a>(
    start: BatteryLevel,
    interactions: impl IntoIterator<Item = &'a Interaction>,
) -> BatteryLevel {
    interactions.into_iter().fold(start, |level, interaction| {
        apply(level, interaction).level_after
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn level(v: i64) -> BatteryLevel {
        BatteryLevel::try_from(v).unwrap()
    }

    fn impact(v: i64) -> EnergyImpact {
        EnergyImpact::new(v).unwrap()
    }

    #[test]
    fn each_kind_moves_the_level_as_specified() {
        let cases = [
            (70, Interaction::Depletion(impact(30)), 40, -30),
            (70, Interaction::Recharge(impact(20)), 90, 20),
            (10, Interaction::Depletion(impact(30)), 0, -10),
            (95, Interaction::Recharge(impact(20)), 100, 5),
            (40, Interaction::Sleep(SleepQuality::Good), 90, 50),
            (40, Interaction::Sleep(SleepQuality::Medium), 50, 10),
            (40, Interaction::Sleep(SleepQuality::Bad), 35, -5),
            (3, Interaction::Sleep(SleepQuality::Bad), 0, -3),
            (80, Interaction::Sleep(SleepQuality::Good), 100, 20),
            (70, Interaction::Set(level(15)), 15, -55),
            (0, Interaction::Set(level(100)), 100, 100),
        ];
        for (start, interaction, after, delta) in cases {
            let applied = apply(level(start), &interaction);
            assert_eq!(
                applied.level_before.value(),
                start as i32,
                "{interaction:?}"
            );
            assert_eq!(
                applied.level_after.value(),
                after,
                "{interaction:?} from {start}"
            );
            assert_eq!(applied.energy_delta, delta, "{interaction:?} from {start}");
        }
    }

    #[test]
    fn status_bands_and_is_low() {
        let cases = [
            (0, BatteryStatus::Critical),
            (19, BatteryStatus::Critical),
            (20, BatteryStatus::Low),
            (39, BatteryStatus::Low),
            (40, BatteryStatus::Moderate),
            (59, BatteryStatus::Moderate),
            (60, BatteryStatus::Good),
            (79, BatteryStatus::Good),
            (80, BatteryStatus::Excellent),
            (100, BatteryStatus::Excellent),
        ];
        for (value, status) in cases {
            assert_eq!(level(value).status(), status, "{value}");
            assert_eq!(level(value).is_low(), value < 20, "{value}");
        }
    }

    #[test]
    fn each_name_is_the_same_for_serde_and_the_stores() {
        fn check<T>(all: &[T], name: fn(&T) -> &'static str)
        where
            T: Serialize + std::str::FromStr + PartialEq + std::fmt::Debug,
            <T as std::str::FromStr>::Err: std::fmt::Debug,
        {
            for value in all {
                assert_eq!(
                    serde_json::to_value(value).unwrap(),
                    name(value),
                    "{value:?}"
                );
                assert_eq!(&name(value).parse::<T>().unwrap(), value);
            }
        }
        check(&InteractionKind::ALL, |k| k.as_str());
        check(&SleepQuality::ALL, |q| q.as_str());
        check(&Channel::ALL, |c| c.as_str());
        assert!("Sleep".parse::<InteractionKind>().is_err());
        assert!("so-so".parse::<SleepQuality>().is_err());
        assert!("in_person".parse::<Channel>().is_err());
    }

    #[test]
    fn levels_and_impacts_are_bounded() {
        assert!(BatteryLevel::try_from(-1).is_err());
        assert!(BatteryLevel::try_from(101).is_err());
        assert!(EnergyImpact::new(0).is_none());
        assert!(EnergyImpact::new(101).is_none());
        assert_eq!(INITIAL_LEVEL.value(), 70);
    }

    fn interaction() -> impl Strategy<Value = Interaction> {
        prop_oneof![
            (1i64..=100).prop_map(|v| Interaction::Depletion(impact(v))),
            (1i64..=100).prop_map(|v| Interaction::Recharge(impact(v))),
            prop_oneof![
                Just(SleepQuality::Good),
                Just(SleepQuality::Medium),
                Just(SleepQuality::Bad)
            ]
            .prop_map(Interaction::Sleep),
            (0i64..=100).prop_map(|v| Interaction::Set(level(v))),
        ]
    }

    proptest! {
        #[test]
        fn the_level_always_stays_within_0_and_100(start in 0i64..=100, seq in prop::collection::vec(interaction(), 0..64)) {
            let mut current = level(start);
            for i in &seq {
                let applied = apply(current, i);
                prop_assert!((0..=100).contains(&applied.level_after.value()));
                prop_assert_eq!(applied.level_before, current);
                prop_assert_eq!(applied.level_after.value() - applied.level_before.value(), applied.energy_delta);
                current = applied.level_after;
            }
        }

        #[test]
        fn applying_a_sequence_equals_replaying_it(start in 0i64..=100, seq in prop::collection::vec(interaction(), 0..64)) {
            let mut current = level(start);
            for i in &seq {
                current = apply(current, i).level_after;
            }
            prop_assert_eq!(current, replay(level(start), &seq));
            // And replay is compositional: any split point gives the same result.
            let mid = seq.len() / 2;
            prop_assert_eq!(current, replay(replay(level(start), &seq[..mid]), &seq[mid..]));
        }
    }
}
