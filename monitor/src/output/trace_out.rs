//! `monitor trace`'s record output: the processor writes into memory and a thread of its own
//! writes to stdout, so that a reader that stops reading (a full pipe) never stalls the event
//! loop (which would then stop draining the kernel's ring buffer, and stop answering signals).
//!
//! A flush never blocks. A batch that finds the queue full waits in memory and goes with the
//! next flush. Past [`MAX_PENDING`] waiting bytes the oldest waiting batches are dropped, their
//! records counted ([`TraceOut::dropped`]); the processor reports them as a loss record
//! (`monitor.loss.reason: stdout-full`) and in the summary. The newest batch is always kept:
//! the loss records and the summary at exit reach stdout once it reads again.

use std::{
    collections::VecDeque,
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

use tracing::warn;

/// Batches queued for the writer thread.
const QUEUE_BATCHES: usize = 4096;
/// Bytes kept in memory while the queue is full; past it the oldest records are dropped.
const MAX_PENDING: usize = 64 << 20;

pub struct TraceOut {
    buffer: Vec<u8>,
    /// Batches the queue had no room for, oldest first, and their size in bytes.
    waiting: VecDeque<Vec<u8>>,
    waiting_bytes: usize,
    max_pending: usize,
    /// Records dropped because stdout did not keep up.
    dropped: Arc<AtomicU64>,
    queue: Option<mpsc::SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
}

impl TraceOut {
    /// Starts the writer thread on `out` (stdout).
    pub fn start(out: impl Write + Send + 'static) -> io::Result<TraceOut> {
        TraceOut::with_bounds(out, QUEUE_BATCHES, MAX_PENDING)
    }

    fn with_bounds(
        out: impl Write + Send + 'static,
        queue_batches: usize,
        max_pending: usize,
    ) -> io::Result<TraceOut> {
        let (queue, batches) = mpsc::sync_channel::<Vec<u8>>(queue_batches);
        let writer = std::thread::Builder::new()
            .name("trace-stdout".into())
            .spawn(move || write_all(out, batches))?;
        Ok(TraceOut {
            buffer: Vec::with_capacity(1 << 16),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            max_pending,
            dropped: Arc::new(AtomicU64::new(0)),
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// The count of records dropped because stdout did not keep up (for the processor's
    /// loss report: [`crate::pipeline::Counters::trace_dropped`]).
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }
}

fn write_all(mut out: impl Write, batches: mpsc::Receiver<Vec<u8>>) {
    while let Ok(batch) = batches.recv() {
        let mut result = out.write_all(&batch);
        // Flush once nothing more is waiting: whole batches, without delay.
        while let Ok(batch) = batches.try_recv() {
            result = result.and_then(|()| out.write_all(&batch));
        }
        if let Err(err) = result.and_then(|()| out.flush()) {
            warn!("failed to write trace records to stdout: {err}");
            return;
        }
    }
}

impl Write for TraceOut {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Hands what was written to the writer thread, in order after what waits; never waits
    /// itself. Past [`MAX_PENDING`] waiting bytes the oldest batches are dropped and counted.
    fn flush(&mut self) -> io::Result<()> {
        if !self.buffer.is_empty() {
            let batch = std::mem::take(&mut self.buffer);
            self.waiting_bytes += batch.len();
            self.waiting.push_back(batch);
        }
        let Some(queue) = &self.queue else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdout is closed",
            ));
        };
        while let Some(batch) = self.waiting.pop_front() {
            let len = batch.len();
            match queue.try_send(batch) {
                Ok(()) => self.waiting_bytes -= len,
                Err(mpsc::TrySendError::Full(batch)) => {
                    self.waiting.push_front(batch);
                    break;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the stdout writer ended",
                    ))
                }
            }
        }
        // Each batch holds whole records (the processor flushes between records).
        while self.waiting_bytes > self.max_pending && self.waiting.len() > 1 {
            if let Some(oldest) = self.waiting.pop_front() {
                self.waiting_bytes -= oldest.len();
                let records = oldest.iter().filter(|&&b| b == b'\n').count() as u64;
                self.dropped.fetch_add(records, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

impl Drop for TraceOut {
    /// Everything written reaches stdout before the process goes on to exit.
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            if !self.buffer.is_empty() {
                self.waiting.push_back(std::mem::take(&mut self.buffer));
            }
            for batch in self.waiting.drain(..) {
                // The writer may have ended on a write error (already logged).
                if queue.send(batch).is_err() {
                    break;
                }
            }
        }
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                warn!("the trace stdout writer panicked");
            }
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            warn!(
                dropped,
                "trace records dropped in all because stdout did not keep up (a slow or stopped reader)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that blocks until the test lets it go, then records what it got.
    #[derive(Clone)]
    struct Gate(Arc<Mutex<Vec<u8>>>);

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stdout_neither_blocks_nor_loses_records() {
        let got = Arc::new(Mutex::new(Vec::new()));
        // Held: the writer thread blocks on its first write, as on a full pipe.
        let stall = got.lock().unwrap();
        let mut out = TraceOut::start(Gate(got.clone())).unwrap();
        let mut expected = Vec::new();
        for n in 0..(QUEUE_BATCHES + 100) {
            let line = format!("{{\"n\":{n}}}\n");
            out.write_all(line.as_bytes()).unwrap();
            // Returns at once although nothing can be written.
            out.flush().unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        drop(stall);
        drop(out);
        assert_eq!(*got.lock().unwrap(), expected);
    }

    /// A stdout that stopped reading: flushes return at once; past the bound the oldest
    /// records are dropped and counted, the newest kept; nothing else is lost.
    #[test]
    fn a_stopped_stdout_drops_the_oldest_records_counted_and_keeps_the_newest() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stall = got.lock().unwrap();
        // Two batches queued, 200 bytes waiting at most.
        let mut out = TraceOut::with_bounds(Gate(got.clone()), 2, 200).unwrap();
        let dropped = out.dropped();
        const RECORDS: usize = 1000;
        for n in 0..RECORDS {
            out.write_all(format!("{{\"n\":{n}}}\n").as_bytes())
                .unwrap();
            out.flush().unwrap();
        }
        let lost = dropped.load(Ordering::Relaxed) as usize;
        assert!(lost > RECORDS / 2, "dropped {lost}");
        drop(stall);
        drop(out);
        let got = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let written: Vec<usize> = got
            .lines()
            .map(|line| line[5..line.len() - 1].parse().unwrap())
            .collect();
        assert_eq!(
            written.len() + lost,
            RECORDS,
            "every record written or counted"
        );
        assert_eq!(written.last(), Some(&(RECORDS - 1)), "the newest is kept");
        assert!(written.windows(2).all(|w| w[0] < w[1]), "in order");
    }
}
