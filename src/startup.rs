//! Building the application (state, router, middleware, listener) apart from running it,
//! so tests can start the real thing on port 0 and learn the port; and serving it over
//! HTTP/1.1 with bounded connections (SECURITY.md 33): a request-head timeout that also
//! closes idle keep-alive connections, a cap on concurrent connections below the
//! open-file limit, and graceful shutdown.
//!
//! Every response leaves through the same outer layers (SECURITY.md 31): request id,
//! security headers, panic catcher, request-head limits, path normalisation. Routing,
//! metrics, tracing, CORS, the request timeout and the body limit sit inside them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, Response, Uri};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::normalize_path::NormalizePath;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::auth::otp::OtpHasher;
use crate::auth::password::PasswordHasher;
use crate::auth::seal::Sealer;
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
/// How often expired codes, sessions, mail-budget records and accounts never verified are
/// purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// How long shutdown waits for work started by responses (codes being issued, mail
/// being queued); queued mail itself is durable and waits in the outbox.
const BACKGROUND_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Longest request target (path and query) answered by the application; longer ones
/// get a JSON 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest total of header names and values answered by the application; more gets a
/// JSON 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most request headers answered by the application; more gets a JSON 431.
pub const MAX_HEADER_COUNT: usize = 100;
/// hyper's own limits sit above ours, so that only requests far beyond them (or not
/// HTTP at all) get hyper's bodiless 400/414/431 (see docs/decisions.md, "HTTP").
const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
const HYPER_MAX_HEADERS: usize = 2 * MAX_HEADER_COUNT;
/// Most requests without a body inside the router at once (see [`ConnectionService`]):
/// the writer's largest group, and 16 times the SQLite read connections.
const MAX_GATED_REQUESTS_IN_FLIGHT: usize = 64;
/// Descriptors kept free for everything that is not a client connection (store files,
/// MongoDB and SMTP connections, logs).
const RESERVED_DESCRIPTORS: u64 = 256;
/// Longest accepted `X-Request-Id` from a client; others are replaced with our own.
pub const MAX_REQUEST_ID_LEN: usize = 64;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub mailer: Mailer,
    pub keys: Arc<JwtKeys>,
    pub otp: Arc<OtpHasher>,
    /// Seals the child of a rotated refresh token for its grace window.
    pub refresh_seal: Arc<Sealer>,
    pub hasher: PasswordHasher,
    /// Work running after responses (codes, mail).
    pub background: Background,
    pub limits: Arc<Limits>,
    pub clock: Clock,
    /// Durable mail queue and its delivery worker.
    pub outbox: Outbox,
    /// Signs and checks the unsubscribe links of nudge mails.
    pub unsubscribe: Arc<crate::nudges::UnsubscribeKey>,
    pub started_at: Instant,
}

/// A bound, ready-to-serve application.
pub struct Application {
    listener: TcpListener,
    app: Router,
    state: AppState,
    port: u16,
    max_connections: usize,
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
        let limits = Arc::new(Limits::new(
            Arc::clone(&store),
            clock.clone(),
            config.auth_rate_limit_per_minute,
        ));
        let outbox = Outbox::new(Arc::clone(&store), mailer.clone(), clock.clone(), &secret);
        let state = AppState {
            otp: Arc::new(OtpHasher::from_signing_secret(&secret)),
            refresh_seal: Arc::new(Sealer::new(&secret, "introgy/refresh-child-key/v1")),
            unsubscribe: Arc::new(crate::nudges::UnsubscribeKey::from_signing_secret(&secret)),
            keys: Arc::new(keys),
            hasher: PasswordHasher::new(config.bcrypt_cost, config.hash_concurrency),
            store,
            mailer,
            background,
            limits,
            clock,
            outbox,
            started_at: Instant::now(),
            config: Arc::new(config),
        };
        let descriptors = raise_open_file_limit();
        let max_connections = connection_cap(state.config.max_connections, descriptors);
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
        let app = build_app(state.clone());
        Ok(Self {
            listener,
            app,
            state,
            port,
            max_connections,
            metrics_listener,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// How many connections are served at once (the setting, lowered to fit the
    /// open-file limit).
    pub fn max_connections(&self) -> usize {
        self.max_connections
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
            max_connections = self.max_connections,
            "introgy listening"
        );
        serve(
            self.listener,
            self.app,
            ServeLimits {
                max_connections: self.max_connections,
                header_read_timeout: state.config.header_read_timeout,
            },
            shutdown,
        )
        .await;
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
        // After the last request: SQLite moves its WAL into the database file, so the
        // file alone is a complete copy once the process has stopped.
        if let Err(e) = state.store.close().await {
            tracing::warn!(error = %format!("{e:#}"), "the store did not close cleanly");
        }
        tracing::info!("introgy stopped");
        Ok(())
    }
}

fn spawn_background_tasks(state: &AppState) {
    tokio::spawn(state.outbox.clone().run());
    tokio::spawn(crate::nudges::weekly::run(state.clone()));
    // Compute the dummy bcrypt hash now, so the first login of an unknown address costs
    // what every other one costs.
    let hasher = state.hasher.clone();
    tokio::spawn(async move {
        if let Err(e) = hasher.dummy_hash().await {
            tracing::error!(error = %e, "failed to prepare the dummy hash");
        }
    });
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(return_freed_memory());
    let state = state.clone();
    tokio::spawn(async move {
        // First purge one interval after start, not during start-up.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + PURGE_INTERVAL, PURGE_INTERVAL);
        loop {
            tick.tick().await;
            housekeeping(&state).await;
        }
    });
}

/// How often freed heap memory is handed back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// glibc keeps the memory a burst freed (closed connections' buffers, finished requests)
/// in its arenas, resident, until the same arena needs it again: after 2,000
/// connections the process stayed at the burst's peak. `malloc_trim(0)` returns the free
/// pages of every arena (`MADV_DONTNEED`); it takes well under a millisecond on a heap of
/// this size, on a blocking thread, every [`TRIM_INTERVAL`] (README, "Performance").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

/// One pass of the housekeeping job (every [`PURGE_INTERVAL`]): forgets stale limiter
/// keys and purges what has expired from the store, accounts never verified included.
pub async fn housekeeping(state: &AppState) {
    if let Err(e) = state.limits.forget_spent().await {
        tracing::warn!(error = %e, "purge of spent budgets failed");
    }
    match state.store.purge_expired(state.clock.now()).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "purged expired records"),
        Err(e) => tracing::warn!(error = %e, "purge of expired records failed"),
    }
    match state.store.purge_nudge_claims(state.clock.now()).await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "purged expired nudge claims"),
        Err(e) => tracing::warn!(error = %e, "purge of expired nudge claims failed"),
    }
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

/// Connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Serves `app` over HTTP/1.1 until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish and closes idle connections.
///
/// A connection holds one of `max_connections` permits from accept to close; without a
/// permit nothing is accepted, so clients beyond the cap wait in the kernel's listen
/// backlog instead of exhausting descriptors. hyper closes a connection whose request
/// head is not complete `header_read_timeout` after it opened or went idle.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let in_flight = Arc::new(Semaphore::new(MAX_GATED_REQUESTS_IN_FLIGHT));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(HYPER_MAX_HEAD_BYTES)
        .max_headers(HYPER_MAX_HEADERS);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = ConnectionService {
            app: app.clone(),
            peer,
            in_flight: Arc::clone(&in_flight),
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed requests: the client's problem.
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One connection's view of the application: each request gets the peer's address and
/// a head of its own (see [`detach_head`]) before the router sees it, and a request
/// without a body waits for one of the `in_flight` permits before it enters the router.
///
/// Under thousands of busy connections nearly every one has a request in the server,
/// and a request inside the router holds its middleware and handler state (~14 KiB, most
/// of it waiting for one of the store's few connections). Waiting at the door instead
/// costs only the parsed head, which keeps the peak memory of 2,000 busy connections
/// within PRODUCT.md §7 and changes no answer: the permits are far more than the store
/// can serve at once, and are handed out first come, first served. Requests with a body
/// are not gated (a slow client could hold a permit while it sends), nor are the health
/// probes (a probe should see the process, not the queue). See docs/decisions.md.
struct ConnectionService {
    app: Router,
    peer: SocketAddr,
    in_flight: Arc<Semaphore>,
}

type ServiceFuture =
    Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ServiceFuture;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let gated = waits_for_a_permit(&request);
        let mut request = detach_head(request);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        // Lazy: the router builds the request's state when this is first polled.
        let response = self.app.clone().oneshot(request.map(Body::new));
        if !gated {
            return Box::pin(response);
        }
        let in_flight = Arc::clone(&self.in_flight);
        Box::pin(async move {
            // The semaphore is never closed; a permit is held until the response head.
            let _permit = in_flight.acquire_owned().await;
            response.await
        })
    }
}

/// Whether a request waits for an in-flight permit: complete with its head (no body to
/// receive) and not a health probe.
fn waits_for_a_permit(request: &Request<hyper::body::Incoming>) -> bool {
    use hyper::body::Body as _;
    let path = request.uri().path();
    let path = path.strip_prefix("/api").unwrap_or(path);
    let probe = path == "/health" || path.starts_with("/health/");
    request.body().is_end_stream() && !probe
}

/// The request with its target and header values copied out of hyper's read buffer.
///
/// hyper parses a request head in place and hands out slices of the connection's read
/// buffer. It calls the service (this, synchronously) and then at once reads on to
/// notice a client that goes away; while the request still points into the buffer, that
/// read cannot reuse it and allocates another 8 KiB. Copying the few hundred bytes of the
/// head first leaves the buffer free to be reused: one read buffer per connection instead
/// of two while a request is in flight (8 KiB less per busy connection; README,
/// "Performance"). Anything that cannot be copied as it is stays shared.
fn detach_head<B>(request: Request<B>) -> Request<B> {
    let (mut parts, body) = request.into_parts();
    let uri = &parts.uri;
    let copied = match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, None, Some(target)) => {
            Uri::from_maybe_shared(Bytes::copy_from_slice(target.as_str().as_bytes()))
        }
        _ => Uri::try_from(uri.to_string()),
    };
    if let Ok(copied) = copied {
        parts.uri = copied;
    }
    for value in parts.headers.values_mut() {
        if let Ok(mut copied) = HeaderValue::from_bytes(value.as_bytes()) {
            copied.set_sensitive(value.is_sensitive());
            *value = copied;
        }
    }
    Request::from_parts(parts, body)
}

/// After a failed `accept`: per-connection errors (the peer went away) are ignored;
/// anything else (out of descriptors, out of memory) is logged and accepting pauses
/// briefly instead of spinning.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %error, "accept failed; pausing for 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Raises the soft open-file limit to the hard one (SECURITY.md 33) and returns the
/// limit in force.
pub fn raise_open_file_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = limit.rlim_max;
            } else {
                tracing::warn!(
                    soft = limit.rlim_cur,
                    hard = limit.rlim_max,
                    "could not raise the open-file limit"
                );
            }
        }
        limit.rlim_cur
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// The connection cap actually used: the setting, but always `RESERVED_DESCRIPTORS`
/// below the open-file limit, so `accept` never fails for lack of descriptors.
fn connection_cap(configured: usize, descriptors: u64) -> usize {
    let fits = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    let cap = configured.min(usize::try_from(fits).unwrap_or(usize::MAX));
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            descriptors,
            "MAX_CONNECTIONS lowered to fit the open-file limit"
        );
    }
    cap
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

/// A client's `X-Request-Id` is kept only when it is 1–64 characters among letters,
/// digits and `-_.:`; anything else is dropped here and replaced by a random id, so
/// nothing unbounded or unprintable reaches the logs or the response.
fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = |value: &HeaderValue| {
        let bytes = value.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    };
    let headers = request.headers_mut();
    let values = headers.get_all(&REQUEST_ID);
    let keep = {
        let mut values = values.iter();
        matches!((values.next(), values.next()), (Some(only), None) if usable(only))
    };
    if !keep {
        headers.remove(&REQUEST_ID);
    }
    request
}

/// The whole HTTP application: routes with their inner middleware, wrapped in the
/// layers every response passes through.
pub fn build_app(state: AppState) -> Router {
    let production = state.config.is_production();
    with_outer_layers(build_router(state), production)
}

/// Routes and the middleware that needs routing (matched path: tracing, metrics; CORS,
/// timeouts, the body limit), with the state applied.
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

    crate::routes::router(&state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(cors)
        // A handler's panic becomes a 500 here, inside tracing and metrics; the outer
        // catcher (`with_outer_layers`) is the net for the layers outside routing.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(trace)
        // Outermost within routing (it needs the matched route), so every answer the
        // router gives is counted with its final status and full latency.
        .layer(middleware::from_fn(crate::metrics::track_http))
        .with_state(state)
}

fn panic_response(_panic: Box<dyn std::any::Any + Send>) -> Response<Body> {
    tracing::error!("a request handler panicked");
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// Wraps `inner` in the layers that every response passes through, whatever produced it
/// (a handler, the fallback, CORS, a panic, a head limit). The outer router has no
/// routes: everything goes to `inner` through its fallback.
pub fn with_outer_layers(inner: Router, production: bool) -> Router {
    Router::new()
        .fallback_service(NormalizePath::trim_trailing_slash(inner))
        .layer(middleware::from_fn(head_limits))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(move |req, next| {
            security_headers(req, next, production)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), RandomRequestId))
        .layer(tower::util::MapRequestLayer::new(drop_unusable_request_id))
}

/// 414 and 431 in the JSON envelope for request heads within hyper's limits but beyond
/// ours.
async fn head_limits(request: Request, next: Next) -> Response<Body> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::UriTooLong.into_response();
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADER_COUNT || header_bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge.into_response();
    }
    next.run(request).await
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

/// The policy of the docs pages: scripts, styles, images and requests from this origin
/// only (inline styles, which both UIs inject, and `data:` images, which Swagger UI's
/// CSS uses, excepted; ReDoc runs its search in a `blob:` worker).
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

fn is_docs_page(path: &str) -> bool {
    let path = path.strip_prefix("/api").unwrap_or(path);
    path == "/docs"
        || path.starts_with("/docs/")
        || path == "/redoc"
        || path.starts_with("/redoc-assets/")
}

async fn security_headers(request: Request, next: Next, production: bool) -> Response<Body> {
    let docs = is_docs_page(request.uri().path().trim_end_matches('/'));
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
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(if docs { DOCS_CSP } else { API_CSP }),
    );
    if !docs {
        // API answers are personal: never stored by browsers or proxies.
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    if production {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_envelope_with_the_security_headers() {
        async fn boom() -> &'static str {
            panic!("a bug")
        }
        let app = with_outer_layers(Router::new().route("/boom", get(boom)), false);
        let request = Request::builder()
            .uri("/boom/")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        for name in [
            "x-content-type-options",
            "content-security-policy",
            "x-frame-options",
            "x-request-id",
            "cache-control",
        ] {
            assert!(response.headers().contains_key(name), "{name}");
        }
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "internal_error");
        assert!(!body.to_string().contains("a bug"));
    }

    #[test]
    fn a_detached_head_keeps_every_value_but_no_byte_of_the_read_buffer() {
        let buffer = Bytes::from_static(b"/users/me?x=1 Bearer abc secret-ish");
        let within = |p: *const u8| buffer.as_ptr_range().contains(&p);
        let mut request = Request::builder()
            .uri(Uri::from_maybe_shared(buffer.slice(0..13)).unwrap())
            .body(())
            .unwrap();
        let mut token = HeaderValue::from_maybe_shared(buffer.slice(14..24)).unwrap();
        token.set_sensitive(true);
        let headers = request.headers_mut();
        headers.append(header::AUTHORIZATION, token);
        headers.append(
            "x-twice",
            HeaderValue::from_maybe_shared(buffer.slice(25..31)).unwrap(),
        );
        headers.append(
            "x-twice",
            HeaderValue::from_maybe_shared(buffer.slice(14..20)).unwrap(),
        );
        assert!(
            within(request.uri().path().as_ptr()),
            "the test shares the buffer"
        );

        let detached = detach_head(request);

        assert_eq!(detached.uri(), "/users/me?x=1");
        assert!(!within(detached.uri().path().as_ptr()));
        let authorization = &detached.headers()[header::AUTHORIZATION];
        assert_eq!(authorization, "Bearer abc");
        assert!(authorization.is_sensitive());
        let twice: Vec<_> = detached.headers().get_all("x-twice").iter().collect();
        assert_eq!(twice, ["secret", "Bearer"]);
        for value in detached.headers().values() {
            assert!(!within(value.as_bytes().as_ptr()), "{value:?}");
        }
    }

    #[test]
    fn the_connection_cap_stays_below_the_open_file_limit() {
        assert_eq!(connection_cap(4096, 1_048_576), 4096);
        assert_eq!(connection_cap(4096, 1024), 1024 - 256);
        assert_eq!(connection_cap(10, 1024), 10);
        assert_eq!(connection_cap(4096, 100), 1);
    }
}
