//! Where alerts go. Every alert goes to every sink; a sink must never block the pipeline.

use std::io::Write;

use crate::alert::Alert;

/// A destination for alerts (JSON lines on stdout or a file, OTLP, ...).
pub trait AlertSink: Send {
    /// Takes one alert. Must not block on the network: queue or spool instead.
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()>;

    /// Called after each batch of events: write out what is buffered.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called once at shutdown, after the last alert.
    fn close(&mut self) -> anyhow::Result<()> {
        self.flush()
    }
}

/// Alerts as JSON lines on a writer (stdout, or the alerts file).
pub struct JsonLines<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }
}

impl<W: Write + Send> AlertSink for JsonLines<W> {
    fn send(&mut self, alert: &Alert) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, &alert.to_json())?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}
