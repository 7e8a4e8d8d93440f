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
            templates: Arc::new(Templates::new(&config.frontend_url, &config.from_name)?),
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
