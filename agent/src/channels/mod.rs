//! The channels the agent serves on: vsock, a virtio-serial port multiplexed with Yamux, and
//! (for tests on the host) a Unix socket. Each listener feeds accepted streams to one server.

mod conn;
mod serial;

pub use conn::Conn;

use futures::future::poll_fn;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tracing::{info, warn};

/// How long to wait before reopening a serial port whose host side is gone.
const SERIAL_RETRY: Duration = Duration::from_millis(100);

pub use agent_protocol::channels::{BadChannel, Channel};

/// Starts a listener task per channel; returns the channels that could be set up. A channel
/// whose device is absent (no vsock in this VM, say) is logged and left out.
pub async fn listen(channels: &[Channel], tx: mpsc::Sender<std::io::Result<Conn>>) -> Vec<String> {
    let mut up = Vec::new();
    for channel in channels {
        let started = match channel {
            Channel::Unix(path) => listen_unix(path, tx.clone()),
            Channel::Vsock(port) => listen_vsock(*port, tx.clone()),
            Channel::Serial(name) => listen_serial(name.clone(), tx.clone()).await,
        };
        match started {
            Ok(()) => {
                info!(%channel, "serving");
                up.push(channel.to_string());
            }
            Err(e) => warn!(%channel, "not serving: {e}"),
        }
    }
    up
}

/// Feeds what `accept` yields to the server until the server is gone.
fn accept_loop<F, Fut>(mut accept: F, tx: mpsc::Sender<std::io::Result<Conn>>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<Conn>> + Send,
{
    tokio::spawn(async move {
        loop {
            if tx.send(accept().await).await.is_err() {
                break;
            }
        }
    });
}

fn listen_unix(path: &PathBuf, tx: mpsc::Sender<std::io::Result<Conn>>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = std::sync::Arc::new(tokio::net::UnixListener::bind(path)?);
    accept_loop(move || {
        let listener = listener.clone();
        async move { listener.accept().await.map(|(s, _)| Conn::new(s)) }
    }, tx);
    Ok(())
}

fn listen_vsock(port: u32, tx: mpsc::Sender<std::io::Result<Conn>>) -> std::io::Result<()> {
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
    let listener = std::sync::Arc::new(tokio_vsock::VsockListener::bind(addr)?);
    accept_loop(move || {
        let listener = listener.clone();
        async move { listener.accept().await.map(|(s, _)| Conn::new(s)) }
    }, tx);
    Ok(())
}

/// Serves Yamux on the port: each stream the host opens is one connection. When the host
/// side closes (the port reads EOF), the session ends and a new one starts on the next open.
async fn listen_serial(name: String, tx: mpsc::Sender<std::io::Result<Conn>>) -> std::io::Result<()> {
    // The port appears once virtio_console has probed the device; give it a moment.
    let mut path = serial::find_port(&name);
    for _ in 0..50 {
        if path.is_some() {
            break;
        }
        tokio::time::sleep(SERIAL_RETRY).await;
        path = serial::find_port(&name);
    }
    let path = path.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no virtio-serial port named {name}")))?;
    tokio::spawn(async move {
        loop {
            match serial::SerialPort::open_connected(&path).await {
                Ok(port) => serve_yamux(port, &tx).await,
                Err(e) => warn!("opening {}: {e}", path.display()),
            }
            if tx.is_closed() {
                break;
            }
            tokio::time::sleep(SERIAL_RETRY).await;
        }
    });
    Ok(())
}

async fn serve_yamux(port: serial::SerialPort, tx: &mpsc::Sender<std::io::Result<Conn>>) {
    let mut session = yamux::Connection::new(port.compat(), yamux::Config::default(), yamux::Mode::Server);
    loop {
        match poll_fn(|cx| session.poll_next_inbound(cx)).await {
            Some(Ok(stream)) => {
                if tx.send(Ok(Conn::new(stream.compat()))).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                warn!("yamux session on the serial port ended: {e}");
                return;
            }
            None => return,
        }
    }
}
