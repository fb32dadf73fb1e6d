//! Machine presets (contract §5). The default is `small-1x`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MachinePreset {
    Micro,
    #[default]
    Small1x,
    Small2x,
    Medium1x,
    Medium2x,
    Large1x,
    Large2x,
}

impl MachinePreset {
    pub const ALL: [MachinePreset; 7] = [
        MachinePreset::Micro,
        MachinePreset::Small1x,
        MachinePreset::Small2x,
        MachinePreset::Medium1x,
        MachinePreset::Medium2x,
        MachinePreset::Large1x,
        MachinePreset::Large2x,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MachinePreset::Micro => "micro",
            MachinePreset::Small1x => "small-1x",
            MachinePreset::Small2x => "small-2x",
            MachinePreset::Medium1x => "medium-1x",
            MachinePreset::Medium2x => "medium-2x",
            MachinePreset::Large1x => "large-1x",
            MachinePreset::Large2x => "large-2x",
        }
    }
}

impl fmt::Display for MachinePreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A machine name outside the preset list.
#[derive(Debug, thiserror::Error)]
#[error("unknown machine preset {0:?}")]
pub struct UnknownMachine(pub String);

impl FromStr for MachinePreset {
    type Err = UnknownMachine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachinePreset::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMachine(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for preset in MachinePreset::ALL {
            assert_eq!(preset.as_str().parse::<MachinePreset>().unwrap(), preset);
        }
        assert!("huge".parse::<MachinePreset>().is_err());
    }
}
