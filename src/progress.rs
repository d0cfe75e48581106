//! Progress of long operations (rebuilding an index, verifying or compacting a store,
//! exporting or importing an archive), reported to whatever the caller hands in.
//!
//! The library never draws anything: a command-line tool implements [`Progress`] with
//! progress bars, a server with metrics, and the default ([`NoProgress`]) ignores it.

/// Receives the progress of long operations. One task runs at a time per receiver.
pub trait Progress: Send + Sync {
    /// A task begins: `total` steps (0 when not known in advance).
    fn start(&self, task: &'static str, total: u64) {
        let _ = (task, total);
    }
    /// `n` more steps of the current task are done.
    fn advance(&self, n: u64) {
        let _ = n;
    }
    /// The current task ended (finished or failed).
    fn finish(&self) {}
}

/// Ignores progress: the default of every store.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A started task; finishes it when dropped, also on an early error return.
pub(crate) struct Task<'a> {
    sink: &'a dyn Progress,
}

impl<'a> Task<'a> {
    pub(crate) fn start(sink: &'a dyn Progress, task: &'static str, total: u64) -> Self {
        sink.start(task, total);
        Task { sink }
    }

    pub(crate) fn advance(&self, n: u64) {
        self.sink.advance(n);
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        self.sink.finish();
    }
}
