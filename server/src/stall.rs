//! Streams that fail when they stall: no item for a while is an error of
//! kind `TimedOut`, so a peer that stops sending (an upload's client, a
//! storage server mid-download) ends what waits on it.

use std::io;
use std::time::Duration;

use futures::{Stream, StreamExt};

/// `stream`, failing with `TimedOut` (and then ending) when no item
/// arrives for `timeout`.
pub fn with_progress_timeout<S, T>(
    stream: S,
    timeout: Duration,
) -> impl Stream<Item = io::Result<T>> + Send + Unpin
where
    S: Stream<Item = io::Result<T>> + Send + Unpin + 'static,
    T: Send + 'static,
{
    Box::pin(futures::stream::unfold(
        Some(stream),
        move |stream| async move {
            let mut stream = stream?;
            match tokio::time::timeout(timeout, stream.next()).await {
                Ok(Some(item)) => Some((item, Some(stream))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no bytes arrived for {}",
                            humantime::format_duration(timeout)
                        ),
                    )),
                    None,
                )),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stalled_stream_fails_with_timed_out_and_ends() {
        let stalled =
            futures::stream::iter([Ok::<_, io::Error>(1)]).chain(futures::stream::pending());
        let mut guarded = with_progress_timeout(Box::pin(stalled), Duration::from_millis(20));
        assert_eq!(guarded.next().await.expect("item").expect("ok"), 1);
        let error = guarded
            .next()
            .await
            .expect("an error")
            .expect_err("timed out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(guarded.next().await.is_none());
    }
}
