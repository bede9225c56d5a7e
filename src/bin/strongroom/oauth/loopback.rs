//! The loopback listener of `oauth start --listen`: binds the registered redirect URI's port
//! on 127.0.0.1 (and ::1), and waits for the provider's redirect carrying the login's code.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::super::*;

/// What the provider's redirect carried.
pub(super) struct Callback {
    pub(super) code: Option<SecretString>,
    pub(super) state: Option<SecretString>,
    /// Whether `state` is the login's own.
    pub(super) state_matches: bool,
    pub(super) error: Option<String>,
    pub(super) error_description: Option<String>,
}

/// The loopback listener of `oauth start --listen`.
pub(super) struct Loopback {
    /// The redirect URI, as given.
    pub(super) uri: String,
    /// Its path: the one the redirect must reach.
    pub(super) path: String,
    pub(super) listeners: Vec<TcpListener>,
}

/// The most a redirect request may be (its head; there is no body).
const MAX_REQUEST: usize = 16 * 1024;
/// How long one connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Loopback {
    /// Checks that `uri` is a loopback http URL and binds its port (127.0.0.1, and ::1 too
    /// for `localhost` when it can).
    pub(super) async fn bind(uri: &str) -> Result<Loopback, Error> {
        let refuse = |why: &str| {
            invalid(
                "--redirect-uri",
                &format!(
                    "--listen needs a loopback http redirect URI (http://127.0.0.1:PORT/PATH or \
                     http://localhost:PORT/PATH); `{}` {why}",
                    one_line(uri)
                ),
            )
        };
        let url = url::Url::parse(uri).map_err(|_| refuse("is not a URL"))?;
        if url.scheme() != "http" {
            return Err(refuse("is not http"));
        }
        let host = url.host_str().unwrap_or_default();
        if host != "127.0.0.1" && host != "localhost" {
            return Err(refuse("is not on 127.0.0.1 or localhost"));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("has a fragment or user information"));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let first = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            invalid(
                "--redirect-uri",
                &format!("cannot listen on 127.0.0.1:{port}: {e}"),
            )
        })?;
        let mut listeners = vec![first];
        if host == "localhost" {
            // A browser may try ::1 first for `localhost`; best effort.
            if let Ok(v6) = TcpListener::bind(("::1", port)).await {
                listeners.push(v6);
            }
        }
        Ok(Loopback {
            uri: uri.to_string(),
            path: url.path().to_string(),
            listeners,
        })
    }

    /// Waits for the GET of the redirect path that carries `expected`, the login's state,
    /// and answers it (200 when it also carries a code; 400 for an error); a request of
    /// that path with another state or none gets a 400, and other requests (a browser's
    /// `/favicon.ico`) a 404, and the wait goes on.
    pub(super) async fn callback(&self, expected: &SecretString) -> Result<Callback, Error> {
        loop {
            let (mut socket, _) = self.accept().await?;
            let Ok(Ok(Some(head))) =
                tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut socket)).await
            else {
                let _ = answer(&mut socket, 400, "Bad request.").await;
                continue;
            };
            let text = String::from_utf8_lossy(&head);
            let mut words = text.lines().next().unwrap_or_default().split(' ');
            let (method, target) = (words.next().unwrap_or_default(), words.next());
            let target = target.unwrap_or_default();
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            if method != "GET" || path != self.path {
                let _ = answer(&mut socket, 404, "Not found.").await;
                continue;
            }
            let mut callback = Callback {
                code: None,
                state: None,
                state_matches: false,
                error: None,
                error_description: None,
            };
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                match &*k {
                    "code" => callback.code = Some(SecretString::from(v.into_owned())),
                    "state" => callback.state = Some(SecretString::from(v.into_owned())),
                    "error" => callback.error = Some(v.into_owned()),
                    "error_description" => callback.error_description = Some(v.into_owned()),
                    _ => {}
                }
            }
            drop(text);
            drop(head);
            callback.state_matches = callback.state.as_ref().is_some_and(|s| {
                use subtle::ConstantTimeEq;
                bool::from(
                    s.expose_secret()
                        .as_bytes()
                        .ct_eq(expected.expose_secret().as_bytes()),
                )
            });
            // Only the provider's answer to this login counts: a request without this
            // login's state (any page can make a browser send one) is refused and the wait
            // goes on, error callbacks included.
            if !callback.state_matches {
                let _ = answer(
                    &mut socket,
                    400,
                    "This is not the answer to the login strongroom is waiting for.",
                )
                .await;
                continue;
            }
            let complete = callback.error.is_none() && callback.code.is_some();
            let _ = if complete {
                answer(
                    &mut socket,
                    200,
                    "strongroom received the login. You can close this window and return to \
                     the terminal.",
                )
                .await
            } else {
                answer(
                    &mut socket,
                    400,
                    "The login was not completed (the terminal says why). You can close this \
                     window.",
                )
                .await
            };
            return Ok(callback);
        }
    }

    async fn accept(&self) -> Result<(TcpStream, std::net::SocketAddr), Error> {
        let io = |e: std::io::Error| Error::Io {
            path: self.uri.clone(),
            source: e,
        };
        match self.listeners.as_slice() {
            [one] => one.accept().await.map_err(io),
            [first, second, ..] => tokio::select! {
                got = first.accept() => got.map_err(io),
                got = second.accept() => got.map_err(io),
            },
            [] => std::future::pending().await,
        }
    }
}

/// Reads a request's head (up to the blank line), at most [`MAX_REQUEST`] bytes; `None`
/// when it is longer or the connection ends first. Wiped when dropped: it holds the code.
async fn read_head(socket: &mut TcpStream) -> std::io::Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(MAX_REQUEST));
    let mut chunk = zeroize::Zeroizing::new([0u8; 2048]);
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf));
        }
        let n = socket.read(&mut chunk[..]).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Answers a small HTML page and closes the connection.
async fn answer(socket: &mut TcpStream, status: u16, message: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>strongroom</title></head>\
         <body><p>{message}</p></body></html>\n"
    );
    let reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(reply.as_bytes()).await?;
    socket.shutdown().await
}
