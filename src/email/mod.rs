//! Outgoing mail: what we send ([`MailKind`]), how it looks (templates), and how it
//! travels ([`MailTransport`]: SMTP, SendGrid, the development log, or memory for tests).
//!
//! Mail is sent off the request path ([`Mailer::send_in_background`]) so that response
//! timing never depends on whether a mail went out (SECURITY.md 9), with retries for
//! transient failures. Logs show masked addresses only.

mod templates;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;

use crate::background::Background;

use crate::config::MailConfig;
use crate::domain::{mask_email, Email};
pub use templates::Templates;
pub use transport::{MailTransport, MemoryTransport, SendError};

/// The mails the service sends.
#[derive(Debug, Clone)]
pub enum MailKind {
    VerificationCode {
        code: String,
        valid_minutes: u64,
    },
    ResetCode {
        code: String,
        valid_minutes: u64,
    },
    /// Someone tried to register with an address that already has an account.
    SignupAttempt,
    PasswordChanged,
}

impl MailKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::VerificationCode { .. } => "verification_code",
            Self::ResetCode { .. } => "reset_code",
            Self::SignupAttempt => "signup_attempt",
            Self::PasswordChanged => "password_changed",
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
    background: Background,
    retry_base: Duration,
}

impl Mailer {
    pub fn new(
        config: &MailConfig,
        transport: Arc<dyn MailTransport>,
        background: Background,
    ) -> anyhow::Result<Self> {
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
            background,
            retry_base: Duration::from_secs(2),
        })
    }

    /// Shortens the pause between retries (tests).
    pub fn with_retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
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

    /// Renders and sends now, retrying transient failures; returns the final outcome.
    pub async fn send(&self, to: &Email, kind: &MailKind) -> Result<(), SendError> {
        let mail = self.render(to, kind).map_err(SendError::Permanent)?;
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match self.transport.send(&self.from, &mail).await {
                Ok(()) => {
                    tracing::info!(to = %mask_email(&mail.to), kind = mail.kind, attempt, transport = self.transport.name(), "mail sent");
                    return Ok(());
                }
                Err(SendError::Transient(e)) if attempt < ATTEMPTS => {
                    tracing::warn!(to = %mask_email(&mail.to), kind = mail.kind, attempt, error = %e, "mail send failed, retrying");
                    tokio::time::sleep(self.retry_base * 4u32.pow(attempt - 1)).await;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(to = %mask_email(&mail.to), kind = mail.kind, attempt, error = %e, "mail send failed, giving up");
                    return Err(e);
                }
            }
        }
    }

    /// Sends on a background task; the caller's response does not wait for it.
    pub fn send_in_background(&self, to: Email, kind: MailKind) {
        let mailer = self.clone();
        self.background.spawn(async move {
            let _ = mailer.send(&to, &kind).await;
        });
    }
}
