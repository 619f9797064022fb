//! A small HTTP/1.1 server: one thread per connection, keep-alive, bodies by `content-length`
//! or `transfer-encoding: chunked`.
//!
//! Why not hyper: the mock serves a handful of loopback connections (Envoy's upstream pool, a
//! test client), and a blocking thread per connection is both the simplest thing and fast
//! enough to never be the bottleneck in `make bench` (one read and one write syscall per request
//! in the common case, buffers reused across the requests of a connection).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Largest request head (request line + headers) we accept.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body we accept (the filter's limit is far lower; this only protects the mock).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One parsed request. Header names are lower-cased; order and duplicates are kept.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string (after `?`), or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }

    /// The first value of a header (name given lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// How the response body is framed and paced on the wire.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// The body, as the pieces it is produced in (SSE: one piece per event).
    pub pieces: Vec<Vec<u8>>,
    /// Chunked transfer encoding (streams) or content-length (JSON).
    pub chunked: bool,
    /// Write (and flush) each piece on its own instead of coalescing the response into one write.
    pub write_each_piece: bool,
    /// Pause between pieces (only with `write_each_piece`).
    pub piece_delay: Duration,
    /// After sending the pieces, drop the connection instead of finishing the message.
    pub cut: bool,
}

/// What a handler returns for a request.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request) -> Response;
}

/// Accepts connections forever, one thread each.
pub fn serve(listener: TcpListener, handler: Arc<dyn Handler>) -> io::Result<()> {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mock-llm: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let spawned = std::thread::Builder::new()
            .name("mock-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &*handler) {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                    ) {
                        eprintln!("mock-llm: connection error: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("mock-llm: cannot spawn a connection thread: {e}");
        }
    }
    Ok(())
}

fn serve_connection(stream: TcpStream, handler: &dyn Handler) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut line = Vec::with_capacity(256);
    loop {
        let mut req = Request::default();
        let Some(keep_alive) = read_request(&mut reader, &mut writer, &mut line, &mut req)? else {
            return Ok(()); // clean close between requests
        };
        let resp = handler.handle(&req);
        out.clear();
        let finished = write_response(&mut writer, &mut out, &resp, keep_alive)?;
        if !finished {
            // A cut stream: close without the terminating chunk so the peer sees a reset.
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

fn bad_request(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request into `req`. Returns `None` on a clean EOF before a request starts,
/// otherwise whether the connection stays open afterwards.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    line: &mut Vec<u8>,
    req: &mut Request,
) -> io::Result<Option<bool>> {
    let mut head_bytes = 0usize;
    // Request line (skip stray empty lines between requests, as RFC 9112 allows).
    loop {
        line.clear();
        if reader.read_until(b'\n', line)? == 0 {
            return Ok(None);
        }
        head_bytes += line.len();
        if head_bytes > MAX_HEAD_BYTES {
            return Err(bad_request("request head too large"));
        }
        if !trim_crlf(line).is_empty() {
            break;
        }
    }
    let request_line = std::str::from_utf8(trim_crlf(line)).map_err(|_| bad_request("request line is not UTF-8"))?;
    let mut parts = request_line.split(' ');
    req.method = parts.next().unwrap_or("").to_string();
    req.target = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("HTTP/1.1");
    let mut keep_alive = version != "HTTP/1.0";

    loop {
        line.clear();
        if reader.read_until(b'\n', line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head_bytes += line.len();
        if head_bytes > MAX_HEAD_BYTES {
            return Err(bad_request("request head too large"));
        }
        let l = trim_crlf(line);
        if l.is_empty() {
            break;
        }
        let Some(colon) = l.iter().position(|b| *b == b':') else {
            return Err(bad_request("header line without a colon"));
        };
        let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&l[colon + 1..]).trim().to_string();
        req.headers.push((name, value));
    }

    let mut chunked = false;
    let mut content_length = None;
    let mut expect_continue = false;
    for (n, v) in &req.headers {
        match n.as_str() {
            "connection" => {
                if v.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if v.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "content-length" => {
                content_length = Some(v.parse::<usize>().map_err(|_| bad_request("bad content-length"))?)
            }
            "expect" => expect_continue = v.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    if expect_continue {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if chunked {
        read_chunked_body(reader, line, &mut req.body)?;
    } else if let Some(len) = content_length {
        if len > MAX_BODY_BYTES {
            return Err(bad_request("request body too large"));
        }
        req.body.resize(len, 0);
        reader.read_exact(&mut req.body)?;
    }
    Ok(Some(keep_alive))
}

fn read_chunked_body(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>, body: &mut Vec<u8>) -> io::Result<()> {
    loop {
        line.clear();
        reader.read_until(b'\n', line)?;
        let size_text = std::str::from_utf8(trim_crlf(line)).map_err(|_| bad_request("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad_request("bad chunk size"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if reader.read_until(b'\n', line)? == 0 || trim_crlf(line).is_empty() {
                    return Ok(());
                }
            }
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(bad_request("request body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        reader.read_until(b'\n', line)?; // CRLF after the chunk data
    }
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [rest @ .., b'\r' | b'\n'] = l {
        l = rest;
    }
    l
}

/// Writes the response. Returns false when the response was cut on purpose.
fn write_response(w: &mut TcpStream, out: &mut Vec<u8>, resp: &Response, keep_alive: bool) -> io::Result<bool> {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(resp.status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in &resp.headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if resp.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else {
        let len: usize = resp.pieces.iter().map(Vec::len).sum();
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let paced = resp.write_each_piece || resp.cut;
    for (i, piece) in resp.pieces.iter().enumerate() {
        if piece.is_empty() {
            continue;
        }
        if resp.chunked {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(piece);
        }
        if paced {
            w.write_all(out)?;
            w.flush()?;
            out.clear();
            if i + 1 < resp.pieces.len() && !resp.piece_delay.is_zero() {
                std::thread::sleep(resp.piece_delay);
            }
        }
    }
    if resp.cut {
        w.write_all(out)?;
        w.flush()?;
        return Ok(false);
    }
    if resp.chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    w.write_all(out)?;
    w.flush()?;
    Ok(true)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Mock Status",
    }
}
