//! Prometheus metrics (PRODUCT.md §8): what the service counts and times, the `/metrics`
//! handler, and the per-store record of recent write outcomes that `/health` and
//! `/health/ready` read.
//!
//! One process-wide registry ([`metrics()`]), like a logger: the store's choke points,
//! the hasher and the limiters record without being handed a handle. `prometheus-client`
//! encodes it (OpenMetrics when the scraper asks for it, else the Prometheus text format
//! 0.0.4); nothing here writes the exposition format by hand. The list of series, for
//! dashboards, is in `docs/deploy.md`.
//!
//! Label values are bounded: route *templates* (`/users/{id}`, `unmatched` for 404s),
//! store operation names, fixed outcome words. Nothing user-supplied becomes a label.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::startup::AppState;
use crate::store::StoreError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    backend: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    backend: &'static str,
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MailLabels {
    transport: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    // 0.5 ms .. 16 s: from a cached read to the request timeout's order of magnitude.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn store_histogram() -> Histogram {
    // 50 µs .. 6.5 s: a primary-key read to past STORE_TIMEOUT_SECONDS' default.
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

/// Every series the service exports.
pub struct Metrics {
    registry: Registry,
    http: HistogramFamily<HttpLabels>,
    store: HistogramFamily<StoreLabels>,
    store_errors: Family<StoreErrorLabels, Counter>,
    outbox_pending: Gauge,
    outbox_dead: Gauge,
    mail_attempts: Family<MailLabels, Counter>,
    hashes_waiting: Gauge,
    hashes_running: Gauge,
    hash_rescues: Counter,
    logins: Family<OutcomeLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    round_trips: Family<RouteLabels, Counter>,
    round_trips_per_request: Family<RouteLabels, Gauge<f64, AtomicU64>>,
    /// Requests and round trips per route, for the mean above.
    round_trip_totals: Mutex<HashMap<String, (u64, u64)>>,
    /// Whether a store that counts round trips is in use (MongoDB).
    counting_round_trips: AtomicBool,
}

tokio::task_local! {
    /// Database round trips of the request being served.
    static ROUND_TRIPS: Cell<u64>;
}

/// Counts one database round trip (a command sent) for the request being served; does
/// nothing outside one. Called by the MongoDB driver's command monitoring, on the task
/// that runs the command.
pub fn count_round_trip() {
    let _ = ROUND_TRIPS.try_with(|n| n.set(n.get() + 1));
}

/// Runs `work`, counting the database round trips it makes (on its own task: work it
/// spawns is not counted). Nested counts add up into the enclosing one.
pub async fn count_round_trips<F: std::future::Future>(work: F) -> (F::Output, u64) {
    let (output, trips) = ROUND_TRIPS
        .scope(Cell::new(0), async {
            let output = work.await;
            (output, ROUND_TRIPS.with(Cell::get))
        })
        .await;
    let _ = ROUND_TRIPS.try_with(|outer| outer.set(outer.get() + trips));
    (output, trips)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let http: HistogramFamily<HttpLabels> = Family::new_with_constructor(http_histogram);
        registry.register_with_unit(
            "introgy_http_request_duration",
            "HTTP requests by route template, method and status, and how long they took",
            prometheus_client::registry::Unit::Seconds,
            http.clone(),
        );
        let store: HistogramFamily<StoreLabels> = Family::new_with_constructor(store_histogram);
        registry.register_with_unit(
            "introgy_store_operation_duration",
            "Store operations by backend and operation, and how long they took",
            prometheus_client::registry::Unit::Seconds,
            store.clone(),
        );
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "introgy_store_operation_errors",
            "Store operations that failed, by kind (unavailable, conflict, other)",
            store_errors.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "introgy_outbox_pending",
            "Mails waiting in the outbox (read from the store at scrape time)",
            outbox_pending.clone(),
        );
        let outbox_dead = Gauge::default();
        registry.register(
            "introgy_outbox_dead",
            "Mails given up after their last try (read from the store at scrape time)",
            outbox_dead.clone(),
        );
        let mail_attempts = Family::<MailLabels, Counter>::default();
        registry.register(
            "introgy_mail_attempts",
            "Mail delivery attempts by transport and outcome (sent, retry, dead, expired)",
            mail_attempts.clone(),
        );
        let hashes_waiting = Gauge::default();
        registry.register(
            "introgy_password_hash_queue_depth",
            "bcrypt hashes waiting for a hashing thread",
            hashes_waiting.clone(),
        );
        let hashes_running = Gauge::default();
        registry.register(
            "introgy_password_hashes_running",
            "bcrypt hashes running now (at most HASH_CONCURRENCY)",
            hashes_running.clone(),
        );
        let hash_rescues = Counter::default();
        registry.register(
            "introgy_password_hash_rescues",
            "bcrypt hashes that got no CPU at idle priority in time and were run again on the \
             normal-priority rescue thread (the machine was saturated)",
            hash_rescues.clone(),
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "introgy_logins",
            "Login attempts by outcome (success, invalid_credentials, unverified, throttled, error)",
            logins.clone(),
        );
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "introgy_rate_limited",
            "Requests refused by a rate limit (auth_ip, failed_logins, lookup)",
            rate_limited.clone(),
        );
        let round_trips = Family::<RouteLabels, Counter>::default();
        registry.register(
            "introgy_store_round_trips",
            "Database round trips (commands sent to MongoDB) made while serving requests, by route template",
            round_trips.clone(),
        );
        let round_trips_per_request = Family::<RouteLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "introgy_store_round_trips_per_request",
            "Mean database round trips per request since start, by route template (MongoDB)",
            round_trips_per_request.clone(),
        );
        registry.register(
            "introgy_build",
            "The running build",
            Info::new(BuildLabels {
                version: crate::VERSION,
                commit: crate::COMMIT,
            }),
        );
        Self {
            registry,
            http,
            store,
            store_errors,
            outbox_pending,
            outbox_dead,
            mail_attempts,
            hashes_waiting,
            hashes_running,
            hash_rescues,
            logins,
            rate_limited,
            round_trips,
            round_trips_per_request,
            round_trip_totals: Mutex::new(HashMap::new()),
            counting_round_trips: AtomicBool::new(false),
        }
    }

    /// From now on every request counts its database round trips (a MongoDB store with
    /// command monitoring is open).
    pub fn count_round_trips_from_now(&self) {
        self.counting_round_trips.store(true, Ordering::Relaxed);
    }

    /// One request's round trips.
    pub fn observe_round_trips(&self, route: &str, trips: u64) {
        let labels = RouteLabels {
            route: route.to_owned(),
        };
        self.round_trips.get_or_create(&labels).inc_by(trips);
        let mut totals = self
            .round_trip_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (requests, sum) = totals.entry(labels.route.clone()).or_default();
        *requests += 1;
        *sum += trips;
        self.round_trips_per_request
            .get_or_create(&labels)
            .set(*sum as f64 / *requests as f64);
    }

    /// One finished HTTP request.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One delivery attempt and how it ended.
    pub fn mail_attempt(&self, transport: &'static str, outcome: &'static str) {
        self.mail_attempts
            .get_or_create(&MailLabels { transport, outcome })
            .inc();
    }

    /// One login attempt and how it ended.
    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// One request refused by the named limit.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Counts a hash as waiting for a thread until the guard is dropped.
    pub fn hash_waiting(&self) -> GaugeGuard {
        GaugeGuard::new(&self.hashes_waiting)
    }

    /// Counts a hash as running until the guard is dropped.
    pub fn hash_running(&self) -> GaugeGuard {
        GaugeGuard::new(&self.hashes_running)
    }

    /// One hash handed to the rescue thread.
    pub fn hash_rescued(&self) {
        self.hash_rescues.inc();
    }

    /// The exposition: OpenMetrics when `accept` asks for it, else Prometheus text 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> (String, &'static str) {
        let mut out = String::new();
        // Encoding into a String cannot fail; an error would be a library bug, and an
        // empty scrape is the honest answer to it.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
            (
                out,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
            (
                out,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )
        }
    }
}

/// Decrements its gauge when dropped, so a cancelled future does not leave it counted.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: times every request and counts it by route template, method and status,
/// and on MongoDB counts its database round trips.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Not the raw path: a template keeps the number of series bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = if metrics().counting_round_trips.load(Ordering::Relaxed) {
        let (response, trips) = count_round_trips(next.run(request)).await;
        metrics().observe_round_trips(route.as_deref().unwrap_or("unmatched"), trips);
        response
    } else {
        next.run(request).await
    };
    metrics().observe_http(
        method.as_str(),
        route.as_deref().unwrap_or("unmatched"),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// `GET /metrics` on the main port: only with `METRICS_TOKEN`, as a bearer token.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus metrics (text format 0.0.4, or OpenMetrics when asked for)", content_type = "text/plain", body = String),
        (status = 401, description = "Missing or wrong METRICS_TOKEN", body = crate::error::ErrorBody),
        (status = 404, description = "Not served on this port (no METRICS_TOKEN; see METRICS_ADDR)", body = crate::error::ErrorBody),
    ))]
pub async fn scrape_with_token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(expected) = &state.config.metrics_token else {
        return crate::error::ApiError::NotFound("Route".into()).into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        return crate::error::ApiError::Unauthorized {
            code: "invalid_token",
            detail: "Metrics need `Authorization: Bearer <METRICS_TOKEN>`".into(),
        }
        .into_response();
    }
    scrape(State(state), headers).await
}

/// `GET /metrics` on the metrics listener (`METRICS_ADDR`), and behind the token check.
pub async fn scrape(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // The outbox backlog lives in the store; read it now so the gauges are current.
    match state.store.outbox_stats().await {
        Ok(stats) => {
            metrics().outbox_pending.set(clamp_i64(stats.pending));
            metrics().outbox_dead.set(clamp_i64(stats.dead));
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the outbox backlog"),
    }
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (body, content_type) = metrics().encode(openmetrics);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Serves `/metrics` (behind `METRICS_TOKEN` when one is set) on the metrics listener
/// until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) {
    let route = if state.config.metrics_token.is_some() {
        axum::routing::get(scrape_with_token)
    } else {
        axum::routing::get(scrape)
    };
    let router = axum::Router::new()
        .route("/metrics", route)
        .fallback(|| async { crate::error::ApiError::NotFound("Route".into()) })
        .with_state(state);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "metrics listener failed");
    }
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

tokio::task_local! {
    /// The store operations of the current task, when [`store_operations_of`] watches it.
    static OPERATIONS: std::cell::RefCell<Vec<StoreOperation>>;
}

/// One store operation as its choke point names it: the store method on SQLite, the
/// driver command on MongoDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOperation {
    pub name: &'static str,
    pub write: bool,
}

/// Runs `work` and lists the store operations it performed itself, in order (not those of
/// tasks it spawned, nor anyone else's). Tests compare the store work of two requests
/// with it (SECURITY.md 29: a known and an unknown address do the same operations).
pub async fn store_operations_of<F: std::future::Future>(
    work: F,
) -> (F::Output, Vec<StoreOperation>) {
    OPERATIONS
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let output = work.await;
            (output, OPERATIONS.with(|ops| ops.take()))
        })
        .await
}

/// What one store keeps about its operations: it feeds the store series and remembers
/// which write operations are failing (for `/health` and `/health/ready`). Each backend
/// holds one and calls [`StoreObserver::record`] at its single choke point.
///
/// "Writes are failing" is tracked per operation: an operation whose latest attempt
/// failed stays failing until that same operation succeeds again. Per operation, because
/// a write that changes nothing (the mail worker's idle poll, every second) succeeds even
/// on a full disk and must not hide the failure of the writes that do write. A failure
/// with no attempt of that operation for [`FAILURE_MEMORY`] is forgotten, so one blip of a
/// rare operation does not hold the service degraded.
pub struct StoreObserver {
    backend: &'static str,
    /// Failing write operations: when each started failing, when it last failed, and
    /// whether that last failure was the store being unreachable.
    failing: Mutex<HashMap<&'static str, Failure>>,
}

struct Failure {
    since: Instant,
    last: Instant,
    unreachable: bool,
}

/// How long a failed write keeps the store degraded without another attempt.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(300);

/// Whether this store's writes work, as far as recent writes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteHealth {
    /// No write operation's latest attempt failed (recently).
    Ok,
    /// These operations' latest attempts failed; the oldest has been failing this long.
    Failing {
        operations: Vec<&'static str>,
        for_: Duration,
    },
}

impl StoreObserver {
    pub fn new(backend: &'static str) -> Self {
        Self {
            backend,
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// Records one operation: its latency, its error if any, and for a write whether
    /// writes work. A conflict (a duplicate key) is an answer, not a failure.
    pub fn record(
        &self,
        operation: &'static str,
        write: bool,
        elapsed: Duration,
        error: Option<&StoreError>,
    ) {
        // Outside `store_operations_of` this finds no list and costs a thread-local check.
        let _ = OPERATIONS.try_with(|ops| {
            ops.borrow_mut().push(StoreOperation {
                name: operation,
                write,
            })
        });
        let m = metrics();
        m.store
            .get_or_create(&StoreLabels {
                backend: self.backend,
                operation,
            })
            .observe(elapsed.as_secs_f64());
        let failed = match error {
            None => false,
            Some(e) => {
                let kind = match e {
                    StoreError::Conflict(_) => "conflict",
                    StoreError::Unavailable(_) => "unavailable",
                    StoreError::Corrupt { .. } => "corrupt",
                    StoreError::Other(_) => "other",
                };
                m.store_errors
                    .get_or_create(&StoreErrorLabels {
                        backend: self.backend,
                        operation,
                        kind,
                    })
                    .inc();
                !matches!(e, StoreError::Conflict(_))
            }
        };
        if write {
            let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
            if failed {
                let now = Instant::now();
                let unreachable = matches!(error, Some(StoreError::Unavailable(_)));
                failing
                    .entry(operation)
                    .and_modify(|f| {
                        f.last = now;
                        f.unreachable = unreachable;
                    })
                    .or_insert(Failure {
                        since: now,
                        last: now,
                        unreachable,
                    });
            } else if !failing.is_empty() {
                failing.remove(operation);
            }
        }
    }

    /// The store answered a round trip that started at `checked_from`: writes whose latest
    /// failure was the store being unreachable before then are no longer failing. Only for
    /// a store where "unavailable" means the connection (MongoDB: network, server
    /// selection, timeouts); SQLite's unavailable includes a full disk, which a read that
    /// succeeds does not disprove, so SQLite never calls this.
    pub fn reachable(&self, checked_from: Instant) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.retain(|_, f| !(f.unreachable && f.last < checked_from));
    }

    pub fn write_health(&self) -> WriteHealth {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.retain(|_, f| f.last.elapsed() < FAILURE_MEMORY);
        match failing.values().map(|f| f.since).min() {
            None => WriteHealth::Ok,
            Some(since) => {
                let mut operations: Vec<&'static str> = failing.keys().copied().collect();
                operations.sort_unstable();
                WriteHealth::Failing {
                    operations,
                    for_: since.elapsed(),
                }
            }
        }
    }
}

/// The operation an SQLite store call performs, from the type name of the closure its
/// choke point runs (`SqliteStore::write<T, <SqliteStore as Store>::insert_user::{{closure}}
/// ::{{closure}}>::{{closure}}`): the store method (`insert_user`) and whether it went
/// through the write connection. The name costs nothing to obtain (it is a constant of
/// the closure's type); the parse is a short scan. `std::any::type_name` promises no
/// format, so anything unexpected falls back to a readable name rather than failing
/// (and the unit tests below show the format this build relies on).
pub fn sqlite_operation(closure_type: &'static str) -> (&'static str, bool) {
    for (marker, write) in [("::write<", true), ("::read<", false)] {
        if let Some(at) = closure_type.find(marker) {
            let args = &closure_type[at + marker.len()..];
            if let Some(last) = last_generic_argument(args) {
                return (function_name(last), write);
            }
        }
    }
    (function_name(closure_type), false)
}

/// The last top-level argument of a generic list that starts right after its `<`.
fn last_generic_argument(args: &'static str) -> Option<&'static str> {
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in args.char_indices() {
        match c {
            '<' => depth += 1,
            ',' if depth == 0 => start = i + 1,
            '>' if depth == 0 => return Some(args[start..i].trim()),
            '>' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `path::to::function<'_, '_>::{{closure}}::{{closure}}` → `function`.
fn function_name(path: &'static str) -> &'static str {
    let mut path = path.trim();
    while let Some(stripped) = path.strip_suffix("::{{closure}}") {
        path = stripped;
    }
    // The function's own generic arguments (async_trait methods carry lifetimes).
    if path.ends_with('>') {
        let mut depth = 0usize;
        for (i, c) in path.char_indices().rev() {
            match c {
                '>' => depth += 1,
                '<' => {
                    depth -= 1;
                    if depth == 0 {
                        path = &path[..i];
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    path.rsplit("::").next().unwrap_or(path)
}

/// The driver command a MongoDB store call runs, from the type name of the driver's
/// action (`mongodb::action::insert_one::InsertOne`), and whether it writes.
pub fn mongo_operation(action_type: &'static str) -> (&'static str, bool) {
    let base = action_type.split('<').next().unwrap_or(action_type);
    let name = function_name(base);
    match name {
        "InsertOne" => ("insert_one", true),
        "InsertMany" => ("insert_many", true),
        "Update" => ("update", true),
        "ReplaceOne" => ("replace_one", true),
        "Delete" => ("delete", true),
        "FindOneAndUpdate" => ("find_one_and_update", true),
        "FindOneAndReplace" => ("find_one_and_replace", true),
        "FindOneAndDelete" => ("find_one_and_delete", true),
        "BulkWrite" => ("bulk_write", true),
        "Find" => ("find", false),
        "FindOne" => ("find_one", false),
        "CountDocuments" => ("count_documents", false),
        "EstimatedDocumentCount" => ("estimated_document_count", false),
        "Aggregate" => ("aggregate", false),
        "Distinct" => ("distinct", false),
        "RunCommand" => ("run_command", false),
        "CreateIndex" => ("create_index", false),
        other => (other, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Store {
        fn insert_user(&self) -> &'static str;
    }
    struct Backend;
    impl Backend {
        fn run<F: FnOnce()>(&self, _f: F) -> &'static str {
            std::any::type_name::<F>()
        }
        fn write<T, F: FnOnce() -> T>(&self, f: F) -> &'static str {
            self.run(move || drop(f()))
        }
    }
    impl Store for Backend {
        fn insert_user(&self) -> &'static str {
            self.write(|| Some(1u8))
        }
    }

    #[test]
    fn the_store_method_is_read_from_the_choke_points_closure_type() {
        // The real shape: the choke point sees `write<T, F>`'s own closure.
        let seen = Backend.insert_user();
        assert_eq!(sqlite_operation(seen), ("insert_user", true), "{seen}");
        let async_trait_shape = "introgy::store::sqlite::SqliteStore::read<core::option::Option<introgy::store::User>, <introgy::store::sqlite::SqliteStore as introgy::store::Store>::user_by_id<'_, '_, '_>::{{closure}}::{{closure}}>::{{closure}}";
        assert_eq!(sqlite_operation(async_trait_shape), ("user_by_id", false));
        let generic_result = "x::SqliteStore::write<alloc::vec::Vec<(u8, alloc::string::String)>, x::helper::{{closure}}>::{{closure}}";
        assert_eq!(sqlite_operation(generic_result), ("helper", true));
        assert_eq!(sqlite_operation("weird"), ("weird", false));
        // `quick_read` names the method's own closure (no choke-point closure around it).
        let quick_read_shape = "<introgy::store::sqlite::SqliteStore as introgy::store::CallerStore>::caller<'_, '_, '_, '_>::{{closure}}::{{closure}}";
        assert_eq!(sqlite_operation(quick_read_shape), ("caller", false));
    }

    #[test]
    fn mongo_actions_are_named_and_classified() {
        assert_eq!(
            mongo_operation("mongodb::action::insert_one::InsertOne"),
            ("insert_one", true)
        );
        assert_eq!(
            mongo_operation("mongodb::action::find::FindOne<mongodb::bson::document::Document>"),
            ("find_one", false)
        );
        assert_eq!(
            mongo_operation("mongodb::action::update::Update"),
            ("update", true)
        );
    }

    #[test]
    fn a_failed_write_degrades_until_a_write_succeeds() {
        let observer = StoreObserver::new("test");
        let down = StoreError::Unavailable(anyhow::anyhow!("disk full"));
        observer.record("read_something", false, Duration::ZERO, Some(&down));
        assert_eq!(
            observer.write_health(),
            WriteHealth::Ok,
            "reads do not count"
        );
        observer.record(
            "insert_user",
            true,
            Duration::ZERO,
            Some(&StoreError::Conflict("taken".into())),
        );
        assert_eq!(
            observer.write_health(),
            WriteHealth::Ok,
            "a conflict is an answer"
        );
        observer.record("insert_user", true, Duration::ZERO, Some(&down));
        assert!(matches!(
            observer.write_health(),
            WriteHealth::Failing { ref operations, .. } if operations == &["insert_user"]
        ));
        // A write of another kind (an idle poll that changes nothing) does not clear it.
        observer.record("claim_mail", true, Duration::ZERO, None);
        assert!(matches!(
            observer.write_health(),
            WriteHealth::Failing { .. }
        ));
        observer.record("insert_user", true, Duration::ZERO, None);
        assert_eq!(observer.write_health(), WriteHealth::Ok);
    }

    #[test]
    fn a_round_trip_after_an_unreachable_store_clears_only_what_unreachability_failed() {
        let observer = StoreObserver::new("test");
        let cut = StoreError::Unavailable(anyhow::anyhow!("connection refused"));
        let refused = StoreError::Other(anyhow::anyhow!("write refused"));
        observer.record("insert_one", true, Duration::ZERO, Some(&cut));
        observer.record("update_one", true, Duration::ZERO, Some(&refused));
        let checked_from = Instant::now();
        observer.record("delete_one", true, Duration::ZERO, Some(&cut));
        observer.reachable(checked_from);
        assert!(
            matches!(
                observer.write_health(),
                WriteHealth::Failing { ref operations, .. }
                    if operations == &["delete_one", "update_one"]
            ),
            "a failure after the round trip started, or of another kind, stays"
        );
        observer.reachable(Instant::now());
        assert!(matches!(
            observer.write_health(),
            WriteHealth::Failing { ref operations, .. } if operations == &["update_one"]
        ));
    }

    #[test]
    fn the_exposition_has_every_family() {
        metrics().login("success");
        metrics().observe_http("GET", "/health", 200, Duration::from_millis(2));
        StoreObserver::new("test").record("user_by_id", false, Duration::ZERO, None);
        let (text, content_type) = metrics().encode(false);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        for family in [
            "introgy_http_request_duration_seconds",
            "introgy_store_operation_duration_seconds",
            "introgy_outbox_pending",
            "introgy_password_hash_queue_depth",
            "introgy_password_hash_rescues",
            "introgy_logins_total",
            "introgy_build_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family}")),
                "{family}: {text}"
            );
        }
        let (text, _) = metrics().encode(true);
        assert!(text.ends_with("# EOF\n"));
        assert!(
            text.contains(&format!(
                "introgy_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                crate::VERSION,
                crate::COMMIT
            )),
            "{text}"
        );
    }
}
