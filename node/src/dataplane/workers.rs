//! The data plane's worker threads: one single-threaded tokio runtime per thread, each with
//! its own SO_REUSEPORT socket per listener, so the kernel spreads new connections over the
//! workers and a connection lives its whole life on the thread that serves it. A running
//! task is never moved between threads and threads do not wake each other per request,
//! which is what a shared work-stealing runtime spends most of its time on when connections
//! are short (HAProxy's threads and nginx's workers are built the same way). The kernel
//! spreads connections evenly only on average, so a worker holding more than its share
//! hands a new connection, before serving it, to the least loaded one (`Loads`), at the
//! cost of one wake-up of that thread, as HAProxy balances its threads by connection count.

use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    handles: Arc<[Handle]>,
    loads: Arc<Loads>,
    /// Dropping a sender ends its worker's runtime.
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        // Built in place, so a failure part-way stops and joins the workers already started.
        let mut workers = Workers {
            handles: Arc::new([]),
            loads: Arc::new(Loads::new(count)),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        let mut handles = Vec::new();
        for index in 0..count {
            let (stop, stopped) = oneshot::channel::<()>();
            let (started, handle) = std::sync::mpsc::sync_channel::<io::Result<Handle>>(1);
            // The runtime is built in its thread: one built here would be dropped here if the
            // thread could not be spawned, and dropping a runtime inside the daemon's panics.
            let thread = std::thread::Builder::new()
                .name(format!("fulcrum-worker-{index}"))
                .spawn(move || {
                    let built = tokio::runtime::Builder::new_current_thread().enable_all().build();
                    let runtime = match built {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    let _ = started.send(Ok(runtime.handle().clone()));
                    WORKER_INDEX.with(|cell| cell.set(Some(index)));
                    let _ = runtime.block_on(stopped);
                })?;
            workers.stops.push(stop);
            workers.threads.push(thread);
            let handle = handle.recv().unwrap_or_else(|_| {
                Err(io::Error::other("a worker thread ended before its runtime started"))
            })?;
            handles.push(handle);
        }
        workers.handles = handles.into();
        Ok(workers)
    }

    /// One handle per worker, to spawn its tasks.
    pub fn handles(&self) -> &Arc<[Handle]> {
        &self.handles
    }

    /// How many client connections and tunnels each worker holds.
    pub(crate) fn loads(&self) -> &Arc<Loads> {
        &self.loads
    }
}

/// How many more connections than the least loaded worker a worker may hold before it hands
/// new ones over: connections come and go, and a hand-over costs a wake-up of the other
/// thread, so near-equal counts are left as they are.
const BALANCE_SLACK: usize = 2;

/// Each worker's count of open client connections and tunnels.
#[derive(Debug)]
pub(crate) struct Loads(Box<[Count]>);

/// One worker's count, on a cache line of its own: each worker writes its own at every
/// connection, and sharing a line would make the workers fight over it.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Count(AtomicUsize);

impl std::ops::Deref for Count {
    type Target = AtomicUsize;

    fn deref(&self) -> &AtomicUsize {
        &self.0
    }
}

impl Loads {
    fn new(workers: usize) -> Loads {
        Loads((0..workers).map(|_| Count::default()).collect())
    }

    /// The worker that should serve a connection `accepting` took: itself, unless it holds
    /// more than [`BALANCE_SLACK`] connections more than the least loaded worker.
    pub(crate) fn pick(&self, accepting: usize) -> usize {
        let count = |worker: usize| self.0.get(worker).map_or(0, |c| c.load(Ordering::Relaxed));
        let least = (0..self.0.len()).min_by_key(|&worker| count(worker)).unwrap_or(accepting);
        match count(accepting) > count(least) + BALANCE_SLACK {
            true => least,
            false => accepting,
        }
    }

    /// Counts a connection on `worker` until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>, worker: usize) -> Load {
        if let Some(count) = self.0.get(worker) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Load { loads: Arc::clone(self), worker }
    }
}

/// One connection counted on its worker.
#[derive(Debug)]
pub(crate) struct Load {
    loads: Arc<Loads>,
    worker: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(count) = self.loads.0.get(self.worker) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_well_above_the_least_loaded_hands_connections_over() {
        let loads = Arc::new(Loads::new(3));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(loads.enter(0));
        }
        held.push(loads.enter(1));
        // 3 against 0 on worker 2: over the slack.
        assert_eq!(loads.pick(0), 2);
        // Worker 1 holds 1, within the slack of 0.
        assert_eq!(loads.pick(1), 1);
        held.push(loads.enter(2));
        // 3 against 1: within the slack.
        assert_eq!(loads.pick(0), 0);
        held.clear();
        assert!(
            loads.0.iter().all(|count| count.load(Ordering::Relaxed) == 0),
            "guards count down"
        );
    }
}
