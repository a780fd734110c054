#![allow(dead_code)] // each test binary uses a subset
//! A loopback TCP proxy for fault injection: the mount connects through it,
//! and a test can cut every connection (and refuse new ones) while other
//! clients keep talking to the server directly, then restore it. It also
//! counts the requests that pass towards the server, by ZooKeeper op code,
//! from the frames on the wire (independent of the mount's own counter),
//! and can hold back the first request of one op code (and everything the
//! client sends after it) until released.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// While set, bytes are read and dropped: connections stay open but
    /// nothing gets through (a blackholed server, a silent network).
    silent: Arc<AtomicBool>,
    /// While set, the server's answers and events are dropped (requests
    /// still reach it): a write is applied and its answer lost.
    mute: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    requests: Requests,
    hold: Hold,
    /// Connections accepted and passed on (refused ones not counted).
    accepted: Arc<AtomicU64>,
}

/// Holding back requests: the op code to stop at, and whether a request
/// of it is being held now.
#[derive(Default)]
struct HoldState {
    op: Option<i32>,
    holding: bool,
}

type Hold = Arc<Mutex<HoldState>>;

/// Requests seen on the way to the server, by op code.
type Requests = Arc<Mutex<BTreeMap<i32, u64>>>;

/// ZooKeeper op codes the tests name (`ZooDefs.OpCode`).
pub mod op {
    pub const SYNC: i32 = 9;
    pub const PING: i32 = 11;
    pub const REMOVE_WATCHES: i32 = 18;
    pub const MULTI_READ: i32 = 22;
    pub const SET_WATCHES: i32 = 101;
    pub const SET_WATCHES2: i32 = 105;
    pub const ADD_WATCH: i32 = 106;
}

impl Proxy {
    /// Listen on a free loopback port, forwarding to `upstream` ("127.0.0.1:PORT").
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let silent = Arc::new(AtomicBool::new(false));
        let mute = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let requests: Requests = Arc::default();
        let hold: Hold = Arc::default();
        let accepted: Arc<AtomicU64> = Arc::default();
        let upstream = upstream.to_string();
        {
            let (up, stop, streams, silent, mute, requests, hold, accepted) = (
                up.clone(),
                stop.clone(),
                streams.clone(),
                silent.clone(),
                mute.clone(),
                requests.clone(),
                hold.clone(),
                accepted.clone(),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if !up.load(Ordering::SeqCst) {
                                let _ = client.shutdown(Shutdown::Both);
                                continue;
                            }
                            accepted.fetch_add(1, Ordering::SeqCst);
                            let _ = client.set_nonblocking(false);
                            let Ok(server) = TcpStream::connect(&upstream) else {
                                continue;
                            };
                            let mut list = streams.lock().expect("streams");
                            for s in [&client, &server] {
                                if let Ok(c) = s.try_clone() {
                                    list.push(c);
                                }
                            }
                            drop(list);
                            pipe(
                                &client,
                                &server,
                                std::slice::from_ref(&silent),
                                Some((requests.clone(), hold.clone())),
                            );
                            pipe(&server, &client, &[silent.clone(), mute.clone()], None);
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Proxy {
            port,
            up,
            silent,
            mute,
            streams,
            stop,
            requests,
            hold,
            accepted,
        }
    }

    /// Connections accepted so far (refused ones not counted).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Hold back the next request of op code `op` that a client sends, and
    /// everything it sends after it (answers and events towards the client
    /// still flow), until [`Self::release`].
    pub fn hold_from(&self, op: i32) {
        self.hold.lock().expect("hold").op = Some(op);
    }

    /// Whether a request is being held back now.
    pub fn holding(&self) -> bool {
        self.hold.lock().expect("hold").holding
    }

    /// Let what is held through and stop holding.
    pub fn release(&self) {
        self.hold.lock().expect("hold").op = None;
    }

    /// Requests forwarded to the server so far, by op code (connection
    /// handshakes not included: they have no op code).
    pub fn requests(&self) -> BTreeMap<i32, u64> {
        self.requests.lock().expect("requests").clone()
    }

    /// Requests forwarded since `before` (a [`Self::requests`] snapshot),
    /// by op code, zero counts left out.
    pub fn requests_since(&self, before: &BTreeMap<i32, u64>) -> BTreeMap<i32, u64> {
        self.requests()
            .into_iter()
            .map(|(code, n)| (code, n - before.get(&code).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drop every connection and refuse new ones until `restore`.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.streams.lock().expect("streams").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
        self.silent.store(false, Ordering::SeqCst);
        self.mute.store(false, Ordering::SeqCst);
    }

    /// Drop what the server sends (answers, events, pings' answers) but pass
    /// requests on, until a `cut` and `restore` (dropped bytes leave the
    /// client's stream cut mid-frame: only a new connection is usable).
    pub fn mute_answers(&self) {
        self.mute.store(true, Ordering::SeqCst);
    }

    /// Keep every connection open but let nothing through either way (new
    /// connections are accepted and then silent too) until `restore`.
    pub fn blackhole(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    /// After a `cut`: accept connections again, but keep them silent (as
    /// `blackhole`) until `restore`.
    pub fn restore_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Splits a client's byte stream into ZooKeeper frames (a 4-byte
/// big-endian length, then the body) and counts each request's op code (the
/// second 4-byte field of a request header); the first frame of a
/// connection is the ConnectRequest, which has no header.
struct FrameCounter {
    requests: Requests,
    pending: Vec<u8>,
    handshake_done: bool,
}

impl FrameCounter {
    /// The complete frames `bytes` ends, each with its op code (none for
    /// the handshake); a partial frame waits for the rest.
    fn feed(&mut self, bytes: &[u8]) -> Vec<(Option<i32>, Vec<u8>)> {
        self.pending.extend_from_slice(bytes);
        let mut frames = Vec::new();
        loop {
            let Some(len) = self.pending.get(..4) else {
                return frames;
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if self.pending.len() < 4 + len {
                return frames;
            }
            let mut code = None;
            if self.handshake_done && len >= 8 {
                let t = &self.pending[8..12];
                let c = i32::from_be_bytes([t[0], t[1], t[2], t[3]]);
                *self
                    .requests
                    .lock()
                    .expect("requests")
                    .entry(c)
                    .or_default() += 1;
                code = Some(c);
            }
            self.handshake_done = true;
            frames.push((code, self.pending.drain(..4 + len).collect()));
        }
    }
}

/// Wait while `hold` says to hold a request of op code `code`.
fn wait_if_held(hold: &Hold, code: Option<i32>) {
    let mut held = false;
    loop {
        let mut state = hold.lock().expect("hold");
        match state.op {
            Some(op) if code == Some(op) || held => {
                state.holding = true;
                held = true;
            }
            _ => {
                state.holding = false;
                return;
            }
        }
        drop(state);
        thread::sleep(Duration::from_millis(5));
    }
}

fn pipe(
    from: &TcpStream,
    to: &TcpStream,
    silent: &[Arc<AtomicBool>],
    requests: Option<(Requests, Hold)>,
) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let silent = silent.to_vec();
    let mut counter = requests.map(|(requests, hold)| {
        let counter = FrameCounter {
            requests,
            pending: Vec::new(),
            handshake_done: false,
        };
        (counter, hold)
    });
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if silent.iter().any(|s| s.load(Ordering::SeqCst)) => {}
                Ok(n) => match &mut counter {
                    // Towards the server: whole frames, each after any hold.
                    Some((counter, hold)) => {
                        for (code, frame) in counter.feed(&buf[..n]) {
                            wait_if_held(hold, code);
                            if to.write_all(&frame).is_err() {
                                return;
                            }
                        }
                    }
                    None => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                },
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
