//! A small HTTP/1.1 client on hyper: one keep-alive connection per [`Client`]. Used by the CLI (to
//! call the admin API), the bench (to load the server over real loopback HTTP) and the tests.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
}

/// `http://host:port[/]` → `host:port`. Only plain HTTP (the counter listens on a private address
/// or behind a TLS-terminating proxy).
pub fn authority(base_url: &str) -> Result<String, String> {
    let rest = base_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{base_url}`: the counter URL must start with http:// (e.g. http://127.0.0.1:8787)"))?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!("`{base_url}`: give only scheme, host and port (e.g. http://127.0.0.1:8787)"));
    }
    Ok(host.to_owned())
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the counter answered {} with a body that is not JSON ({e}): {}", self.status, self.text()))
    }
}

impl Client {
    /// Opens a connection to `base_url` (`http://host:port`).
    pub async fn connect(base_url: &str) -> Result<Client, String> {
        let authority = authority(base_url)?;
        let stream = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("cannot connect to the counter at {authority}: {e}; is `tollgate-counter serve` running there?"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Client { sender, authority })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(&mut self, method: Method, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Result<Answer, String> {
        self.send_with(method, path, token, &[], body).await
    }

    /// [`Client::send`] with extra headers (e.g. a webhook's signature).
    pub async fn send_with(&mut self, method: Method, path: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Result<Answer, String> {
        let mut builder = Request::builder().method(method).uri(path).header(hyper::header::HOST, &self.authority);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(token) = token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| format!("bad request: {e}"))?;
        self.sender.ready().await.map_err(|e| format!("connection to {} lost: {e}", self.authority))?;
        let response = self.sender.send_request(request).await.map_err(|e| format!("request to {} failed: {e}", self.authority))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
        Ok(Answer { status, body })
    }

    pub async fn get(&mut self, path: &str, token: Option<&str>) -> Result<Answer, String> {
        self.send(Method::GET, path, token, None).await
    }

    pub async fn post_json(&mut self, path: &str, token: Option<&str>, body: &impl serde::Serialize) -> Result<Answer, String> {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        self.send(Method::POST, path, token, Some(bytes)).await
    }
}
