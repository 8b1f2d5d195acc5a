//! Attaching the terminal to a process in a container: its output streamed as it comes,
//! stdin forwarded, and for a terminal process raw mode and window size.

use crate::tty;
use anyhow::Result;
use runtime_core::sandbox::{OutputReader, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn copy_out(mut reader: OutputReader, mut to: impl tokio::io::AsyncWrite + Unpin) -> Result<()> {
    while let Some(chunk) = reader.next_chunk().await? {
        to.write_all(&chunk).await?;
        to.flush().await?;
    }
    Ok(())
}

/// Streams a process's output (and, with `stdin`, forwards ours) until it exits; returns its
/// exit status.
pub async fn attach(sandbox: &Sandbox, container: &str, token: &str, stdin: bool, terminal: bool) -> Result<i32> {
    let io = sandbox.io_stream(container, token).await?;
    let _raw = if terminal && stdin && tty::stdin_is_tty() { tty::RawMode::enter() } else { None };
    if terminal {
        if let Some((rows, columns)) = tty::size() {
            sandbox.winsize_process(container, token, rows, columns).await?;
        }
    }
    let out = tokio::spawn(copy_out(io.stdout, tokio::io::stdout()));
    let err = io.stderr.map(|e| tokio::spawn(copy_out(e, tokio::io::stderr())));
    let mut writer = io.stdin;
    let input = async move {
        if !stdin {
            return Ok::<(), anyhow::Error>(());
        }
        let mut ours = tokio::io::stdin();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = ours.read(&mut buf).await?;
            if n == 0 {
                writer.close().await?;
                return Ok(());
            }
            writer.write_all(&buf[..n]).await?;
        }
    };
    let wait = sandbox.wait_process(container, token);
    tokio::pin!(wait);
    let resize = async {
        let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
            return std::future::pending().await;
        };
        while winch.recv().await.is_some() {
            if let Some((rows, columns)) = tty::size() {
                let _ = sandbox.winsize_process(container, token, rows, columns).await;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(resize);
    tokio::pin!(input);
    let mut input_done = false;
    let status = loop {
        tokio::select! {
            status = &mut wait => break status?,
            r = &mut input, if !input_done => { input_done = true; r?; }
            () = &mut resize, if terminal => {}
        }
    };
    out.await??;
    if let Some(err) = err {
        err.await??;
    }
    Ok(status)
}
