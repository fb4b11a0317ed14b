//! A small HTTP/1.1 file server on 127.0.0.1 for download tests: `Range: bytes=N-` is honoured
//! (206 with `Content-Range`, 416 past the end), missing paths are 404, files can be replaced
//! while it runs, and chosen responses can be cut off half-way to simulate a dropped link, or
//! stall after their first bytes to simulate a link that hangs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    /// Responses still to cut after half their body.
    cut: usize,
    /// Responses still to stall after their first bytes (the connection stays open, silent).
    stall: usize,
    /// Answer every request with the whole file, like a server without range support.
    ignore_ranges: bool,
    /// Request lines and their `Range` header, in arrival order.
    requests: Vec<(String, Option<u64>)>,
    /// The `Authorization` header of each request, in arrival order.
    authorizations: Vec<Option<String>>,
}

/// See the module documentation.
pub struct HttpServer {
    base: String,
    state: Arc<Mutex<State>>,
    hits: Arc<AtomicUsize>,
}

impl HttpServer {
    /// Starts serving (no files yet) on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (state.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                h.fetch_add(1, Ordering::SeqCst);
                // One thread per connection, so a stalled response does not block the next.
                let s = s.clone();
                std::thread::spawn(move || respond(stream, &s));
            }
        });
        Self { base, state, hits }
    }

    /// A server already serving the golden file `golden` (e.g. `r50x1.weights.npz`) at
    /// `/<path>`, as a release would.
    pub fn serving_golden(path: &str, golden: &str) -> Self {
        let server = Self::start();
        let body = std::fs::read(crate::golden_file(golden)).expect("golden file readable");
        server.put(path, body);
        server
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Serves `body` at `/<path>` (replacing what was there).
    pub fn put(&self, path: &str, body: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        state
            .files
            .insert(path.trim_start_matches('/').to_string(), body);
    }

    /// Cuts the next `n` responses after half of their body (the length header stays whole).
    pub fn cut_next(&self, n: usize) {
        self.state.lock().unwrap().cut = n;
    }

    /// Stalls the next `n` responses after [`STALL_AFTER`] bytes of their body: the connection
    /// stays open and silent for a minute, as a hung server or a dead link behaves.
    pub fn stall_next(&self, n: usize) {
        self.state.lock().unwrap().stall = n;
    }

    /// From now on, answer `Range` requests with the whole file (200), as servers without
    /// range support do.
    pub fn ignore_ranges(&self) {
        self.state.lock().unwrap().ignore_ranges = true;
    }

    /// Connections served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The `Authorization` headers received so far, one per request (`None`: without).
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.state.lock().unwrap().authorizations.clone()
    }

    /// The paths requested so far, in order (with their query strings).
    pub fn paths(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .map(|(line, _)| line.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect()
    }

    /// The byte offsets of the `Range` requests received so far (`None`: a plain GET).
    pub fn ranges(&self) -> Vec<Option<u64>> {
        let state = self.state.lock().unwrap();
        state.requests.iter().map(|(_, r)| *r).collect()
    }
}

fn respond(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut from = None;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
            from = v.trim().trim_end_matches('-').parse::<u64>().ok();
        }
        if line.to_ascii_lowercase().starts_with("authorization:") {
            authorization = Some(line["authorization:".len()..].trim().to_string());
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let (body, cut, stall) = {
        let mut s = state.lock().unwrap();
        s.requests.push((request_line.trim().to_string(), from));
        s.authorizations.push(authorization);
        let body = s.files.get(&path).cloned();
        let cut = body.is_some() && s.cut > 0;
        if cut {
            s.cut -= 1;
        }
        let stall = body.is_some() && !cut && s.stall > 0;
        if stall {
            s.stall -= 1;
        }
        if s.ignore_ranges {
            from = None;
        }
        (body, cut, stall)
    };
    let Some(body) = body else {
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .ok();
        return;
    };
    let total = body.len();
    let (head, rest) = match from {
        Some(s) if s as usize >= total => {
            let head = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            (head, &body[..0])
        }
        Some(s) => {
            let s = s as usize;
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                total - 1,
                total - s
            );
            (head, &body[s..])
        }
        None => (
            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"),
            &body[..],
        ),
    };
    stream.write_all(head.as_bytes()).ok();
    if stall {
        stream.write_all(&rest[..rest.len().min(STALL_AFTER)]).ok();
        stream.flush().ok();
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    let sent = if cut { &rest[..rest.len() / 2] } else { rest };
    stream.write_all(sent).ok();
    stream.flush().ok();
    stream.shutdown(Shutdown::Both).ok();
}

/// Body bytes a stalled response sends before it goes silent.
pub const STALL_AFTER: usize = 1000;
