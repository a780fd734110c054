//! One ZooKeeper client's session task, on a thread of its own so that it
//! can be stopped without closing the session.
//!
//! zookeeper-client spawns a client's session task on the current tokio
//! runtime and offers one way to end it: drop every `Client`, which sends
//! `CloseSession` (and while no server answers, not even that: the task goes
//! on reconnecting on its own schedule until its session deadline). Taking
//! over a disconnected session (see `session.rs`, "re-attach") needs the
//! task gone *without* a word to the server. So each client is built on a
//! current-thread runtime of its own, driven by one thread; stopping the
//! host drops that runtime, and with it the task where it stands: its
//! connection closes, and the session lives on in the ensemble until its
//! timeout, to be re-attached by a new client.
//!
//! Owns that thread and runtime only; knows nothing about zkfs. Must not be
//! stopped while the session should be closed: close by dropping every
//! `Client` and waiting for the terminal state first, then stop the host.

use std::time::Duration;

use tokio::sync::oneshot;
use zookeeper_client as zk;

/// Why [`connect`] produced no client.
#[derive(Debug)]
pub enum ConnectFailure {
    /// No answer within the attempt's limit.
    TimedOut,
    /// The client gave up or a server refused (`SessionExpired`: the
    /// session to re-attach is gone).
    Refused(zk::Error),
    /// The host's thread or runtime could not be started.
    Host(String),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::TimedOut => f.write_str("no server answered in time"),
            ConnectFailure::Refused(e) => write!(f, "{e}"),
            ConnectFailure::Host(e) => write!(f, "cannot start the client's thread: {e}"),
        }
    }
}

/// The thread that runs one client's session task. Dropping it stops the
/// thread without waiting; [`ClientHost::stop`] waits until the task is
/// gone.
pub struct ClientHost {
    stop: Option<oneshot::Sender<()>>,
    gone: Option<oneshot::Receiver<()>>,
}

impl ClientHost {
    /// Stop the session task without closing the session, and wait until
    /// it is gone (its connection closed, nothing more sent).
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(gone) = self.gone.take() {
            let _ = gone.await;
        }
    }
}

impl Drop for ClientHost {
    fn drop(&mut self) {
        // Dropping the sender ends the thread's wait; it then drops the
        // runtime and exits on its own.
        self.stop.take();
    }
}

/// Connect `connector` to `servers` on a new host, bounded by `limit`.
/// A failed or timed-out attempt leaves nothing behind: its host is stopped
/// before this returns, and a client that connected too late is dropped
/// only after its task is (so it cannot close the session it joined).
pub async fn connect(
    connector: zk::Connector,
    servers: String,
    limit: Duration,
) -> Result<(zk::Client, ClientHost), ConnectFailure> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (result_tx, result_rx) = oneshot::channel::<Result<zk::Client, zk::Error>>();
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    // The runtime is built, and dropped, on its own thread: a runtime
    // dropped on a tokio worker (the closure, when the thread cannot be
    // started) would panic.
    std::thread::Builder::new()
        .name("zk-client".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                // Dropping the sender tells the caller.
                Err(_) => return,
            };
            let mut stop_rx = stop_rx;
            // A client nobody received (the caller gave up) is kept until
            // the runtime, and so its task, is gone: dropped earlier it
            // would make the task close the session.
            let unclaimed = runtime.block_on(async {
                tokio::select! {
                    result = connector.connect(&servers) => {
                        let unclaimed = result_tx.send(result).err();
                        let _ = (&mut stop_rx).await;
                        unclaimed
                    }
                    _ = &mut stop_rx => None,
                }
            });
            drop(runtime);
            drop(unclaimed);
            let _ = gone_tx.send(());
        })
        .map_err(|e| ConnectFailure::Host(e.to_string()))?;
    let host = ClientHost {
        stop: Some(stop_tx),
        gone: Some(gone_rx),
    };
    let mut result_rx = result_rx;
    let answer = tokio::time::timeout(limit, &mut result_rx).await;
    let failure = match answer {
        Ok(Ok(Ok(client))) => return Ok((client, host)),
        Ok(Ok(Err(e))) => ConnectFailure::Refused(e),
        Ok(Err(_)) => ConnectFailure::Host("the client's thread ended without connecting".into()),
        Err(_) => ConnectFailure::TimedOut,
    };
    // A client that connected just as the limit passed may be in the
    // channel: the task goes first, then the channel with it.
    host.stop().await;
    drop(result_rx);
    Err(failure)
}
