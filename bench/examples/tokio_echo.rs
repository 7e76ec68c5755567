//! The `echo` benchmark's peer: a TCP echo server as tokio users write it — a
//! multi-thread runtime with 2 workers, a task per connection, `read` then `write_all`.
//! Driven by the same client as reseau's `echo` example (README "Benchmarks", `echo`):
//!
//! ```text
//! cd bench && cargo run --release --example tokio_echo -- 127.0.0.1:7879
//! cargo run --release -p reseau-linux --example echo -- client 127.0.0.1:7879 --connections 8 --seconds 3
//! ```

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7879".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("tokio echo server on {addr} (2 workers); Ctrl-C to stop");
        loop {
            let (mut sock, _) = listener.accept().await?;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if sock.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}
