#![allow(dead_code)] // each test binary uses a subset
//! A loopback TCP proxy for fault injection: the mount connects through it,
//! and a test can cut every connection (and refuse new ones) while other
//! clients keep talking to the server directly, then restore it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// While set, bytes are read and dropped: connections stay open but
    /// nothing gets through (a blackholed server, a silent network).
    silent: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
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
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let upstream = upstream.to_string();
        {
            let (up, stop, streams, silent) =
                (up.clone(), stop.clone(), streams.clone(), silent.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if !up.load(Ordering::SeqCst) {
                                let _ = client.shutdown(Shutdown::Both);
                                continue;
                            }
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
                            pipe(&client, &server, &silent);
                            pipe(&server, &client, &silent);
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
            streams,
            stop,
        }
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
    }

    /// Keep every connection open but let nothing through either way (new
    /// connections are accepted and then silent too) until `restore`.
    pub fn blackhole(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn pipe(from: &TcpStream, to: &TcpStream, silent: &Arc<AtomicBool>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let silent = silent.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) if silent.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
