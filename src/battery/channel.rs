//! The channel of a social interaction (`interaction_type`), stored by its name.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The channel of a social interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Channel {
    Call,
    Message,
    InPerson,
    Video,
    Email,
    Social,
    Other,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Self::Call,
        Self::Message,
        Self::InPerson,
        Self::Video,
        Self::Email,
        Self::Social,
        Self::Other,
    ];

    /// The name in requests, responses and both stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Message => "message",
            Self::InPerson => "in-person",
            Self::Video => "video",
            Self::Email => "email",
            Self::Social => "social",
            Self::Other => "other",
        }
    }
}

impl std::str::FromStr for Channel {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == raw)
            .ok_or_else(|| format!("unknown interaction_type {raw:?}"))
    }
}
