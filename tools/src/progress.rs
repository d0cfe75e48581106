//! Progress bars: drawn on a terminal, silent otherwise (CI logs, pipes), so that long
//! work is visible to an operator without polluting machine output. The library only
//! reports progress (`mome::Progress`); this is where it is drawn.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;

/// A progress bar of `len` steps labelled `msg`, hidden unless stderr is a terminal.
pub fn bar(len: u64, msg: &'static str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style);
    }
    pb.set_message(msg);
    pb
}

/// Shows a memorizing event on `pb`: the batch's step and converged rows, and the
/// facts finished (`mome memorize` and `mome migrate`).
pub fn memorize_event(pb: &ProgressBar, ev: mome::MemorizeEvent) {
    match ev {
        mome::MemorizeEvent::Step {
            step,
            converged,
            rows,
        } => pb.set_message(format!("step {step}: {converged}/{rows}")),
        mome::MemorizeEvent::Done(n) => pb.inc(n as u64),
    }
}

/// Draws the library's long tasks (index rebuild, verify, compaction, export, import)
/// as terminal bars.
#[derive(Default)]
pub struct TerminalProgress {
    current: Mutex<Option<ProgressBar>>,
}

impl mome::Progress for TerminalProgress {
    fn start(&self, task: &'static str, total: u64) {
        *self.current.lock() = Some(bar(total, task));
    }

    fn advance(&self, n: u64) {
        if let Some(pb) = &*self.current.lock() {
            pb.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(pb) = self.current.lock().take() {
            pb.finish_and_clear();
        }
    }
}

/// The receiver handed to every store the tool opens.
pub fn terminal() -> Arc<dyn mome::Progress> {
    Arc::new(TerminalProgress::default())
}
