//! Building the application (state, router, middleware, listener) apart from running it,
//! so tests can start the real thing on port 0 and learn the port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, Response};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::otp::OtpHasher;
use crate::auth::password::PasswordHasher;
use crate::auth::tokens::JwtKeys;
use crate::background::Background;
use crate::clock::Clock;
use crate::config::Config;
use crate::email::{transport, MailTransport, Mailer, Outbox};
use crate::error::ApiError;
use crate::limits::Limits;
use crate::store::Store;

/// Largest accepted request body (SECURITY.md 23).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;
/// How often expired codes, sessions and mail-budget records are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// How long shutdown waits for work started by responses (codes being issued, mail
/// being queued); queued mail itself is durable and waits in the outbox.
const BACKGROUND_DRAIN_LIMIT: Duration = Duration::from_secs(10);

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub mailer: Mailer,
    pub keys: Arc<JwtKeys>,
    pub otp: Arc<OtpHasher>,
    pub hasher: PasswordHasher,
    /// Work running after responses (codes, mail).
    pub background: Background,
    pub limits: Arc<Limits>,
    pub clock: Clock,
    /// Durable mail queue and its delivery worker.
    pub outbox: Outbox,
    pub started_at: Instant,
}

/// A bound, ready-to-serve application.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    port: u16,
    /// The Prometheus listener (`METRICS_ADDR`), if configured.
    metrics_listener: Option<TcpListener>,
}

impl Application {
    /// Builds with the mail transport the configuration names.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let transport = transport::from_config(&config.mail)?;
        Self::build_with_transport(config, transport).await
    }

    /// Builds with a given mail transport (tests read mail from a memory transport).
    pub async fn build_with_transport(
        config: Config,
        transport: Arc<dyn MailTransport>,
    ) -> anyhow::Result<Self> {
        let store = crate::store::connect(&config).await?;
        Self::build_with(config, store, transport).await
    }

    /// Builds around a given store and mail transport (fault-injection tests).
    pub async fn build_with(
        config: Config,
        store: Arc<dyn Store>,
        transport: Arc<dyn MailTransport>,
    ) -> anyhow::Result<Self> {
        let secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => crate::auth::dev_secret::load_or_create(&config.data_dir())?,
        };
        let keys = JwtKeys::new(&secret, &config.jwt_previous_secrets);
        let background = Background::default();
        let mailer = Mailer::new(&config.mail, transport)?;
        let clock = Clock::default();
        let outbox = Outbox::new(Arc::clone(&store), mailer.clone(), clock.clone(), &secret);
        let state = AppState {
            otp: Arc::new(OtpHasher::from_signing_secret(&secret)),
            keys: Arc::new(keys),
            hasher: PasswordHasher::new(config.bcrypt_cost, config.hash_concurrency),
            store,
            mailer,
            background,
            limits: Arc::new(Limits::new(config.auth_rate_limit_per_minute)),
            clock,
            outbox,
            started_at: Instant::now(),
            config: Arc::new(config),
        };
        let address = format!("{}:{}", state.config.host, state.config.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("Failed to listen on {address}"))?;
        let port = listener.local_addr()?.port();
        let metrics_listener = match state.config.metrics_addr {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("Failed to listen on {address} (METRICS_ADDR)"))?,
            ),
            None => None,
        };
        let router = build_router(state.clone());
        Ok(Self {
            listener,
            router,
            state,
            port,
            metrics_listener,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGINT or SIGTERM, then finishes in-flight requests and queued mail.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        spawn_background_tasks(&state);
        let metrics_server = self.metrics_listener.map(|listener| {
            tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics listening");
            tokio::spawn(crate::metrics::serve(listener, state.clone()))
        });
        tracing::info!(
            address = %format!("{}:{}", state.config.host, self.port),
            environment = state.config.environment.as_str(),
            store = state.store.backend(),
            mail_transport = state.mailer.transport().name(),
            "introgy listening"
        );
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
        if let Some(server) = metrics_server {
            server.abort();
        }
        let pending = state.background.wait_idle(BACKGROUND_DRAIN_LIMIT).await;
        if pending > 0 {
            tracing::warn!(
                pending,
                "shutting down with work still running; queued mail stays in the outbox"
            );
        }
        tracing::info!("introgy stopped");
        Ok(())
    }
}

fn spawn_background_tasks(state: &AppState) {
    tokio::spawn(state.outbox.clone().run());
    // Compute the dummy bcrypt hash now, so the first login of an unknown address costs
    // what every other one costs.
    let hasher = state.hasher.clone();
    tokio::spawn(async move {
        if let Err(e) = hasher.dummy_hash().await {
            tracing::error!(error = %e, "failed to prepare the dummy hash");
        }
    });
    let store = Arc::clone(&state.store);
    let limits = Arc::clone(&state.limits);
    let clock = state.clock.clone();
    tokio::spawn(async move {
        // First purge one interval after start, not during start-up.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + PURGE_INTERVAL, PURGE_INTERVAL);
        loop {
            tick.tick().await;
            limits.retain_recent(clock.now());
            match store.purge_expired(clock.now()).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "purged expired records"),
                Err(e) => tracing::warn!(error = %e, "purge of expired records failed"),
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called (not
/// when the future is first polled), so a signal that arrives while the server is still
/// starting is not fatal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(interrupt), Ok(terminate)) => Some((interrupt, terminate)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGINT/SIGTERM");
                None
            }
        }
    };
    async move {
        #[cfg(unix)]
        match signals {
            Some((mut interrupt, mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {},
                    _ = terminate.recv() => {},
                }
            }
            None => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}

#[derive(Clone, Default)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&crate::auth::random_hex(8))
            .ok()
            .map(RequestId::new)
    }
}

/// Assembles routes and middleware.
pub fn build_router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(
            state
                .config
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        ))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([REQUEST_ID.clone(), header::RETRY_AFTER])
        .max_age(Duration::from_secs(600));

    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request| {
            let route = request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str)
                .unwrap_or("unmatched");
            let request_id = request
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!(
                "request",
                method = %request.method(),
                route,
                request_id,
                status = tracing::field::Empty,
            )
        })
        .on_request(())
        .on_response(
            |response: &Response<Body>, latency: Duration, span: &tracing::Span| {
                span.record("status", response.status().as_u16());
                tracing::info!(
                    status = response.status().as_u16(),
                    latency_ms = latency.as_secs_f64() * 1000.0,
                    "request finished"
                );
            },
        )
        .on_failure(());

    let production = state.config.is_production();
    crate::routes::router(&state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(middleware::from_fn(move |req, next| {
            security_headers(req, next, production)
        }))
        .layer(cors)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), RandomRequestId))
        .layer(CatchPanicLayer::custom(|_panic| {
            tracing::error!("a request handler panicked");
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        // Outermost, so every answer is counted with its final status and full latency.
        .layer(middleware::from_fn(crate::metrics::track_http))
        .with_state(state)
}

async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response<Body> {
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(anyhow::anyhow!("request timed out")).into_response(),
    }
}

async fn security_headers(request: Request, next: Next, production: bool) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let is_docs = ["/docs", "/redoc", "/api/docs", "/api/redoc"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    if !is_docs {
        // API answers are personal: never stored by browsers or proxies.
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        );
    }
    if production {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    response
}
