//! A webhook receiver on 127.0.0.1: records every request (headers and raw body) and answers
//! with a status the test sets (200 by default, e.g. 503 to play a receiver that is down).

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub event: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// The status this receiver answered.
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub struct Receiver {
    pub url: String,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = Arc::new(AtomicU16::new(200));
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (s, g) = (Arc::clone(&status), Arc::clone(&got));
        let app = Router::new().route(
            "/{*path}",
            post(move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let (s, g) = (Arc::clone(&s), Arc::clone(&g));
                async move {
                    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let answered = s.load(Ordering::SeqCst);
                    g.lock().unwrap().push(Received {
                        path: uri.path().to_owned(),
                        event: h("x-tollgate-event"),
                        timestamp: h("x-tollgate-timestamp"),
                        signature: h("x-tollgate-signature"),
                        body: body.to_vec(),
                        answered,
                    });
                    StatusCode::from_u16(answered).unwrap()
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, status, got, task }
    }

    /// What the receiver answers from now on.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Requests answered 2xx (deliveries that counted).
    pub fn delivered(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| (200..300).contains(&r.answered)).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
