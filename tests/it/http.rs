//! A small HTTP/1.1 file server on 127.0.0.1 for the tests, with faults to
//! inject per path. It logs every request (path and Range header).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Fault {
    /// The first `n` answers send the full Content-Length but only half the
    /// body, then close.
    Truncate(u32),
    /// The first `n` answers reset the connection (RST) mid-body.
    Reset(u32),
    /// The first `n` answers are `500 Internal Server Error`.
    Fail(u32),
    /// Bodies go out `chunk` bytes at a time with `delay` between.
    Drip { chunk: usize, delay: Duration },
    /// Another file's bytes (one byte flipped).
    WrongBytes,
    /// `Range` is ignored: always 200 with the whole file.
    NoRange,
}

#[derive(Debug, Clone)]
pub struct Req {
    pub path: String,
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, Vec<Fault>>,
    log: Vec<Req>,
}

#[derive(Clone)]
pub struct Server {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        Server { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.trim_start_matches('/').to_string(), bytes);
    }

    pub fn fault(&self, path: &str, f: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .entry(path.trim_start_matches('/').to_string())
            .or_default()
            .push(f);
    }

    pub fn requests(&self, path: &str) -> Vec<Req> {
        let p = path.trim_start_matches('/');
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|r| r.path == p)
            .cloned()
            .collect()
    }

    pub fn total_requests(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }
}

/// The path and `Range` header of a request.
fn read_request(conn: &TcpStream) -> std::io::Result<(String, Option<String>)> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    Ok((path, range))
}

/// Logs the request and decides, consuming one use of counted faults: the
/// file and the faults active for this answer.
fn decide(st: &Arc<Mutex<State>>, req: Req) -> (Option<Vec<u8>>, Vec<Fault>) {
    let mut s = st.lock().unwrap();
    let path = req.path.clone();
    s.log.push(req);
    let body = s.files.get(&path).cloned();
    let mut active = Vec::new();
    if let Some(fs) = s.faults.get_mut(&path) {
        for f in fs.iter_mut() {
            match f {
                Fault::Truncate(n) | Fault::Reset(n) | Fault::Fail(n) => {
                    if *n > 0 {
                        *n -= 1;
                        active.push(f.clone());
                    }
                }
                other => active.push(other.clone()),
            }
        }
    }
    (body, active)
}

fn serve(conn: TcpStream, st: &Arc<Mutex<State>>) -> std::io::Result<()> {
    let (path, range) = read_request(&conn)?;
    let (body, faults) = decide(
        st,
        Req {
            path,
            range: range.clone(),
        },
    );
    let mut out = conn;
    let Some(mut body) = body else {
        return out.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    };
    if faults.iter().any(|f| matches!(f, Fault::Fail(_))) {
        return out.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    if faults.iter().any(|f| matches!(f, Fault::WrongBytes)) {
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
    }
    let no_range = faults.iter().any(|f| matches!(f, Fault::NoRange));
    let start = match (&range, no_range) {
        (Some(r), false) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok()),
        _ => None,
    };
    answer(out, &body, start, &faults)
}

/// The answer to a request for `body` from `start` (a `Range`), with faults.
fn answer(
    mut out: TcpStream,
    body: &[u8],
    start: Option<usize>,
    faults: &[Fault],
) -> std::io::Result<()> {
    let total = body.len();
    let (status, slice, extra) = match start {
        Some(s) if s < total => (
            "206 Partial Content",
            &body[s..],
            format!("Content-Range: bytes {s}-{}/{total}\r\n", total - 1),
        ),
        Some(_) => (
            "416 Range Not Satisfiable",
            &body[0..0],
            format!("Content-Range: bytes */{total}\r\n"),
        ),
        None => ("200 OK", body, String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n",
        slice.len()
    );
    out.write_all(head.as_bytes())?;
    if faults.iter().any(|f| matches!(f, Fault::Truncate(_))) {
        out.write_all(&slice[..slice.len() / 2])?;
        out.flush()?;
        return Ok(());
    }
    if faults.iter().any(|f| matches!(f, Fault::Reset(_))) {
        out.write_all(&slice[..slice.len() / 2])?;
        out.flush()?;
        let sock = socket2::SockRef::from(&out);
        sock.set_linger(Some(Duration::ZERO))?;
        return Ok(());
    }
    if let Some(Fault::Drip { chunk, delay }) =
        faults.iter().find(|f| matches!(f, Fault::Drip { .. }))
    {
        for c in slice.chunks(*chunk) {
            out.write_all(c)?;
            out.flush()?;
            std::thread::sleep(*delay);
        }
        return Ok(());
    }
    out.write_all(slice)
}
