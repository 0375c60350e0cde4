//! The `/metrics` endpoint: a small HTTP/1.1 server on a thread of its own.
//!
//! A scraper needs one thing: `GET /metrics` answered with the exposition text. That is served
//! here by hand rather than with an HTTP crate (hyper needs an async runtime the daemon does
//! not have; the blocking ones bring a dependency tree for what is a request line, a few
//! headers and one response): one connection at a time, `Connection: close`, a bounded request
//! (8 KiB of head, no body) and timeouts, so that a slow or hostile client holds the thread
//! for seconds at most and can never make it allocate without bound. Nothing is computed until
//! a request comes: without scrapes the endpoint costs a thread asleep in `accept`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::exposition::CONTENT_TYPE;

/// The longest request head taken.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request, and to take the response.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// The metrics; `head`: without the body (HEAD).
    Metrics { head: bool },
    /// Anything else: the status and a line of text.
    Error(u16, &'static str),
}

/// Reads a request's head and says what it asks for.
fn parse(head: &[u8]) -> Ask {
    let Ok(text) = std::str::from_utf8(head) else {
        return Ask::Error(400, "Bad Request");
    };
    let mut parts = text.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ask::Error(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Ask::Error(505, "HTTP Version Not Supported");
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Ask::Metrics { head: false },
        ("HEAD", "/metrics") => Ask::Metrics { head: true },
        (_, "/metrics") => Ask::Error(405, "Method Not Allowed"),
        _ => Ask::Error(404, "Not Found"),
    }
}

/// Reads until the end of the head (an empty line), at most [`MAX_HEAD`] bytes.
fn read_head(conn: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(Some(Vec::new())); // too long: answered as a bad request
        }
    }
}

fn respond(conn: &mut TcpStream, status: u16, reason: &str, kind: &str, body: &[u8], head: bool) {
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(header.as_bytes());
    if !head {
        let _ = conn.write_all(body);
    }
}

/// Serves one connection: `page` makes the metrics (or says why it cannot).
fn serve_one(mut conn: TcpStream, page: &dyn Fn() -> Result<String, String>) {
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    let ask = match read_head(&mut conn) {
        Ok(Some(head)) => parse(&head),
        _ => return,
    };
    let text = "text/plain; charset=utf-8";
    match ask {
        Ask::Metrics { head } => match page() {
            Ok(body) => respond(&mut conn, 200, "OK", CONTENT_TYPE, body.as_bytes(), head),
            Err(why) => {
                let body = format!("{why}\n");
                respond(
                    &mut conn,
                    503,
                    "Service Unavailable",
                    text,
                    body.as_bytes(),
                    head,
                )
            }
        },
        Ask::Error(status, reason) => {
            let body = format!("{status} {reason}: this server has /metrics only\n");
            respond(&mut conn, status, reason, text, body.as_bytes(), false)
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

/// Binds the endpoint's listener. `SO_REUSEPORT`: a daemon that takes over from another
/// (`run --takeover`) listens on the same address while the old one still serves it.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, socket::Backlog::new(16).map_err(io::Error::from)?)?;
    Ok(TcpListener::from(fd))
}

/// Serves `listener` until it fails, one connection at a time.
pub fn serve(listener: TcpListener, page: impl Fn() -> Result<String, String>) {
    for conn in listener.incoming() {
        match conn {
            Ok(conn) => serve_one(conn, &page),
            // Out of descriptors or the like: do not spin.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed() {
        let ask = |s: &str| parse(s.as_bytes());
        assert_eq!(
            ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ask::Metrics { head: false }
        );
        assert_eq!(
            ask("GET /metrics?name[]=x HTTP/1.0\r\n\r\n"),
            Ask::Metrics { head: false }
        );
        assert_eq!(
            ask("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Ask::Metrics { head: true }
        );
        assert_eq!(
            ask("POST /metrics HTTP/1.1\r\n\r\n"),
            Ask::Error(405, "Method Not Allowed")
        );
        assert_eq!(ask("GET / HTTP/1.1\r\n\r\n"), Ask::Error(404, "Not Found"));
        assert_eq!(ask("GET /metrics SPDY/3\r\n\r\n").status(), 505);
        for bad in [
            "",
            "GET\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "\u{0}\u{1}",
        ] {
            assert_eq!(ask(bad).status(), 400, "{bad:?}");
        }
        assert_eq!(parse(&[0xff, 0xfe]).status(), 400);
    }

    impl Ask {
        fn status(&self) -> u16 {
            match self {
                Ask::Metrics { .. } => 200,
                Ask::Error(s, _) => *s,
            }
        }
    }

    /// A server on the test's loopback, and a client's raw exchange with it.
    fn exchange(request: &[u8], page: fn() -> Result<String, String>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            serve_one(conn, &page);
        });
        let mut client = TcpStream::connect(addr).unwrap();
        client.write_all(request).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        server.join().unwrap();
        answer
    }

    #[test]
    fn metrics_are_served_with_their_content_type_and_length() {
        let answer = exchange(b"GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n", || {
            Ok("m 1\n".into())
        });
        assert_eq!(
            answer,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: 4\r\nConnection: close\r\n\r\nm 1\n"
        );
        let head = exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n", || Ok("m 1\n".into()));
        assert!(
            head.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"),
            "{head}"
        );
    }

    #[test]
    fn errors_are_answered_and_never_compute_the_page() {
        let never = || panic!("the page was computed");
        let answer = exchange(b"GET /other HTTP/1.1\r\n\r\n", never);
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let long = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 10_000]].concat();
        let answer = exchange(&long, never);
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        let answer = exchange(b"GET /metrics HTTP/1.1\r\n\r\n", || Err("stopping".into()));
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.ends_with("\r\n\r\nstopping\n"), "{answer}");
    }
}
