//! The data plane's worker threads: one single-threaded tokio runtime per thread, each with
//! its own SO_REUSEPORT socket per listener, so the kernel spreads new connections over the
//! workers and a connection lives its whole life on one thread. No task is handed between
//! threads and no thread wakes another, which is what a shared work-stealing runtime spends
//! most of its time on when connections are short (HAProxy's threads and nginx's workers
//! are built the same way).

use std::cell::Cell;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// The index of the worker this thread is, if it is one.
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running the caller (0 off the workers), so per-worker state such
/// as pooled backend connections is used by the thread that owns it.
pub fn current_index() -> usize {
    WORKER_INDEX.with(|index| index.get().unwrap_or(0))
}

/// The running workers; dropping this stops them and every task they run.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender ends its worker's runtime.
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Workers { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("fulcrum-worker-{index}"))
                .spawn(move || {
                    WORKER_INDEX.with(|cell| cell.set(Some(index)));
                    let _ = runtime.block_on(stopped);
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// One handle per worker, to spawn its tasks.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stops.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The number of workers when none is configured: one per available core.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
