//! Introgy backend: accounts, profiles and the social battery over HTTP/JSON.
//!
//! Map of the crate:
//! - [`config`]: typed settings from flags, environment and env files.
//! - [`startup`]: [`startup::Application`] (state, router, middleware, listener with
//!   connection limits, shutdown).
//! - [`error`]: [`error::ApiError`], the one JSON error envelope.
//! - [`extract`]: body, query and path extractors whose rejections are `ApiError`s, and
//!   validation messages for people.
//! - [`limits`]: the rate limits and budgets, over the store's limits aggregate.
//! - [`domain`]: parsed values (email, password, display name, one-time code).
//! - [`auth`]: passwords, access tokens, one-time codes, sessions, the account flows and
//!   the [`auth::AuthUser`] extractor.
//! - [`battery`]: the social battery rules, pure.
//! - [`store`]: one trait per aggregate (users, codes, sessions, mail, battery, limits,
//!   migration, housekeeping), [`store::Store`] their sum, and the SQLite and MongoDB backends.
//! - [`email`]: templates and mail transports.
//! - [`background`]: work that runs after a response, counted for shutdown and tests.
//! - [`metrics`]: Prometheus series, `/metrics`, and the stores' recent write outcomes.
//! - [`telemetry`]: logs (text or JSON lines, colour only on a terminal).
//! - [`routes`]: HTTP handlers, one module per resource, and the OpenAPI document.
//! - [`cli`]: the `introgy` command line.
//! - [`clock`]: the service's "now" (movable in tests).

pub mod auth;
pub mod background;
pub mod battery;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod email;
pub mod error;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod routes;
pub mod startup;
pub mod store;
pub mod telemetry;

/// The package version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this binary was built from (`unknown` without git; see `build.rs`).
pub const COMMIT: &str = env!("INTROGY_BUILD_COMMIT");
