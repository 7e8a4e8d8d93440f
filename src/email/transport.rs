//! Mail transports. Each classifies failures as transient (retry) or permanent.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::OutgoingMail;
use crate::config::{MailConfig, SmtpConfig, SmtpTls, TransportConfig};
use crate::domain::mask_email;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: timeouts, 4xx SMTP replies, HTTP 429 and 5xx.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Retrying will not help: bad address, rejected credentials, HTTP 4xx.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

#[async_trait]
pub trait MailTransport: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn send(&self, from: &Mailbox, mail: &OutgoingMail) -> Result<(), SendError>;
    /// Proves the transport is usable without sending mail; describes what was found.
    async fn check(&self) -> anyhow::Result<String>;
}

/// Builds the transport the configuration names.
pub fn from_config(config: &MailConfig) -> anyhow::Result<std::sync::Arc<dyn MailTransport>> {
    Ok(match &config.transport {
        TransportConfig::Log => std::sync::Arc::new(LogTransport),
        TransportConfig::Smtp(smtp) => {
            std::sync::Arc::new(SmtpTransport::new(smtp, config.timeout)?)
        }
        TransportConfig::SendGrid { api_key, api_url } => std::sync::Arc::new(
            SendGridTransport::new(api_key.clone(), api_url.clone(), config.timeout)?,
        ),
    })
}

/// Development only: writes the whole mail, code included, to the log.
pub struct LogTransport;

#[async_trait]
impl MailTransport for LogTransport {
    fn name(&self) -> &'static str {
        "log"
    }

    async fn send(&self, _from: &Mailbox, mail: &OutgoingMail) -> Result<(), SendError> {
        tracing::warn!(
            to = %mail.to,
            subject = %mail.subject,
            "DEVELOPMENT MAIL TRANSPORT: this mail was NOT sent; its text follows\n{}",
            mail.text
        );
        Ok(())
    }

    async fn check(&self) -> anyhow::Result<String> {
        Ok("log transport (development only: mails are printed, not sent)".into())
    }
}

/// Keeps mails in memory; for tests and embedding.
#[derive(Default)]
pub struct MemoryTransport {
    sent: Mutex<Vec<OutgoingMail>>,
}

impl MemoryTransport {
    pub fn messages(&self) -> Vec<OutgoingMail> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl MailTransport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn send(&self, _from: &Mailbox, mail: &OutgoingMail) -> Result<(), SendError> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(mail.clone());
        Ok(())
    }

    async fn check(&self) -> anyhow::Result<String> {
        Ok("memory transport".into())
    }
}

fn build_message(from: &Mailbox, mail: &OutgoingMail) -> Result<Message, SendError> {
    let to: Mailbox = mail.to.parse().map_err(|e| {
        SendError::Permanent(anyhow::anyhow!(
            "bad recipient {}: {e}",
            mask_email(&mail.to)
        ))
    })?;
    let mut builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(mail.subject.clone())
        .message_id(Some(mail.message_id.clone()));
    if let Some(url) = &mail.list_unsubscribe {
        // RFC 8058 one-click: mail clients POST `List-Unsubscribe=One-Click` to the URL.
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
    }
    let body = if mail.inline_images.is_empty() {
        MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone())
    } else {
        // alternative(text, related(html, images...)): clients that show HTML find the
        // images by their Content-ID; text-only clients never see them.
        let mut related = MultiPart::related().singlepart(SinglePart::html(mail.html.clone()));
        for image in &mail.inline_images {
            let content_type = ContentType::parse(image.content_type).map_err(|e| {
                SendError::Permanent(anyhow::anyhow!("bad content type of an inline image: {e}"))
            })?;
            related = related.singlepart(
                Attachment::new_inline(image.content_id.clone())
                    .body(image.data.clone(), content_type),
            );
        }
        MultiPart::alternative()
            .singlepart(SinglePart::plain(mail.text.clone()))
            .multipart(related)
    };
    builder.multipart(body).map_err(|e| {
        SendError::Permanent(anyhow::Error::new(e).context("Failed to build the message"))
    })
}

/// SMTP through lettre: STARTTLS, implicit TLS or plain; AUTH when a user is set.
pub struct SmtpTransport {
    inner: AsyncSmtpTransport<Tokio1Executor>,
    description: String,
    /// What `check` needs to walk the handshake step by step.
    host: String,
    port: u16,
    tls: SmtpTls,
    tls_parameters: Option<TlsParameters>,
    credentials: Option<Credentials>,
    timeout: Duration,
}

impl SmtpTransport {
    pub fn new(config: &SmtpConfig, timeout: Duration) -> anyhow::Result<Self> {
        let tls_parameters = match (&config.ca_file, config.tls) {
            (_, SmtpTls::None) => None,
            (Some(ca_file), _) => {
                let pem = std::fs::read(ca_file).with_context(|| {
                    format!("Failed to read SMTP_CA_FILE {}", ca_file.display())
                })?;
                let certificate =
                    Certificate::from_pem(&pem).context("SMTP_CA_FILE is not a PEM certificate")?;
                Some(
                    TlsParameters::builder(config.host.clone())
                        .add_root_certificate(certificate)
                        .build_rustls()
                        .context("Failed to set up TLS")?,
                )
            }
            (None, _) => Some(
                TlsParameters::new_rustls(config.host.clone()).context("Failed to set up TLS")?,
            ),
        };
        let credentials = match (&config.user, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            )),
            _ => None,
        };
        let builder = match (&config.ca_file, config.tls) {
            (_, SmtpTls::None) => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            }
            (Some(_), tls) => {
                let parameters = tls_parameters.clone().context("TLS parameters")?;
                let tls = if tls == SmtpTls::Tls {
                    Tls::Wrapper(parameters)
                } else {
                    Tls::Required(parameters)
                };
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host).tls(tls)
            }
            (None, SmtpTls::Starttls) => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                    .context("Failed to set up STARTTLS")?
            }
            (None, SmtpTls::Tls) => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .context("Failed to set up TLS")?,
        };
        let mut builder = builder.port(config.port).timeout(Some(timeout));
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            inner: builder.build(),
            description: format!(
                "smtp {}:{} ({:?}{})",
                config.host,
                config.port,
                config.tls,
                if config.user.is_some() { ", auth" } else { "" }
            ),
            host: config.host.clone(),
            port: config.port,
            tls: config.tls,
            tls_parameters,
            credentials,
            timeout,
        })
    }
}

#[async_trait]
impl MailTransport for SmtpTransport {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, from: &Mailbox, mail: &OutgoingMail) -> Result<(), SendError> {
        let message = build_message(from, mail)?;
        self.inner.send(message).await.map(drop).map_err(|e| {
            if e.is_permanent() {
                SendError::Permanent(e.into())
            } else {
                SendError::Transient(e.into())
            }
        })
    }

    /// Connects, upgrades to TLS and authenticates exactly as a send would, then quits.
    async fn check(&self) -> anyhow::Result<String> {
        let hello = ClientId::default();
        let implicit = (self.tls == SmtpTls::Tls)
            .then(|| self.tls_parameters.clone())
            .flatten();
        let mut connection = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &hello,
            implicit,
            None,
        )
        .await
        .with_context(|| format!("Failed to connect to {}", self.description))?;
        if self.tls == SmtpTls::Starttls {
            let parameters = self
                .tls_parameters
                .clone()
                .context("STARTTLS without TLS parameters")?;
            connection
                .starttls(parameters, &hello)
                .await
                .with_context(|| format!("STARTTLS failed with {}", self.description))?;
            anyhow::ensure!(
                connection.is_encrypted(),
                "{} does not offer STARTTLS",
                self.description
            );
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .with_context(|| format!("{} refused the SMTP credentials", self.description))?;
        }
        let _ = connection.quit().await;
        Ok(format!(
            "{}: connected{}",
            self.description,
            if self.credentials.is_some() {
                ", authenticated"
            } else {
                ""
            }
        ))
    }
}

/// SendGrid v3 `mail/send` over HTTPS.
pub struct SendGridTransport {
    client: reqwest::Client,
    api_key: SecretString,
    url: String,
}

impl SendGridTransport {
    pub fn new(api_key: SecretString, url: String, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("Failed to build the HTTP client")?;
        Ok(Self {
            client,
            api_key,
            url,
        })
    }
}

#[async_trait]
impl MailTransport for SendGridTransport {
    fn name(&self) -> &'static str {
        "sendgrid"
    }

    async fn send(&self, from: &Mailbox, mail: &OutgoingMail) -> Result<(), SendError> {
        let mut body = serde_json::json!({
            "personalizations": [{"to": [{"email": mail.to}]}],
            "from": {"email": from.email.to_string(), "name": from.name},
            "subject": mail.subject,
            "content": [
                {"type": "text/plain", "value": mail.text},
                {"type": "text/html", "value": mail.html},
            ],
            "headers": {"Message-ID": mail.message_id},
        });
        if let Some(url) = &mail.list_unsubscribe {
            body["headers"]["List-Unsubscribe"] = format!("<{url}>").into();
            body["headers"]["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click".into();
        }
        if !mail.inline_images.is_empty() {
            // SendGrid builds the multipart/related body from inline attachments.
            body["attachments"] = mail
                .inline_images
                .iter()
                .map(|image| {
                    serde_json::json!({
                        "content": base64::engine::general_purpose::STANDARD.encode(&image.data),
                        "type": image.content_type,
                        "filename": image.filename,
                        "disposition": "inline",
                        "content_id": image.content_id,
                    })
                })
                .collect();
        }
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(self.api_key.expose_secret())
            .json(&body)
            .send()
            .await
            .map_err(|e| SendError::Transient(anyhow::anyhow!("SendGrid request failed: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = response.text().await.unwrap_or_default();
        let detail: String = detail.chars().take(500).collect();
        let err = anyhow::anyhow!("SendGrid answered {status}: {detail}");
        if status.as_u16() == 429 || status.is_server_error() {
            Err(SendError::Transient(err))
        } else {
            Err(SendError::Permanent(err))
        }
    }

    /// Asks SendGrid which scopes the key has (`GET /v3/scopes`): proves the key is
    /// accepted without sending mail.
    async fn check(&self) -> anyhow::Result<String> {
        let scopes_url = match self.url.strip_suffix("/mail/send") {
            Some(base) => format!("{base}/scopes"),
            None => anyhow::bail!(
                "SENDGRID_API_URL should end in /mail/send (got {})",
                self.url
            ),
        };
        let response = self
            .client
            .get(&scopes_url)
            .bearer_auth(self.api_key.expose_secret())
            .send()
            .await
            .with_context(|| format!("Failed to reach {scopes_url}"))?;
        let status = response.status();
        anyhow::ensure!(
            status.is_success(),
            "SendGrid refused the API key ({status})"
        );
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let can_send = body["scopes"]
            .as_array()
            .is_some_and(|scopes| scopes.iter().any(|s| s == "mail.send"));
        anyhow::ensure!(can_send, "the SendGrid API key lacks the mail.send scope");
        Ok(format!(
            "sendgrid at {}: key accepted, mail.send allowed",
            self.url
        ))
    }
}
