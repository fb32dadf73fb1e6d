//! What runs cost (DESIGN §3, contract §5).
//!
//! `costInCents` is compute time × the machine preset's per-second price; every run that
//! starts executing is also charged a per-run fee (`baseCostInCents`). The defaults are
//! Trigger.dev's published cloud prices; operators set their own. The dev environment is
//! always free.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::key::EnvironmentKind;
use crate::machine::MachinePreset;

/// Per-second prices of the machine presets and the per-run fee, in cents.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    per_second_cents: HashMap<MachinePreset, f64>,
    /// Charged once per run, when its first attempt starts.
    pub run_fee_cents: f64,
}

impl Default for Pricing {
    /// Trigger.dev's cloud prices per second ($0.0000169 for micro … $0.00068 for
    /// large-2x) and its $0.000025 invocation fee, in cents.
    fn default() -> Self {
        use MachinePreset::*;
        Pricing {
            per_second_cents: HashMap::from([
                (Micro, 0.00169),
                (Small1x, 0.00338),
                (Small2x, 0.00675),
                (Medium1x, 0.0085),
                (Medium2x, 0.017),
                (Large1x, 0.034),
                (Large2x, 0.068),
            ]),
            run_fee_cents: 0.0025,
        }
    }
}

impl Pricing {
    /// Everything free.
    pub fn free() -> Self {
        Pricing {
            per_second_cents: MachinePreset::ALL.iter().map(|m| (*m, 0.0)).collect(),
            run_fee_cents: 0.0,
        }
    }

    pub fn set_price(&mut self, machine: MachinePreset, cents_per_second: f64) {
        self.per_second_cents.insert(machine, cents_per_second);
    }

    pub fn cents_per_second(&self, machine: MachinePreset) -> f64 {
        self.per_second_cents.get(&machine).copied().unwrap_or(0.0)
    }

    /// The price of one millisecond of compute on `machine` in `environment` (0 in dev):
    /// what [`crate::state::charge`] multiplies an attempt's duration by.
    pub fn cents_per_ms(&self, environment: EnvironmentKind, machine: MachinePreset) -> f64 {
        if environment == EnvironmentKind::Dev {
            return 0.0;
        }
        self.cents_per_second(machine) / 1000.0
    }

    /// The compute cost of `duration_ms` on `machine` in `environment`, as
    /// [`crate::state::charge`] prices it.
    pub fn compute_cents(
        &self,
        environment: EnvironmentKind,
        machine: MachinePreset,
        duration_ms: i64,
    ) -> f64 {
        crate::state::cost_of(duration_ms, self.cents_per_ms(environment, machine))
    }

    /// The per-run fee in `environment`.
    pub fn run_fee(&self, environment: EnvironmentKind) -> f64 {
        if environment == EnvironmentKind::Dev {
            0.0
        } else {
            self.run_fee_cents
        }
    }
}

/// A `preset=cents` price override, as `runnel serve --machine-price` takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachinePrice {
    pub machine: MachinePreset,
    pub cents_per_second: f64,
}

impl FromStr for MachinePrice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (machine, cents) = s
            .split_once('=')
            .ok_or_else(|| format!("expected PRESET=CENTS_PER_SECOND, got {s:?}"))?;
        let machine = MachinePreset::from_str(machine.trim()).map_err(|e| e.to_string())?;
        let cents: f64 = cents
            .trim()
            .parse()
            .map_err(|_| format!("{cents:?} is not a number"))?;
        if !cents.is_finite() || cents < 0.0 {
            return Err(format!("price must be a non-negative number, got {cents}"));
        }
        Ok(MachinePrice {
            machine,
            cents_per_second: cents,
        })
    }
}

impl fmt::Display for MachinePrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.machine.as_str(), self.cents_per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prod_pays_dev_does_not() {
        let p = Pricing::default();
        let prod = p.compute_cents(EnvironmentKind::Prod, MachinePreset::Small1x, 2_000);
        assert!((prod - 0.00676).abs() < 1e-12, "{prod}");
        assert_eq!(
            p.compute_cents(EnvironmentKind::Dev, MachinePreset::Small1x, 2_000),
            0.0
        );
        assert_eq!(p.run_fee(EnvironmentKind::Staging), 0.0025);
        assert_eq!(p.run_fee(EnvironmentKind::Dev), 0.0);
    }

    #[test]
    fn bigger_machines_cost_more() {
        let p = Pricing::default();
        let costs: Vec<f64> = MachinePreset::ALL
            .iter()
            .map(|m| p.cents_per_second(*m))
            .collect();
        assert!(costs.windows(2).all(|w| w[0] < w[1]), "{costs:?}");
    }

    #[test]
    fn price_overrides_parse() {
        let price: MachinePrice = "large-2x=0.5".parse().unwrap();
        assert_eq!(price.machine, MachinePreset::Large2x);
        assert_eq!(price.cents_per_second, 0.5);
        assert!("huge=1".parse::<MachinePrice>().is_err());
        assert!("micro=-1".parse::<MachinePrice>().is_err());
        assert!("micro".parse::<MachinePrice>().is_err());
        let mut p = Pricing::free();
        p.set_price(price.machine, price.cents_per_second);
        assert_eq!(
            p.compute_cents(EnvironmentKind::Prod, MachinePreset::Large2x, 1_000),
            0.5
        );
    }
}
