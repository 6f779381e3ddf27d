//! The event log a chaos process writes for the checker (line format in `check.rs`).
//! Lines go to a buffered file behind a std mutex (never held across `.await`); each
//! client writes its own lines in the order it saw the events.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

pub struct EventLog {
    out: Mutex<BufWriter<File>>,
}

impl EventLog {
    pub fn create(path: &Path) -> anyhow::Result<EventLog> {
        Ok(EventLog {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
        })
    }

    pub fn line(&self, text: std::fmt::Arguments<'_>) {
        if let Ok(mut out) = self.out.lock() {
            // A failed write shows up as a loss in the checker; nothing to do here.
            let _ = out.write_fmt(text);
            let _ = out.write_all(b"\n");
        }
    }

    pub fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}

/// Whether the run is over: the script creates this file.
pub fn stopped(stop_file: &Path) -> bool {
    stop_file.exists()
}
