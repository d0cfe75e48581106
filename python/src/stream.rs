//! `Engine.ask_stream`: the reply's text pieces as they are generated.
//!
//! Generation runs on a thread of its own, under the engine's shared lock and without
//! the GIL, and sends each piece down an unbounded channel: it never waits for the
//! consumer, so it always ends (at the stop token or `max_tokens`) and releases the
//! lock even when the iterator is forgotten, and a writer waiting for the lock (a
//! `memorize` on another thread, `close`) waits for that generation only. The
//! iterator receives without the GIL, waking every few milliseconds to let Python
//! deliver signals; closing or dropping it asks the thread to stop at the next token.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use mome::{AskOptions, Engine as RustEngine};
use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;

use crate::errors::{raise, Fail, Res};
use crate::types::Answer;

/// The thread running `memorize` on an engine, if any: it holds the engine's lock alone.
pub type Busy = Arc<Mutex<Option<ThreadId>>>;

/// How often a waiting `__next__` lets Python run its signal handlers.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

enum Msg {
    Piece(String),
    Done(Res<mome::Answer>),
}

/// An iterator of the text pieces of one answer (`Engine.ask_stream`).
#[pyclass(module = "mome", name = "AskStream", frozen)]
pub struct AskStream {
    rx: Mutex<Option<Receiver<Msg>>>,
    stop: Arc<AtomicBool>,
    answer: Mutex<Option<Py<Answer>>>,
    /// The engine's memorizing thread: a `__next__` there would wait for a generation
    /// that waits for that thread's lock.
    busy: Busy,
}

impl AskStream {
    /// Starts generating `prompt` on a new thread.
    pub fn start(
        engine: Arc<RwLock<Option<RustEngine>>>,
        busy: Busy,
        prompt: String,
        opts: AskOptions,
    ) -> PyResult<Self> {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let generate = move || {
            let g = engine.read();
            let r = match g.as_ref() {
                None => Err(Fail::Closed),
                Some(e) => e
                    .ask_streaming(&prompt, &opts, &mut |piece| {
                        if stop_flag.load(Ordering::Relaxed)
                            || tx.send(Msg::Piece(piece.to_string())).is_err()
                        {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    })
                    .map_err(Fail::from),
            };
            drop(g);
            // The receiver may be gone (the iterator dropped): nobody is waiting.
            let _ = tx.send(Msg::Done(r));
        };
        if let Err(e) = std::thread::Builder::new()
            .name("mome-ask-stream".into())
            .spawn(generate)
        {
            return Err(Python::attach(|py| {
                raise(
                    py,
                    "Error",
                    &format!("cannot start the generation thread: {e}"),
                    &[],
                )
            }));
        }
        Ok(Self {
            rx: Mutex::new(Some(rx)),
            stop,
            answer: Mutex::new(None),
            busy,
        })
    }

    /// Ends the stream on this side: the thread stops at its next token.
    fn end(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx.lock().take();
    }
}

#[pymethods]
impl AskStream {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            let got = py.detach(|| {
                let g = self.rx.lock();
                g.as_ref().map(|rx| rx.recv_timeout(SIGNAL_POLL))
            });
            match got {
                // Exhausted or closed.
                None => return Ok(None),
                Some(Ok(Msg::Piece(p))) => return Ok(Some(p)),
                Some(Ok(Msg::Done(r))) => {
                    self.rx.lock().take();
                    let a = r?;
                    *self.answer.lock() = Some(Py::new(py, Answer::from_rust(py, a, None)?)?);
                    return Ok(None);
                }
                Some(Err(RecvTimeoutError::Timeout)) => {
                    // A thread that is memorizing holds the engine's lock alone, so
                    // the generation cannot run: it waits for that lock. Waiting for
                    // it here — a progress callback consuming a stream that another
                    // thread started — would never end. (Pieces sent before memorize
                    // took the lock are received above without a timeout.) The
                    // stream stays usable once `memorize` returns.
                    if *self.busy.lock() == Some(std::thread::current().id()) {
                        return Err(Fail::Busy.into());
                    }
                    if let Err(e) = py.check_signals() {
                        self.end();
                        return Err(e);
                    }
                }
                Some(Err(RecvTimeoutError::Disconnected)) => {
                    // The thread ended without its last message: it panicked.
                    self.rx.lock().take();
                    return Err(raise(
                        py,
                        "Error",
                        "answer generation stopped unexpectedly (its thread panicked)",
                        &[],
                    ));
                }
            }
        }
    }

    /// The whole answer once the iterator is exhausted; `None` before, or when it
    /// was closed early.
    #[getter]
    fn answer(&self, py: Python<'_>) -> Option<Py<Answer>> {
        self.answer.lock().as_ref().map(|a| a.clone_ref(py))
    }

    /// Stops generation (at the next token) and ends the iterator.
    fn close(&self) {
        self.end();
    }

    fn __repr__(&self) -> String {
        let state = if self.answer.lock().is_some() {
            "done"
        } else if self.rx.lock().is_some() {
            "running"
        } else {
            "closed"
        };
        format!("AskStream({state})")
    }
}

impl Drop for AskStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
