//! A stream's request body that can be sent again (gRFC A6 retries of streams): what Lua sent
//! is kept, up to `perRpcBufferLimit` bytes, until the call commits (response headers
//! arrived, or the buffer is full); a retry replays it, then goes on with what Lua sends next.
//!
//! ```text
//! Lua send ─► outbound mpsc ─► AttemptBody (one attempt at a time holds the receiver)
//!                                 ├─ replay: kept messages first (Bytes: arena slots, no copy)
//!                                 └─ live: next message, kept while uncommitted and in budget
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedMutexGuard};
use tokio_stream::Stream;

/// The messages of one stream, shared by its attempts.
pub(super) struct Replay {
    kept: Mutex<Kept>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
}

#[derive(Default)]
struct Kept {
    messages: Vec<Bytes>,
    bytes: usize,
    limit: usize,
    /// Nothing is kept any more: the call committed, or the budget ran out.
    committed: bool,
}

impl Replay {
    /// Keeps up to `limit` bytes of what `rx` yields (0: nothing, the first attempt is the only
    /// one).
    pub fn new(rx: mpsc::Receiver<Bytes>, limit: usize) -> Arc<Replay> {
        Arc::new(Replay {
            kept: Mutex::new(Kept {
                limit,
                committed: limit == 0,
                ..Kept::default()
            }),
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        })
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether another attempt could send the same messages.
    pub fn replayable(&self) -> bool {
        !self.kept().committed
    }

    /// The call is the server's: nothing is kept any more (the slots go back to the arena).
    pub fn commit(&self) {
        let mut k = self.kept();
        k.committed = true;
        k.messages = Vec::new();
        k.bytes = 0;
    }

    /// The body of the next attempt.
    pub fn body(self: &Arc<Self>) -> AttemptBody {
        AttemptBody {
            replay: Arc::clone(self),
            next: 0,
            rx: Rx::Idle,
        }
    }
}

type Locking = Pin<Box<dyn Future<Output = OwnedMutexGuard<mpsc::Receiver<Bytes>>> + Send>>;

/// Where an attempt is with the live messages.
enum Rx {
    Idle,
    /// Waiting for the attempt before to let go of the receiver.
    Locking(Locking),
    Held(OwnedMutexGuard<mpsc::Receiver<Bytes>>),
}

/// One attempt's request messages: the kept ones, then the live ones.
pub(super) struct AttemptBody {
    replay: Arc<Replay>,
    /// The next kept message to send.
    next: usize,
    rx: Rx,
}

impl Stream for AttemptBody {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        {
            let k = this.replay.kept();
            if !k.committed {
                if let Some(m) = k.messages.get(this.next) {
                    this.next += 1;
                    return Poll::Ready(Some(m.clone()));
                }
            }
        }
        loop {
            match &mut this.rx {
                Rx::Idle => {
                    this.rx = Rx::Locking(Box::pin(Arc::clone(&this.replay.rx).lock_owned()));
                }
                Rx::Locking(f) => match f.as_mut().poll(cx) {
                    Poll::Ready(guard) => this.rx = Rx::Held(guard),
                    Poll::Pending => return Poll::Pending,
                },
                Rx::Held(rx) => {
                    let Some(m) = std::task::ready!(rx.poll_recv(cx)) else {
                        return Poll::Ready(None);
                    };
                    let mut k = this.replay.kept();
                    if !k.committed {
                        if k.bytes + m.len() <= k.limit {
                            k.bytes += m.len();
                            k.messages.push(m.clone());
                            this.next += 1;
                        } else {
                            // Past the budget: this attempt is the last one (A6).
                            k.committed = true;
                            k.messages = Vec::new();
                            k.bytes = 0;
                        }
                    }
                    return Poll::Ready(Some(m));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[test]
    fn a_second_attempt_replays_then_goes_on_and_the_budget_commits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = mpsc::channel(8);
            let replay = Replay::new(rx, 5);
            tx.send(Bytes::from_static(b"ab")).await.unwrap();
            tx.send(Bytes::from_static(b"cd")).await.unwrap();
            let mut first = replay.body();
            assert_eq!(first.next().await.unwrap(), "ab");
            assert_eq!(first.next().await.unwrap(), "cd");
            drop(first);
            assert!(replay.replayable());
            let mut second = replay.body();
            assert_eq!(second.next().await.unwrap(), "ab");
            assert_eq!(second.next().await.unwrap(), "cd");
            tx.send(Bytes::from_static(b"efg")).await.unwrap();
            assert_eq!(second.next().await.unwrap(), "efg", "live after the replay");
            assert!(!replay.replayable(), "7 bytes > 5: committed");
            drop(tx);
            assert!(second.next().await.is_none());

            let (tx, rx) = mpsc::channel(8);
            let replay = Replay::new(rx, 100);
            tx.send(Bytes::from_static(b"x")).await.unwrap();
            let mut b = replay.body();
            assert_eq!(b.next().await.unwrap(), "x");
            replay.commit();
            assert!(!replay.replayable());
        });
    }
}
