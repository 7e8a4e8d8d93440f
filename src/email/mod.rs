//! Outgoing mail: what we send ([`MailKind`]), how it looks (templates), and how it
//! travels ([`MailTransport`]: SMTP, SendGrid, the development log, or memory for tests).
//!
//! Mail goes through the durable [`outbox`]: written to the store on the request path,
//! delivered by a background worker with retries, so response timing never depends on
//! the provider (SECURITY.md 9) and an outage delays mail without losing it. Logs show
//! masked addresses only.

pub mod outbox;
mod templates;
pub mod transport;

use std::sync::Arc;

use lettre::message::Mailbox;

use crate::config::MailConfig;
use crate::domain::Email;
pub use outbox::Outbox;
pub use templates::Templates;
pub use transport::{MailTransport, MemoryTransport, SendError};

/// The mails the service sends.
#[derive(Debug, Clone)]
pub enum MailKind {
    /// A code that proves the address. `repeated`: another registration attempt of an
    /// address whose sign-up is not finished, so the mail says to use it only if you just
    /// signed up (SECURITY.md 25).
    VerificationCode {
        code: String,
        valid_minutes: u64,
        repeated: bool,
    },
    ResetCode {
        code: String,
        valid_minutes: u64,
    },
    /// Someone tried to register with an address that already has an account.
    SignupAttempt,
    /// A code was asked for an address whose sign-up is not finished: codes for it come
    /// only from signing up (each attempt's code sets that attempt's password).
    SignupIncomplete,
    PasswordChanged,
    /// The signed-in user changed their password (`POST /auth/change-password`).
    PasswordUpdated {
        others_signed_out: bool,
    },
    /// A record took the level below 20 (opt-in, at most one a day).
    LowBattery {
        level: u8,
        /// Signed, for the unsubscribe link ([`crate::nudges::token`]).
        unsubscribe_token: String,
    },
    /// The week just ended, with its chart (opt-in, one a week).
    WeeklySummary {
        summary: crate::nudges::weekly::WeekSummary,
        unsubscribe_token: String,
    },
    /// To the address a signed-in user is moving to (`POST /users/me/email`): the code
    /// that proves it.
    EmailChangeCode {
        code: String,
        valid_minutes: u64,
    },
    /// To the owner of an address another account asked to move to: nothing changed.
    EmailChangeTaken,
    /// To the old address once the switch is made; `new_email` is masked (`a***@b.c`).
    EmailChanged {
        new_email: String,
    },
}

impl MailKind {
    /// The template it is rendered with (a repeated attempt's code has its own wording).
    pub fn template(&self) -> &'static str {
        match self {
            Self::VerificationCode { repeated: true, .. } => "verification_code_again",
            other => other.name(),
        }
    }

    /// What it is, for logs, metrics and tests.
    pub fn name(&self) -> &'static str {
        match self {
            Self::VerificationCode { .. } => "verification_code",
            Self::ResetCode { .. } => "reset_code",
            Self::SignupAttempt => "signup_attempt",
            Self::SignupIncomplete => "signup_incomplete",
            Self::PasswordChanged => "password_changed",
            Self::PasswordUpdated { .. } => "password_updated",
            Self::LowBattery { .. } => "low_battery",
            Self::WeeklySummary { .. } => "weekly_summary",
            Self::EmailChangeCode { .. } => "email_change_code",
            Self::EmailChangeTaken => "email_change_taken",
            Self::EmailChanged { .. } => "email_changed",
        }
    }
}

/// A rendered mail, ready for a transport.
#[derive(Debug, Clone)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// Template name, for logs and tests.
    pub kind: &'static str,
    /// Stable id (`<...@introgy>`), so a retried send is recognisable downstream.
    pub message_id: String,
    /// The one-click unsubscribe URL of a list mail: sent as `List-Unsubscribe` with
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    pub list_unsubscribe: Option<String>,
    /// Images the HTML shows with `cid:` URLs (multipart/related).
    pub inline_images: Vec<InlineImage>,
}

/// An image carried inside a mail and shown by its HTML part as `cid:<content_id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineImage {
    /// Without angle brackets, e.g. `week-chart@introgy`.
    pub content_id: String,
    /// e.g. `image/png`.
    pub content_type: &'static str,
    pub filename: String,
    pub data: Vec<u8>,
}

/// Renders and sends mail.
#[derive(Clone)]
pub struct Mailer {
    transport: Arc<dyn MailTransport>,
    from: Mailbox,
    templates: Arc<Templates>,
}

impl Mailer {
    pub fn new(config: &MailConfig, transport: Arc<dyn MailTransport>) -> anyhow::Result<Self> {
        let from = Mailbox::new(
            Some(config.from_name.clone()),
            config
                .from_email
                .parse()
                .map_err(|e| anyhow::anyhow!("FROM_EMAIL is not a valid address: {e}"))?,
        );
        Ok(Self {
            transport,
            from,
            templates: Arc::new(Templates::new(
                &config.frontend_url,
                &config.public_url,
                &config.from_name,
            )?),
        })
    }

    pub fn transport(&self) -> &Arc<dyn MailTransport> {
        &self.transport
    }

    pub fn from(&self) -> &Mailbox {
        &self.from
    }

    pub fn render(&self, to: &Email, kind: &MailKind) -> anyhow::Result<OutgoingMail> {
        self.templates.render(to, kind)
    }
}
