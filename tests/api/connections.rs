//! Connections are bounded (SECURITY.md 33, issue 9 item 3): thousands of silent or
//! slow sockets never stop `/health` from answering; a connection that does not deliver
//! a request head in time (silent, slowloris, idle keep-alive) is closed; beyond the
//! connection cap clients wait rather than exhausting descriptors; shutdown lets an
//! in-flight request finish.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

fn address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

async fn open_silent(app: &TestApp, n: usize) -> Vec<TcpStream> {
    let address = address(app);
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(TcpStream::connect(&address).await.expect("connect"));
    }
    sockets
}

/// Resolves when the server has closed `socket` (EOF or reset).
async fn closed_by_server(socket: &mut TcpStream) {
    let mut buffer = [0u8; 1024];
    loop {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn health_within(app: &TestApp, limit: Duration) -> StatusCode {
    // A fresh connection each time, as a load balancer's probe would open.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    timeout(limit, client.get(app.url("/health")).send())
        .await
        .expect("/health did not answer in time")
        .expect("/health request failed")
        .status()
}

#[tokio::test]
async fn two_thousand_silent_connections_leave_health_answering() {
    let app = spawn_app().await;
    // Client and server ends share this process's descriptors (the app raised the soft
    // limit to the hard one when it started).
    let limit = introgy::startup::raise_open_file_limit();
    let n = 2000.min((limit.saturating_sub(512) / 2) as usize);
    assert!(
        n >= 1000,
        "open-file limit {limit} is too low for this test"
    );
    let silent = open_silent(&app, n).await;
    for _ in 0..3 {
        assert_eq!(
            health_within(&app, Duration::from_secs(5)).await,
            StatusCode::OK
        );
    }
    drop(silent);
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed_after_the_head_timeout() {
    let app = spawn_app_with(&["--header-read-timeout-seconds", "1"]).await;
    let started = Instant::now();
    let mut silent = open_silent(&app, 200).await;

    // Slowloris: a request head trickling in a byte at a time, forever.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut socket = TcpStream::connect(address(&app)).await.unwrap();
        slow.push(tokio::spawn(async move {
            socket
                .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
                .await
                .ok();
            let (mut read, mut write) = socket.split();
            let trickle = async {
                loop {
                    if write.write_all(b"x").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let mut buffer = [0u8; 64];
            tokio::select! {
                () = trickle => {},
                _ = read.read(&mut buffer) => {},
            }
        }));
    }

    // Idle keep-alive: one complete request, then nothing.
    let mut idle = TcpStream::connect(address(&app)).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 16];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first[..12], b"HTTP/1.1 200");

    // /health answers meanwhile.
    assert_eq!(
        health_within(&app, Duration::from_secs(5)).await,
        StatusCode::OK
    );

    let deadline = Duration::from_secs(10);
    for socket in &mut silent {
        timeout(deadline, closed_by_server(socket))
            .await
            .expect("a silent connection stayed open");
    }
    for task in slow {
        timeout(deadline, task)
            .await
            .expect("a slowloris connection stayed open")
            .unwrap();
    }
    timeout(deadline, closed_by_server(&mut idle))
        .await
        .expect("an idle keep-alive connection stayed open");
    eprintln!("all slow connections closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn beyond_the_connection_cap_a_client_waits_for_a_free_slot() {
    let app = spawn_app_with(&[
        "--max-connections",
        "20",
        "--header-read-timeout-seconds",
        "1",
    ])
    .await;
    let silent = open_silent(&app, 20).await;
    // Every slot is held: the next client's request is not served yet...
    let mut next = TcpStream::connect(address(&app)).await.unwrap();
    next.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early = timeout(Duration::from_millis(300), next.read_to_end(&mut answer)).await;
    assert!(early.is_err(), "served beyond the cap: {answer:?}");
    // ...and it is once the head timeout has closed the silent ones.
    timeout(Duration::from_secs(10), next.read_to_end(&mut answer))
        .await
        .expect("never served")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"), "{answer:?}");
    drop(silent);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_and_closes_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("t.db").display());
    let data_dir = dir.path().display().to_string();
    let config = crate::helpers::config_from(&[
        "introgy",
        "--port",
        "0",
        "--data-dir",
        &data_dir,
        "--database-url",
        &db,
        "--bcrypt-cost",
        "4",
        "--jwt-secret-key",
        crate::helpers::SECRET,
    ]);
    let app = {
        let _guard = crate::helpers::BUILD_LOCK.lock().await;
        introgy::startup::Application::build_with_transport(
            config,
            std::sync::Arc::new(introgy::email::MemoryTransport::default()),
        )
        .await
        .unwrap()
    };
    let address = format!("127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        stopped.await.ok();
    }));

    // An idle keep-alive connection and a request whose body is half sent.
    let mut idle = TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    let body = br#"{"email": "a@example.com", "password": "correct horse battery"}"#;
    let mut in_flight = TcpStream::connect(&address).await.unwrap();
    in_flight
        .write_all(
            format!(
                "POST /auth/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nexpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // hyper sends "100 Continue" when the handler starts reading the body: from here
    // on the request is in flight.
    let mut continue_line = [0u8; 25];
    in_flight.read_exact(&mut continue_line).await.unwrap();
    assert_eq!(&continue_line, b"HTTP/1.1 100 Continue\r\n\r\n");
    stop.send(()).unwrap();
    // The idle connection is closed at once; the in-flight request completes.
    timeout(Duration::from_secs(5), closed_by_server(&mut idle))
        .await
        .expect("idle connection kept open during shutdown");
    in_flight.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    timeout(Duration::from_secs(10), in_flight.read_to_end(&mut answer))
        .await
        .expect("in-flight request not finished")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 401 Unauthorized"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    timeout(Duration::from_secs(10), server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
    // And nothing is accepted any more.
    assert!(TcpStream::connect(&address).await.is_err());
}
