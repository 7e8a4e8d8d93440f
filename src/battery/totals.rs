//! Running totals of a battery history: what each recorded interaction adds, and the
//! summary figures derived from them. Both stores keep these per user and kind, so a
//! summary without a time filter costs O(1) however long the history is.

use super::{Applied, InteractionKind};

/// Totals over some interactions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: i64,
    /// Sum of the positive `energy_delta`s.
    pub total_positive: i64,
    /// Sum of the magnitudes of the negative `energy_delta`s.
    pub total_negative: i64,
    /// Sum of the `level_after`s (for the mean level).
    pub level_sum: i64,
}

impl Totals {
    /// What one applied interaction adds.
    pub fn of(applied: &Applied) -> Self {
        let delta = i64::from(applied.energy_delta);
        Self {
            count: 1,
            total_positive: delta.max(0),
            total_negative: (-delta).max(0),
            level_sum: i64::from(applied.level_after.value()),
        }
    }

    /// Mean `level_after` to one decimal; `None` over no interactions.
    pub fn average_level(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.level_sum as f64 / self.count as f64 * 10.0).round() / 10.0)
    }
}

impl std::ops::Add for Totals {
    type Output = Totals;
    fn add(self, other: Totals) -> Totals {
        Totals {
            count: self.count + other.count,
            total_positive: self.total_positive + other.total_positive,
            total_negative: self.total_negative + other.total_negative,
            level_sum: self.level_sum + other.level_sum,
        }
    }
}

impl std::ops::Sub for Totals {
    type Output = Totals;
    fn sub(self, other: Totals) -> Totals {
        Totals {
            count: self.count - other.count,
            total_positive: self.total_positive - other.total_positive,
            total_negative: self.total_negative - other.total_negative,
            level_sum: self.level_sum - other.level_sum,
        }
    }
}

/// [`Totals`] per interaction kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindTotals([Totals; 4]);

impl KindTotals {
    fn index(kind: InteractionKind) -> usize {
        match kind {
            InteractionKind::Depletion => 0,
            InteractionKind::Recharge => 1,
            InteractionKind::Sleep => 2,
            InteractionKind::Set => 3,
        }
    }

    pub fn get(&self, kind: InteractionKind) -> Totals {
        self.0[Self::index(kind)]
    }

    pub fn set(&mut self, kind: InteractionKind, totals: Totals) {
        self.0[Self::index(kind)] = totals;
    }

    /// Only the kinds `filter` admits (all without one).
    pub fn only(self, filter: Option<InteractionKind>) -> Self {
        match filter {
            None => self,
            Some(kind) => {
                let mut only = Self::default();
                only.set(kind, self.get(kind));
                only
            }
        }
    }

    /// These totals with `old` taken out and `new` put in, kind by kind (a correction
    /// replaces some interactions' contributions).
    pub fn replaced(self, old: &KindTotals, new: &KindTotals) -> Self {
        let mut out = self;
        for kind in InteractionKind::ALL {
            out.set(kind, self.get(kind) - old.get(kind) + new.get(kind));
        }
        out
    }

    /// Over every kind.
    pub fn sum(&self) -> Totals {
        self.0.iter().fold(Totals::default(), |sum, t| sum + *t)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{apply, BatteryLevel, EnergyImpact, Interaction};
    use super::*;

    #[test]
    fn totals_count_gains_losses_and_levels_after_clamping() {
        let start = BatteryLevel::try_from(90).unwrap();
        let up = apply(
            start,
            &Interaction::Recharge(EnergyImpact::new(30).unwrap()),
        );
        let down = apply(
            up.level_after,
            &Interaction::Depletion(EnergyImpact::new(40).unwrap()),
        );
        let sum = Totals::of(&up) + Totals::of(&down);
        assert_eq!(
            sum,
            Totals {
                count: 2,
                total_positive: 10,
                total_negative: 40,
                level_sum: 160
            }
        );
        assert_eq!(sum.average_level(), Some(80.0));
        assert_eq!(Totals::default().average_level(), None);
    }

    #[test]
    fn kind_totals_filter_by_kind() {
        let mut totals = KindTotals::default();
        let one = Totals {
            count: 1,
            total_positive: 5,
            total_negative: 0,
            level_sum: 75,
        };
        totals.set(InteractionKind::Recharge, one);
        totals.set(InteractionKind::Sleep, one + one);
        assert_eq!(totals.sum().count, 3);
        assert_eq!(totals.only(Some(InteractionKind::Recharge)).sum(), one);
        assert_eq!(totals.only(None), totals);
    }
}
