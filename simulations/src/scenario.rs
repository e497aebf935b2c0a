//! What both simulators' scenario loaders share.

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// Not valid TOML or an unknown field.
    #[error("invalid scenario: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of range.
    #[error("invalid scenario: {0}")]
    Invalid(&'static str),
}
