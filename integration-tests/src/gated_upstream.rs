//! An upstream binary cache that serves a directory but holds back the
//! second half of every NAR until the test opens its gate: a test can then
//! see what a client of the server receives while the upstream is still
//! sending, by ordering events rather than by timing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// A running gated upstream.
pub struct GatedUpstream {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    gate: Arc<Semaphore>,
    nar_requests: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedUpstream {
    /// Serves the files of `root` (a cache `nix copy --to file://` wrote):
    /// narinfos whole, NARs (under `nar/`) half, then the rest once the
    /// gate opens.
    pub async fn serve(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let gate = Arc::new(Semaphore::new(0));
        let nar_requests = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let task = {
            let (gate, nar_requests, finished) =
                (gate.clone(), nar_requests.clone(), finished.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (root, gate) = (root.clone(), gate.clone());
                    let (nar_requests, finished) = (nar_requests.clone(), finished.clone());
                    tokio::spawn(async move {
                        let _ = answer(stream, root, gate, nar_requests, finished).await;
                    });
                }
            })
        };
        Self {
            url,
            gate,
            nar_requests,
            finished,
            task,
        }
    }

    /// Lets every NAR response, now and later, send its second half.
    pub fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// NAR requests received.
    pub fn nar_requests(&self) -> usize {
        self.nar_requests.load(Ordering::SeqCst)
    }

    /// NAR responses sent to their last byte.
    pub fn nars_finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

impl Drop for GatedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one request on `stream` and closes it.
async fn answer(
    stream: TcpStream,
    root: PathBuf,
    gate: Arc<Semaphore>,
    nar_requests: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut request_line = String::new();
    stream.read_line(&mut request_line).await?;
    loop {
        let mut header = String::new();
        if stream.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_owned();
    let file = (!path.contains("..")).then(|| root.join(&path));
    let Some(body) = file.and_then(|file| std::fs::read(file).ok()) else {
        let miss = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        return stream.get_mut().write_all(miss.as_bytes()).await;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let stream = stream.get_mut();
    stream.write_all(head.as_bytes()).await?;
    if !path.starts_with("nar/") {
        return stream.write_all(&body).await;
    }
    nar_requests.fetch_add(1, Ordering::SeqCst);
    let half = body.len() / 2;
    stream.write_all(&body[..half]).await?;
    stream.flush().await?;
    let _permit = gate.acquire().await.expect("the gate is never closed");
    stream.write_all(&body[half..]).await?;
    stream.flush().await?;
    finished.fetch_add(1, Ordering::SeqCst);
    Ok(())
}
