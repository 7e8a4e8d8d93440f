//! Parsed domain values. Once a value has one of these types it is valid
//! ("parse, don't validate"); the parse functions return the 422 entry to show. Each
//! rule lives here once: addresses, passwords, display names, free text, preferences,
//! client-supplied instants.

mod display_name;
mod email;
mod otp;
mod password;
pub mod preferences;
pub mod text;
pub mod timestamp;

pub use display_name::DisplayName;
pub use email::{mask_email, Email};
pub use otp::{OtpCode, OtpPurpose};
pub use password::{Password, MAX_PASSWORD_BYTES};
