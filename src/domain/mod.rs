//! Parsed domain values. Once a value has one of these types it is valid
//! ("parse, don't validate"); the parse functions return the 422 entry to show. Each
//! rule lives here once: addresses, passwords, display names, free text, preferences,
//! client-supplied instants.

pub mod display_name;
mod email;
mod otp;
mod password;
pub mod preferences;
pub mod text;
pub mod timestamp;

pub use display_name::{DisplayName, MAX_DISPLAY_NAME_CHARS};
pub use email::{mask_email, Email, MAX_EMAIL_LEN};
pub use otp::{OtpCode, OtpPurpose, RequestablePurpose};
pub use password::{Password, COMMON_PASSWORDS, MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};
