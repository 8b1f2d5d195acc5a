//! The host side of a Yamux session over one byte stream (a virtio-serial port's socket):
//! a task drives the session and opens outbound streams on request.

use futures::future::poll_fn;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

type Opened = oneshot::Sender<std::io::Result<yamux::Stream>>;

/// How long a serial port stays claimed after its session ended: longer than the agent takes
/// to notice and start a new session (it retries every 100 ms).
const PORT_COOLDOWN: std::time::Duration = std::time::Duration::from_millis(300);

/// A handle on a session; cheap to clone. The session closes when every handle is gone.
#[derive(Clone)]
pub struct YamuxSession {
    requests: mpsc::Sender<Opened>,
    address: Arc<str>,
}

fn gone(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, format!("the yamux session {what}"))
}

impl YamuxSession {
    /// Starts a client session over `io`, on the current tokio runtime. `address` names it in
    /// errors.
    pub fn client(io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static, address: &str) -> YamuxSession {
        Self::client_holding(io, address, ())
    }

    /// [`YamuxSession::client`], keeping `guard` alive until the session ends (for example
    /// the claim on the channel the session runs over).
    pub fn client_holding(
        io: impl AsyncRead + AsyncWrite + Send + Unpin + 'static,
        address: &str,
        guard: impl Send + 'static,
    ) -> YamuxSession {
        let (tx, rx) = mpsc::channel(16);
        let connection = yamux::Connection::new(io.compat(), yamux::Config::default(), yamux::Mode::Client);
        tokio::spawn(async move {
            drive(connection, rx).await;
            // The agent notices the end of a session when it next reads the port, then opens
            // it afresh; a new connection on the port before that would have its first bytes
            // read by the old session. Keep the port's claim a little longer.
            tokio::time::sleep(PORT_COOLDOWN).await;
            drop(guard);
        });
        YamuxSession { requests: tx, address: address.into() }
    }

    /// The address the session runs over.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Opens a stream.
    pub async fn open(&self) -> std::io::Result<Compat<yamux::Stream>> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.map_err(|_| gone("has ended"))?;
        Ok(rx.await.map_err(|_| gone("ended while opening a stream"))??.compat())
    }
}

async fn drive<T>(mut connection: yamux::Connection<T>, mut requests: mpsc::Receiver<Opened>)
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut pending: VecDeque<Opened> = VecDeque::new();
    let mut closing = false;
    let ended = poll_fn(|cx| {
        if !closing {
            loop {
                match requests.poll_recv(cx) {
                    Poll::Ready(Some(req)) => pending.push_back(req),
                    Poll::Ready(None) => {
                        closing = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        while !pending.is_empty() {
            match connection.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    if let Some(req) = pending.pop_front() {
                        let _ = req.send(Ok(stream));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(e.to_string())),
                Poll::Pending => break,
            }
        }
        if closing && pending.is_empty() {
            return match connection.poll_close(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
        // Drives the session; the agent never opens streams to us, so any it opens are dropped.
        loop {
            match connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(_unexpected))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(e.to_string())),
                Poll::Ready(None) => return Poll::Ready(Some("closed by the agent".into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    let why = ended.unwrap_or_else(|| "closed".into());
    tracing::debug!("yamux session ended: {why}");
    for req in pending {
        let _ = req.send(Err(gone(&format!("ended: {why}"))));
    }
}
