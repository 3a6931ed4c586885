//! A TCP proxy that injects network faults between a client and a server on
//! loopback: cut the connection right after a request went through (so the
//! server ran it and the client never sees the reply), or block everything
//! for a while (a partition: the server keeps its data, nobody reaches it).
//!
//! Plain threads, no runtime, like the rest of the harness. Point the client
//! at [`FaultProxy::port`] instead of the server's port.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use crate::HarnessError;

#[derive(Default)]
struct Rules {
    /// Cut the next connection whose request contains this, after forwarding it.
    cut_after: Option<Vec<u8>>,
    /// Refuse and close everything.
    blocked: bool,
    /// Open connections (client side, server side), to close them on `block`.
    open: Vec<(TcpStream, TcpStream)>,
}

struct Shared {
    rules: Mutex<Rules>,
    cuts: AtomicUsize,
    accepted: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fault-injecting proxy to `127.0.0.1:<target>` (see the module docs).
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target_port`.
    pub fn start(target_port: u16) -> Result<FaultProxy, HarnessError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("binding the fault proxy", e))?;
        let port = listener.local_addr().map_err(|e| HarnessError::io("reading the proxy's port", e))?.port();
        let shared = Arc::new(Shared {
            rules: Mutex::default(),
            cuts: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, target_port, s));
        Ok(FaultProxy { port, shared })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/<db>` through the proxy.
    pub fn redis_url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Arms a one-shot fault: the next request that contains `pattern` is
    /// forwarded to the server, then its connection is closed on both sides
    /// before any reply reaches the client.
    pub fn cut_reply_after(&self, pattern: &[u8]) {
        self.shared.rules().cut_after = Some(pattern.to_vec());
    }

    /// How many connections were cut by [`FaultProxy::cut_reply_after`].
    pub fn cuts(&self) -> usize {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (reconnects show up here).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Closes every open connection and refuses new ones until
    /// [`FaultProxy::unblock`]: the server is unreachable, its data intact.
    pub fn block(&self) {
        let mut rules = self.shared.rules();
        rules.blocked = true;
        for (a, b) in rules.open.drain(..) {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn unblock(&self) {
        self.shared.rules().blocked = false;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.block();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(listener: TcpListener, target_port: u16, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.rules().blocked {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) =
            (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone())
        else {
            continue;
        };
        shared.rules().open.push((c3, s3));
        let cut = Arc::new(AtomicBool::new(false));
        let (sh, cut_up) = (shared.clone(), cut.clone());
        thread::spawn(move || pump_up(client, server, sh, cut_up));
        let sh = shared.clone();
        thread::spawn(move || pump_down(s2, c2, sh, cut));
    }
}

/// Client to server; arms the cut when a request matches (the other
/// direction then closes the connection when the reply comes, so the
/// server has run the request before the client sees the connection go).
fn pump_up(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        {
            let mut rules = shared.rules();
            if let Some(pattern) = &rules.cut_after {
                if !pattern.is_empty() && chunk.windows(pattern.len()).any(|w| w == pattern.as_slice()) {
                    rules.cut_after = None;
                    cut.store(true, Ordering::SeqCst);
                }
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Server to client; once the connection is cut, the next reply is dropped
/// and the connection closed.
fn pump_down(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
