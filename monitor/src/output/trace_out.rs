//! `monitor trace`'s record output: the processor writes into memory and a thread of its own
//! writes to stdout, so that a reader that stops reading (a full pipe) never stalls the event
//! loop (which would then stop draining the kernel's ring buffer).
//!
//! Nothing is dropped: a batch that finds the queue full waits in memory and goes with the
//! next flush. Only past [`MAX_PENDING`] bytes does a flush wait for the writer (back
//! pressure; the kernel then counts what it cannot queue as ring losses, reported as such).

use std::{
    io::{self, Write},
    sync::mpsc,
    thread::JoinHandle,
};

use tracing::warn;

/// Batches queued for the writer thread.
const QUEUE_BATCHES: usize = 4096;
/// Bytes kept in memory while the queue is full before a flush waits for the writer.
const MAX_PENDING: usize = 64 << 20;

pub struct TraceOut {
    buffer: Vec<u8>,
    queue: Option<mpsc::SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
}

impl TraceOut {
    /// Starts the writer thread on `out` (stdout).
    pub fn start(out: impl Write + Send + 'static) -> io::Result<TraceOut> {
        let (queue, batches) = mpsc::sync_channel::<Vec<u8>>(QUEUE_BATCHES);
        let writer = std::thread::Builder::new()
            .name("trace-stdout".into())
            .spawn(move || write_all(out, batches))?;
        Ok(TraceOut {
            buffer: Vec::with_capacity(1 << 16),
            queue: Some(queue),
            writer: Some(writer),
        })
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

    /// Hands what was written to the writer thread; waits only past [`MAX_PENDING`] bytes.
    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let Some(queue) = &self.queue else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stdout is closed",
            ));
        };
        let batch = std::mem::take(&mut self.buffer);
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the stdout writer ended");
        match queue.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(batch)) if batch.len() < MAX_PENDING => {
                self.buffer = batch;
                Ok(())
            }
            Err(mpsc::TrySendError::Full(batch)) => queue.send(batch).map_err(|_| closed()),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(closed()),
        }
    }
}

impl Drop for TraceOut {
    /// Everything written reaches stdout before the process goes on to exit.
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            if !self.buffer.is_empty() {
                // The writer may have ended on a write error (already logged).
                let _ = queue.send(std::mem::take(&mut self.buffer));
            }
        }
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                warn!("the trace stdout writer panicked");
            }
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
}
