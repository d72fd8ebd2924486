//! A durable on-disk spool of alerts: every alert is written here before it is exported, and
//! removed only once the collector has accepted it, so an outage or a restart loses nothing.
//!
//! Layout of the spool directory:
//! - `lock`: held with `flock` while a monitor uses the directory.
//! - `<severity>-<id>.seg`: segments, append-only files of records. Each severity has its own
//!   chain of segments (a "lane"), so that dropping "the oldest alerts of the lowest severity"
//!   frees whole files, never rewrites one.
//! - `notice-<id>.seg`: the `spool-dropped` reports. This lane is never dropped: room for it is
//!   reserved, so the report of a drop survives the drop it reports, and the counts add up.
//! - `<severity>-<id>.ack`: the sequence numbers of the records of that segment that are done
//!   (exported, or rejected for good). A segment and its ack file are deleted together once
//!   every record in the segment is done.
//!
//! A record is `magic "MSP1" | payload length u32 | sequence u64 | crc32 u32 | payload`, all
//! little-endian; the CRC covers the length, the sequence and the payload. The payload is the
//! alert as JSON, [`Alert`]'s own serde form (the same fields as the record of earlier
//! versions, which are read unchanged). Sequence numbers grow across lanes and restarts: the exporter sends in that
//! order. An ack entry is `sequence u64 | crc32 u32` of those 8 bytes.
//!
//! Crash safety: records and acks are written with one `write` each (they survive a crash of
//! the process at once) and made durable with `fdatasync` in batches ([`Spool::sync`], called
//! every 100 ms by the exporter). A torn or corrupt stretch of a segment is skipped at start-up
//! by scanning for the next record whose magic and CRC check out; what was skipped is logged and
//! counted. A lost ack only means a record is sent twice, with the same `log.record.uid`.
//! Old segments are never appended to: each run starts new ones.
//!
//! Files are private whatever the umask: the directory is created 0700, every file 0600.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::{
        fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use crate::event::alert::{Action, Alert, Severity};

const MAGIC: &[u8; 4] = b"MSP1";
const HEADER: usize = 20;
const ACK_ENTRY: usize = 12;
/// A record larger than this is taken for corruption when scanning.
const MAX_PAYLOAD: usize = 16 << 20;
const SEVERITIES: [Severity; 4] = [
    Severity::Low,
    Severity::Medium,
    Severity::High,
    Severity::Critical,
];

/// The lanes: one per severity (`Low..=Critical`, indexes 0 to 3), then the notices.
const LANES: usize = 5;
/// The lane of the `spool-dropped` reports: never dropped to make room.
const NOTICE_LANE: usize = 4;

/// The rule of the alert that reports alerts the spool had to drop.
pub const DROPPED_RULE: &str = "spool-dropped";

/// Mode of the spool directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the spool writes.
pub const FILE_MODE: u32 = 0o600;

fn lane_index(severity: Severity) -> usize {
    match severity {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

fn lane_name(lane: usize) -> &'static str {
    SEVERITIES.get(lane).map_or("notice", |s| s.name())
}

fn lane_from_name(name: &str) -> Option<usize> {
    if name == "notice" {
        return Some(NOTICE_LANE);
    }
    Severity::from_name(name).map(lane_index)
}

/// Identifies one spooled record: what [`Spool::ack`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    lane: usize,
    /// Global sequence number, unique in this spool directory.
    pub seq: u64,
}

/// A record read back for export.
#[derive(Clone, Debug)]
pub struct Spooled {
    pub id: RecordId,
    pub alert: Alert,
    /// Size of the record on disk.
    pub bytes: usize,
}

/// The outcome of [`Spool::append`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// The new record, or `None` when the alert itself had to be dropped (the spool is full
    /// of alerts of higher severity, or the alert is larger than the whole spool).
    pub stored: Option<RecordId>,
    /// Alerts dropped by this call, by severity (`Low..=Critical`), the new one included.
    pub dropped: [u64; 4],
}

/// What start-up found in the spool directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments read.
    pub segments: usize,
    /// Whole records found (done or not).
    pub records: usize,
    /// Records still to export.
    pub pending: usize,
    /// Stretches of segments that were torn or corrupt and skipped.
    pub corrupt_regions: usize,
    /// Bytes in those stretches.
    pub corrupt_bytes: u64,
}

fn encode_alert(alert: &Alert) -> Vec<u8> {
    serde_json::to_vec(alert).expect("an alert serializes to JSON")
}

fn decode_alert(payload: &[u8]) -> anyhow::Result<Alert> {
    Ok(serde_json::from_slice(payload)?)
}

/// Opens (creating it 0600 whatever the umask) a file of the spool for appending.
fn open_private(path: &Path, create_new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).mode(FILE_MODE);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true);
    }
    let file = options.open(path)?;
    // The umask can only take bits away from FILE_MODE, but a umask like 0277 would leave
    // the monitor unable to write its own file: set the mode outright.
    if file.metadata()?.permissions().mode() & 0o777 != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

/// Creates `dir` (and its parents) 0700; an existing directory open to others is reported.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        return Ok(());
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        warn!(
            "the spool dir {} has mode {mode:o}: other users may read the alerts in it; \
             `chmod 700` it (the monitor creates it 0700)",
            dir.display()
        );
    }
    Ok(())
}

fn record_crc(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut buf = Vec::with_capacity(HEADER + payload.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&record_crc(len, seq, payload).to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// The record at `pos`, if a whole one with a good CRC starts there: (sequence, payload length).
fn parse_record(data: &[u8], pos: usize) -> Option<(u64, usize)> {
    let header = data.get(pos..pos + HEADER)?;
    if &header[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let seq = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let crc = u32::from_le_bytes(header[16..20].try_into().unwrap());
    if len as usize > MAX_PAYLOAD {
        return None;
    }
    let payload = data.get(pos + HEADER..pos + HEADER + len as usize)?;
    (record_crc(len, seq, payload) == crc).then_some((seq, len as usize))
}

/// One whole record found by [`scan_segment`].
struct Found {
    offset: u64,
    seq: u64,
    len: usize,
}

/// Every whole record of a segment, skipping torn or corrupt stretches: after a bad record,
/// resumes at the next position where a record with a good CRC starts.
fn scan_segment(data: &[u8], recovery: &mut Recovery, name: &str) -> Vec<Found> {
    let mut found = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if let Some((seq, len)) = parse_record(data, pos) {
            found.push(Found {
                offset: pos as u64,
                seq,
                len,
            });
            pos += HEADER + len;
            continue;
        }
        let start = pos;
        pos += 1;
        while pos < data.len() {
            match data[pos..].windows(4).position(|w| w == MAGIC) {
                Some(at) => pos += at,
                None => pos = data.len(),
            }
            if pos < data.len() && parse_record(data, pos).is_some() {
                break;
            }
            if pos < data.len() {
                pos += 1;
            }
        }
        let skipped = (pos - start) as u64;
        recovery.corrupt_regions += 1;
        recovery.corrupt_bytes += skipped;
        warn!(
            "spool segment {name}: skipped {skipped} torn or corrupt bytes at offset {start}{}",
            if pos == data.len() {
                " (up to the end: a write cut short)"
            } else {
                ""
            }
        );
    }
    found
}

fn read_acks(path: &Path) -> io::Result<Vec<u64>> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // A torn last entry, or a bad one, only means a record is sent again.
    Ok(data
        .chunks_exact(ACK_ENTRY)
        .filter_map(|entry| {
            let seq = &entry[..8];
            let crc = u32::from_le_bytes(entry[8..].try_into().unwrap());
            (crc32fast::hash(seq) == crc).then(|| u64::from_le_bytes(seq.try_into().unwrap()))
        })
        .collect())
}

struct Entry {
    segment: u64,
    offset: u64,
    len: usize,
    /// Handed to the exporter by [`Spool::next_batch`] and not acked yet: it may be delivered,
    /// so its segment is not dropped to make room (the drop count would count a delivered
    /// alert as lost).
    in_flight: bool,
}

struct Segment {
    path: PathBuf,
    ack_path: PathBuf,
    bytes: u64,
    pending: usize,
    /// Open for appending while this is the lane's active segment.
    writer: Option<Arc<File>>,
    reader: Option<File>,
    acks: Option<Arc<File>>,
}

#[derive(Default)]
struct Lane {
    segments: BTreeMap<u64, Segment>,
    active: Option<u64>,
    pending: BTreeMap<u64, Entry>,
}

/// The durable spool. Not thread-safe by itself: share it behind a mutex.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Room kept for the notice lane: alerts may fill `max_bytes - reserve`.
    reserve: u64,
    /// Bytes of one batch: a quarter of the spool.
    batch_cap: usize,
    lanes: [Lane; LANES],
    /// The newest `spool-dropped` report not yet exported.
    report: Option<PendingReport>,
    next_seq: u64,
    next_segment: u64,
    /// Bytes of all segment files.
    total_bytes: u64,
    /// Drops not yet reported by [`Spool::append_drop_report`].
    unreported_drops: [u64; 4],
    dropped_total: [u64; 4],
    recovery: Recovery,
    /// Files written since the last sync.
    dirty: Vec<Arc<File>>,
    dir_dirty: bool,
    dir_handle: Arc<File>,
    _lock: File,
}

/// A `spool-dropped` report in the notice lane.
#[derive(Clone, Copy, Debug)]
struct PendingReport {
    id: RecordId,
    counts: [u64; 4],
    /// Handed to the exporter by [`Spool::next_batch`]: it may be delivered, so a newer report
    /// must not replace it (the counts would be delivered twice).
    handed_out: bool,
}

/// The drop counts of a `spool-dropped` report.
fn report_counts(alert: &Alert) -> [u64; 4] {
    std::array::from_fn(|i| {
        alert
            .attributes
            .get(&format!("monitor.spool.dropped.{}", SEVERITIES[i].name()))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    })
}

/// Files to make durable, collected under the spool's lock and synced outside it.
#[must_use]
pub struct PendingSync {
    files: Vec<Arc<File>>,
    dir: Option<Arc<File>>,
}

impl PendingSync {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dir.is_none()
    }

    /// `fdatasync`s the files written since the last sync, and the directory if files were
    /// created or removed.
    pub fn run(self) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            dir.sync_all()?;
        }
        Ok(())
    }
}

fn segment_name(lane: usize, id: u64) -> String {
    format!("{}-{id:016x}.seg", lane_name(lane))
}

fn parse_segment_name(name: &str) -> Option<(usize, u64, bool)> {
    let (stem, is_segment) = if let Some(stem) = name.strip_suffix(".seg") {
        (stem, true)
    } else {
        (name.strip_suffix(".ack")?, false)
    };
    let (lane, id) = stem.rsplit_once('-')?;
    Some((
        lane_from_name(lane)?,
        u64::from_str_radix(id, 16).ok()?,
        is_segment,
    ))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering what a previous run left.
    /// Corrupt stretches are skipped and reported, never fatal.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Spool> {
        let hint = "; pass --spool-dir DIR with a directory the monitor can write";
        create_private_dir(dir)
            .with_context(|| format!("failed to create the spool dir {}{hint}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = open_private(&lock_path, false)
            .with_context(|| format!("failed to write in the spool dir {}{hint}", dir.display()))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "failed to lock the spool dir {}: {}; another monitor uses it, give each \
                 monitor its own --spool-dir",
                dir.display(),
                io::Error::last_os_error()
            );
        }
        let dir_handle = File::open(dir)
            .with_context(|| format!("failed to open the spool dir {}", dir.display()))?;
        let segment_bytes = (max_bytes / 16).clamp(1024, 8 << 20);
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            reserve: 0,
            batch_cap: usize::try_from(max_bytes / 4).unwrap_or(usize::MAX),
            lanes: Default::default(),
            report: None,
            next_seq: 0,
            next_segment: 0,
            total_bytes: 0,
            unreported_drops: [0; 4],
            dropped_total: [0; 4],
            recovery: Recovery::default(),
            dirty: Vec::new(),
            dir_dirty: false,
            dir_handle: Arc::new(dir_handle),
            _lock: lock,
        };
        // Room for two reports (one being exported, one new) of the largest counts, at most
        // half of the spool.
        let report = encode_alert(&spool.drop_alert([u64::MAX; 4]));
        spool.reserve = (2 * (HEADER + report.len()) as u64).min(max_bytes / 2);
        spool.recover()?;
        // The limit may have been lowered since the last run.
        spool.make_room(0, Severity::Critical, &mut Appended::default())?;
        Ok(spool)
    }

    fn recover(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let mut segments = Vec::new();
        let mut ack_files = Vec::new();
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("failed to read the spool dir {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let Some((lane, id, is_segment)) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            if is_segment {
                segments.push((lane, id));
            } else {
                ack_files.push((lane, id, entry.path()));
            }
            self.next_segment = self.next_segment.max(id + 1);
        }
        segments.sort_by_key(|&(_, id)| id);
        for (lane_i, id) in segments {
            let name = segment_name(lane_i, id);
            let path = dir.join(&name);
            let ack_path = path.with_extension("ack");
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) => {
                    warn!("failed to read spool segment {}: {e}", path.display());
                    continue;
                }
            };
            self.recovery.segments += 1;
            let found = scan_segment(&data, &mut self.recovery, &name);
            let acked: std::collections::HashSet<u64> = read_acks(&ack_path)
                .with_context(|| format!("failed to read {}", ack_path.display()))?
                .into_iter()
                .collect();
            let lane = &mut self.lanes[lane_i];
            let mut pending = 0;
            for record in &found {
                self.next_seq = self.next_seq.max(record.seq + 1);
                if !acked.contains(&record.seq) {
                    pending += 1;
                    lane.pending.insert(
                        record.seq,
                        Entry {
                            segment: id,
                            offset: record.offset,
                            len: record.len,
                            in_flight: false,
                        },
                    );
                }
            }
            self.recovery.records += found.len();
            self.recovery.pending += pending;
            let segment = Segment {
                path,
                ack_path,
                bytes: data.len() as u64,
                pending,
                writer: None,
                reader: None,
                acks: None,
            };
            if pending == 0 {
                self.remove_files(&segment);
            } else {
                self.total_bytes += segment.bytes;
                lane.segments.insert(id, segment);
            }
        }
        // Ack files whose segment is gone: the removal was cut short.
        for (lane, id, path) in ack_files {
            if !self.lanes[lane].segments.contains_key(&id) {
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!("failed to remove {}: {e}", path.display());
                }
            }
        }
        // The newest report a previous run left: the next report may replace it.
        if let Some(&seq) = self.lanes[NOTICE_LANE].pending.keys().next_back() {
            let id = RecordId {
                lane: NOTICE_LANE,
                seq,
            };
            if let Some(alert) = self.read_record(id)? {
                self.report = Some(PendingReport {
                    id,
                    counts: report_counts(&alert),
                    handed_out: false,
                });
            }
        }
        if self.recovery.segments > 0 {
            debug!(
                "spool {}: {} segments, {} records, {} to export",
                dir.display(),
                self.recovery.segments,
                self.recovery.records,
                self.recovery.pending
            );
        }
        Ok(())
    }

    /// What start-up recovered.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Records not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.lanes.iter().map(|l| l.pending.len()).sum()
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counts alerts lost on their way to the spool (a full in-memory queue, a full dead-letter
    /// store) with the spool's own drops: the next `spool-dropped` report includes them.
    pub fn count_lost(&mut self, by_severity: [u64; 4]) {
        for (i, n) in by_severity.into_iter().enumerate() {
            self.unreported_drops[i] += n;
            self.dropped_total[i] += n;
        }
    }

    /// Bytes of the segment files (what counts against `max_bytes`).
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Alerts dropped since start-up, by severity (`Low..=Critical`).
    pub fn dropped_total(&self) -> [u64; 4] {
        self.dropped_total
    }

    /// Writes an alert to the spool (one `write`; durable after the next [`Spool::sync`]).
    /// When the spool is full, whole oldest segments of the lowest severity are dropped first;
    /// if only alerts more severe than this one are left, this one is dropped instead.
    pub fn append(&mut self, alert: &Alert) -> io::Result<Appended> {
        let payload = encode_alert(alert);
        let record_bytes = (HEADER + payload.len()) as u64;
        let severity = alert.severity;
        let mut appended = Appended::default();
        if record_bytes > self.max_bytes.saturating_sub(self.reserve)
            || !self.make_room(record_bytes, severity, &mut appended)?
        {
            self.count_drop(severity, 1, &mut appended);
            return Ok(appended);
        }
        appended.stored = Some(self.write_record(lane_index(severity), &payload)?);
        Ok(appended)
    }

    /// Spools a `spool-dropped` alert (rule [`DROPPED_RULE`], severity high,
    /// `monitor.spool.dropped.<severity>` counts) for the drops since the last report, if any,
    /// and returns a report of those drops alone for the other outputs.
    ///
    /// Reports go to the notice lane, which is never dropped and has room reserved, so every
    /// drop is reported exactly once: a report not yet handed to the exporter is replaced by
    /// one with the sum of both counts. When the report cannot be written (the disk is full),
    /// its counts stay due for the next call.
    pub fn append_drop_report(&mut self) -> io::Result<Option<Alert>> {
        if self.unreported_drops.iter().all(|&n| n == 0) {
            return Ok(None);
        }
        let drops = std::mem::take(&mut self.unreported_drops);
        let replaced = self
            .report
            .filter(|r| !r.handed_out && self.lanes[NOTICE_LANE].pending.contains_key(&r.id.seq));
        let mut counts = drops;
        if let Some(old) = replaced {
            for (c, n) in counts.iter_mut().zip(old.counts) {
                *c += n;
            }
        }
        let spooled = self.drop_alert(counts);
        match self.write_record(NOTICE_LANE, &encode_alert(&spooled)) {
            Ok(id) => {
                // The new report is on disk before the old one is marked done: a crash in
                // between sends both (counts twice), never neither.
                if let Some(old) = replaced {
                    self.ack(&[old.id])?;
                }
                self.report = Some(PendingReport {
                    id,
                    counts,
                    handed_out: false,
                });
                // Each notice in a segment of its own, removed as soon as it is done.
                self.retire_active(NOTICE_LANE);
                Ok(Some(self.drop_alert(drops)))
            }
            Err(e) => {
                for (unreported, n) in self.unreported_drops.iter_mut().zip(drops) {
                    *unreported += n;
                }
                Err(e)
            }
        }
    }

    /// Appends one record to the lane's active segment.
    fn write_record(&mut self, lane_i: usize, payload: &[u8]) -> io::Result<RecordId> {
        let record_bytes = (HEADER + payload.len()) as u64;
        let seq = self.next_seq;
        self.next_seq += 1;
        let segment_id = self.active_segment(lane_i)?;
        let buf = encode_record(seq, payload);
        let lane = &mut self.lanes[lane_i];
        let segment = lane
            .segments
            .get_mut(&segment_id)
            .expect("active segment exists");
        let writer = segment.writer.clone().expect("active segment has a writer");
        let offset = segment.bytes;
        if let Err(e) = (&*writer).write_all(&buf) {
            // Part of the record may be on disk: never append after it, start a new segment.
            let on_disk = writer.metadata().map_or(offset, |m| m.len()).max(offset);
            segment.bytes = on_disk;
            self.total_bytes += on_disk - offset;
            self.retire_active(lane_i);
            return Err(e);
        }
        segment.bytes += record_bytes;
        segment.pending += 1;
        let full = segment.bytes >= self.segment_bytes;
        lane.pending.insert(
            seq,
            Entry {
                segment: segment_id,
                offset,
                len: payload.len(),
                in_flight: false,
            },
        );
        self.total_bytes += record_bytes;
        self.dirty.push(writer);
        if full {
            self.retire_active(lane_i);
        }
        Ok(RecordId { lane: lane_i, seq })
    }

    fn count_drop(&mut self, severity: Severity, n: u64, appended: &mut Appended) {
        let i = lane_index(severity);
        appended.dropped[i] += n;
        self.unreported_drops[i] += n;
        self.dropped_total[i] += n;
    }

    /// Bytes of the alert lanes (all but the notices).
    fn alert_bytes(&self) -> u64 {
        let notices: u64 = self.lanes[NOTICE_LANE]
            .segments
            .values()
            .map(|s| s.bytes)
            .sum();
        self.total_bytes - notices
    }

    /// Drops whole segments, lowest severity and oldest first, until `record_bytes` more fit
    /// beside the room reserved for notices. False when only segments more severe than
    /// `severity` are left to drop.
    fn make_room(
        &mut self,
        record_bytes: u64,
        severity: Severity,
        appended: &mut Appended,
    ) -> io::Result<bool> {
        let limit = self.max_bytes.saturating_sub(self.reserve);
        while self.alert_bytes() + record_bytes > limit {
            // The oldest segment of the lowest severity, up to this alert's, that holds no
            // record in flight.
            let victim = SEVERITIES
                .into_iter()
                .filter(|&s| s <= severity)
                .find_map(|s| {
                    let lane = &self.lanes[lane_index(s)];
                    lane.segments
                        .keys()
                        .find(|&&id| {
                            !lane
                                .pending
                                .values()
                                .any(|e| e.segment == id && e.in_flight)
                        })
                        .map(|&id| (s, id))
                });
            let Some((victim_severity, id)) = victim else {
                return Ok(false);
            };
            let lane = &mut self.lanes[lane_index(victim_severity)];
            let segment = lane.segments.remove(&id).expect("segment exists");
            if lane.active == Some(id) {
                lane.active = None;
            }
            let before = lane.pending.len();
            lane.pending.retain(|_, e| e.segment != id);
            let dropped = (before - lane.pending.len()) as u64;
            self.total_bytes -= segment.bytes;
            self.remove_files(&segment);
            if dropped > 0 {
                warn!(
                    "spool full ({} bytes): dropped the {dropped} oldest {} alerts",
                    self.max_bytes,
                    victim_severity.name()
                );
                self.count_drop(victim_severity, dropped, appended);
            }
        }
        Ok(true)
    }

    /// The lane's segment to append to, created when there is none.
    fn active_segment(&mut self, lane_i: usize) -> io::Result<u64> {
        if let Some(id) = self.lanes[lane_i].active {
            return Ok(id);
        }
        let id = self.next_segment;
        self.next_segment += 1;
        let path = self.dir.join(segment_name(lane_i, id));
        let file = open_private(&path, true)?;
        self.dir_dirty = true;
        let lane = &mut self.lanes[lane_i];
        lane.segments.insert(
            id,
            Segment {
                ack_path: path.with_extension("ack"),
                path,
                bytes: 0,
                pending: 0,
                writer: Some(Arc::new(file)),
                reader: None,
                acks: None,
            },
        );
        lane.active = Some(id);
        Ok(id)
    }

    /// Stops appending to the lane's active segment; removes it if nothing in it is pending.
    fn retire_active(&mut self, lane_i: usize) {
        let lane = &mut self.lanes[lane_i];
        let Some(id) = lane.active.take() else { return };
        let Some(segment) = lane.segments.get_mut(&id) else {
            return;
        };
        if let Some(writer) = segment.writer.take() {
            self.dirty.push(writer);
        }
        if segment.pending == 0 {
            let segment = lane.segments.remove(&id).expect("segment exists");
            self.total_bytes -= segment.bytes;
            self.remove_files(&segment);
        }
    }
    fn remove_files(&mut self, segment: &Segment) {
        // The segment first: an ack file without its segment is cleaned up at start-up, a
        // segment without its acks would be sent again.
        if let Err(e) = std::fs::remove_file(&segment.path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(
                    "failed to remove spool segment {}: {e}",
                    segment.path.display()
                );
            }
        }
        let _ = std::fs::remove_file(&segment.ack_path);
        self.dir_dirty = true;
    }

    /// Up to `max_records` pending records (and about `max_bytes` of them, at most a quarter of
    /// the spool: records in flight are not dropped to make room, and the rest must be able
    /// to make it), oldest first.
    /// Records that cannot be read back (corrupt since written, or undecodable) are dropped
    /// with a warning and counted in the returned number.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<Spooled>, usize)> {
        let mut cursors: [std::collections::btree_map::Iter<'_, u64, Entry>; LANES] =
            std::array::from_fn(|i| self.lanes[i].pending.iter());
        let mut picked: Vec<(RecordId, u64, u64, usize)> = Vec::new();
        let mut peeked: [Option<(u64, u64, u64, usize)>; LANES] = std::array::from_fn(|i| {
            cursors[i]
                .next()
                .map(|(&seq, e)| (seq, e.segment, e.offset, e.len))
        });
        let max_bytes = max_bytes.min(self.batch_cap);
        let mut bytes = 0;
        while picked.len() < max_records && (picked.is_empty() || bytes < max_bytes) {
            let Some(i) = (0..LANES)
                .filter(|&i| peeked[i].is_some())
                .min_by_key(|&i| peeked[i].unwrap().0)
            else {
                break;
            };
            let (seq, segment, offset, len) = peeked[i].unwrap();
            picked.push((RecordId { lane: i, seq }, segment, offset, len));
            bytes += HEADER + len;
            peeked[i] = cursors[i]
                .next()
                .map(|(&seq, e)| (seq, e.segment, e.offset, e.len));
        }
        drop(cursors);
        for (id, ..) in &picked {
            if let Some(entry) = self.lanes[id.lane].pending.get_mut(&id.seq) {
                entry.in_flight = true;
            }
        }
        let mut batch = Vec::with_capacity(picked.len());
        let mut bad = Vec::new();
        for (id, segment_id, offset, len) in picked {
            if let Some(report) = self.report.as_mut().filter(|r| r.id == id) {
                report.handed_out = true;
            }
            let segment = self.lanes[id.lane]
                .segments
                .get_mut(&segment_id)
                .expect("pending record's segment exists");
            let read = Self::read_at(segment, id.seq, offset, len);
            let alert = read.map(|alert| alert.1);
            match alert {
                Ok(alert) => batch.push(Spooled {
                    id,
                    alert,
                    bytes: HEADER + len,
                }),
                Err(e) => {
                    warn!(
                        "dropping spooled record {} of {}: {e:#}",
                        id.seq,
                        segment.path.display()
                    );
                    bad.push(id);
                }
            }
        }
        let dropped = bad.len();
        if !bad.is_empty() {
            self.ack(&bad)?;
        }
        Ok((batch, dropped))
    }

    /// Reads back and decodes the record `seq` at `offset` of a segment.
    fn read_at(
        segment: &mut Segment,
        seq: u64,
        offset: u64,
        len: usize,
    ) -> anyhow::Result<(usize, Alert)> {
        if segment.reader.is_none() {
            segment.reader = Some(File::open(&segment.path)?);
        }
        let mut buf = vec![0u8; HEADER + len];
        segment
            .reader
            .as_ref()
            .expect("opened above")
            .read_exact_at(&mut buf, offset)?;
        match parse_record(&buf, 0) {
            Some((found, _)) if found == seq => Ok((buf.len(), decode_alert(&buf[HEADER..])?)),
            _ => anyhow::bail!("the record fails its CRC check"),
        }
    }

    /// A pending record, read back; `None` (and a warning) when it cannot be.
    fn read_record(&mut self, id: RecordId) -> io::Result<Option<Alert>> {
        let lane = &mut self.lanes[id.lane];
        let Some(entry) = lane.pending.get(&id.seq) else {
            return Ok(None);
        };
        let (segment_id, offset, len) = (entry.segment, entry.offset, entry.len);
        let Some(segment) = lane.segments.get_mut(&segment_id) else {
            return Ok(None);
        };
        match Self::read_at(segment, id.seq, offset, len) {
            Ok((_, alert)) => Ok(Some(alert)),
            Err(e) => {
                warn!(
                    "failed to read spooled record {} of {}: {e:#}",
                    id.seq,
                    segment.path.display()
                );
                Ok(None)
            }
        }
    }

    /// Marks records as done (exported, or rejected for good). Segments with nothing left
    /// pending are removed, except the one each lane is appending to.
    pub fn ack(&mut self, ids: &[RecordId]) -> io::Result<()> {
        let mut entries: BTreeMap<(usize, u64), Vec<u8>> = BTreeMap::new();
        for id in ids {
            let lane = id.lane;
            if self.report.is_some_and(|r| r.id == *id) {
                self.report = None;
            }
            // Unknown ids belong to segments dropped while the batch was out: nothing to do.
            let Some(entry) = self.lanes[lane].pending.remove(&id.seq) else {
                continue;
            };
            let buf = entries.entry((lane, entry.segment)).or_default();
            buf.extend_from_slice(&id.seq.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&id.seq.to_le_bytes()).to_le_bytes());
        }
        let mut result = Ok(());
        for ((lane_i, segment_id), buf) in entries {
            let lane = &mut self.lanes[lane_i];
            let segment = lane
                .segments
                .get_mut(&segment_id)
                .expect("pending record's segment exists");
            segment.pending -= buf.len() / ACK_ENTRY;
            if segment.pending == 0 && lane.active != Some(segment_id) {
                let segment = lane.segments.remove(&segment_id).expect("segment exists");
                self.total_bytes -= segment.bytes;
                self.remove_files(&segment);
                continue;
            }
            if segment.acks.is_none() {
                match open_private(&segment.ack_path, false) {
                    Ok(file) => {
                        segment.acks = Some(Arc::new(file));
                        self.dir_dirty = true;
                    }
                    Err(e) => {
                        result = Err(e);
                        continue;
                    }
                }
            }
            let acks = segment.acks.clone().unwrap();
            if let Err(e) = (&*acks).write_all(&buf) {
                result = Err(e);
            }
            self.dirty.push(acks);
        }
        result
    }

    /// The files to sync: run [`PendingSync::run`] outside the lock that guards the spool.
    pub fn pending_sync(&mut self) -> PendingSync {
        let mut files = std::mem::take(&mut self.dirty);
        files.sort_by_key(|f| Arc::as_ptr(f) as usize);
        files.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir_handle.clone());
        PendingSync { files, dir }
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.pending_sync().run()
    }

    /// A `spool-dropped` report of these counts, by severity (`Low..=Critical`).
    fn drop_alert(&self, counts: [u64; 4]) -> Alert {
        let mut attributes = Map::new();
        for (severity, n) in SEVERITIES.iter().zip(counts) {
            attributes.insert(
                format!("monitor.spool.dropped.{}", severity.name()),
                Value::from(n),
            );
        }
        attributes.insert(
            "monitor.spool.max_bytes".into(),
            Value::from(self.max_bytes),
        );
        attributes.insert(
            "monitor.spool.dir".into(),
            Value::from(self.dir.display().to_string()),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Alert {
            rule: DROPPED_RULE.into(),
            severity: Severity::High,
            action: Action::Alert,
            profile: None,
            time_unix_ns: now,
            observed_unix_ns: now,
            count: 1,
            uid: crate::event::alert::new_uid(),
            attributes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) use crate::test_support::TempDir;

    fn alert(severity: Severity, n: usize) -> Alert {
        let mut attributes = Map::new();
        attributes.insert("process.pid".into(), Value::from(n));
        attributes.insert(
            "process.command_args".into(),
            serde_json::json!(["/bin/true", "x"]),
        );
        Alert {
            rule: format!("rule-{n}"),
            severity,
            action: Action::Alert,
            profile: Some("vllm".into()),
            time_unix_ns: 1_700_000_000_000_000_000 + n as i128,
            observed_unix_ns: 1_700_000_000_000_000_100 + n as i128,
            count: 1,
            uid: crate::event::alert::new_uid(),
            attributes,
        }
    }

    /// Every pending record, in one batch (the exporter's are smaller).
    fn all(spool: &mut Spool) -> Vec<Spooled> {
        let cap = std::mem::replace(&mut spool.batch_cap, usize::MAX);
        let batch = spool.next_batch(usize::MAX, usize::MAX).unwrap().0;
        spool.batch_cap = cap;
        batch
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn append_ack_reopen() {
        let dir = TempDir::new("basic");
        let alerts: Vec<Alert> = (0..10).map(|n| alert(SEVERITIES[n % 4], n)).collect();
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        for a in &alerts {
            assert!(spool.append(a).unwrap().stored.is_some());
        }
        spool.sync().unwrap();
        let batch = all(&mut spool);
        // Oldest first across severities, and read back unchanged.
        let read: Vec<&Alert> = batch.iter().map(|s| &s.alert).collect();
        assert_eq!(read, alerts.iter().collect::<Vec<_>>());
        let acked: Vec<RecordId> = batch[..4].iter().map(|s| s.id).collect();
        spool.ack(&acked).unwrap();
        assert_eq!(spool.pending(), 6);
        drop(spool);

        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(spool.recovery().pending, 6);
        assert_eq!(spool.recovery().corrupt_regions, 0);
        let rest: Vec<Alert> = all(&mut spool).into_iter().map(|s| s.alert).collect();
        assert_eq!(rest, alerts[4..].to_vec());
        // A new record gets a sequence after the old ones.
        spool.append(&alert(Severity::Low, 99)).unwrap();
        let batch = all(&mut spool);
        assert_eq!(batch.last().unwrap().alert.rule, "rule-99");
        let ids: Vec<RecordId> = batch.iter().map(|s| s.id).collect();
        spool.ack(&ids).unwrap();
        assert_eq!(spool.pending(), 0);
        drop(spool);
        // Old segments with nothing pending are removed at the next start.
        let spool = Spool::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(spool.pending(), 0);
        assert!(segments(&dir.0).len() <= 1, "{:?}", segments(&dir.0));
    }

    #[test]
    fn restart_keeps_unacked_records() {
        let dir = TempDir::new("restart");
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let a = alert(Severity::Critical, 1);
        spool.append(&a).unwrap();
        // No sync, no ack: a crash of the process right after the write.
        drop(spool);
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let batch = all(&mut spool);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].alert, a);
    }

    #[test]
    fn second_open_of_a_dir_in_use_fails() {
        let dir = TempDir::new("lock");
        let _spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let err = Spool::open(&dir.0, 1 << 20).err().unwrap().to_string();
        assert!(err.contains("--spool-dir"), "{err}");
    }

    #[test]
    fn unwritable_dir_names_the_flag() {
        let err = Spool::open(Path::new("/proc/monitor-spool"), 1 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/proc/monitor-spool"), "{err}");
        assert!(err.contains("--spool-dir"), "{err}");
    }

    #[test]
    fn truncated_tail_is_recovered_up_to_the_last_whole_record() {
        let dir = TempDir::new("torn");
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        for n in 0..5 {
            spool.append(&alert(Severity::High, n)).unwrap();
        }
        drop(spool);
        let segment = &segments(&dir.0)[0];
        let len = std::fs::metadata(segment).unwrap().len();
        // Power lost in the middle of the last record.
        OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        let recovery = spool.recovery();
        assert_eq!(recovery.records, 4);
        assert_eq!(recovery.corrupt_regions, 1);
        assert!(recovery.corrupt_bytes > 0);
        let rules: Vec<String> = all(&mut spool).into_iter().map(|s| s.alert.rule).collect();
        assert_eq!(rules, ["rule-0", "rule-1", "rule-2", "rule-3"]);
        // New records go to a new segment, and survive the next restart.
        spool.append(&alert(Severity::High, 5)).unwrap();
        drop(spool);
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(all(&mut spool).len(), 5);
    }

    #[test]
    fn flipped_byte_loses_only_that_record() {
        let dir = TempDir::new("flip");
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        for n in 0..5 {
            spool.append(&alert(Severity::Low, n)).unwrap();
        }
        drop(spool);
        let segment = &segments(&dir.0)[0];
        let mut data = std::fs::read(segment).unwrap();
        let record = data.len() / 5;
        // A byte in the payload of the third record.
        data[2 * record + HEADER + 10] ^= 0x40;
        std::fs::write(segment, &data).unwrap();
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(spool.recovery().corrupt_regions, 1);
        assert_eq!(spool.recovery().corrupt_bytes, record as u64);
        let rules: Vec<String> = all(&mut spool).into_iter().map(|s| s.alert.rule).collect();
        assert_eq!(rules, ["rule-0", "rule-1", "rule-3", "rule-4"]);
    }

    #[test]
    fn garbage_segment_does_not_stop_start_up() {
        let dir = TempDir::new("garbage");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("low-0000000000000007.seg"), b"MSP1 not a record").unwrap();
        std::fs::write(dir.0.join("high-0000000000000003.ack"), b"orphan").unwrap();
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(spool.recovery().corrupt_regions, 1);
        assert_eq!(spool.pending(), 0);
        assert!(!dir.0.join("high-0000000000000003.ack").exists());
        // Segment ids continue after the highest seen.
        let id = spool.append(&alert(Severity::Low, 1)).unwrap();
        assert!(id.stored.is_some());
        assert!(dir.0.join("low-0000000000000008.seg").exists());
    }

    fn add(total: &mut [u64; 4], appended: Appended) {
        for (t, n) in total.iter_mut().zip(appended.dropped) {
            *t += n;
        }
    }

    /// Room a spool in `dir` keeps for its notices (about the same for any limit).
    fn reserve(dir: &Path) -> u64 {
        let probe = dir.with_extension("probe");
        let reserve = Spool::open(&probe, 1 << 20).unwrap().reserve;
        std::fs::remove_dir_all(&probe).unwrap();
        reserve
    }

    #[test]
    fn full_spool_drops_low_before_critical() {
        let dir = TempDir::new("full");
        // Critical records are the largest ("critical" is the longest severity name).
        let one = encode_record(0, &encode_alert(&alert(Severity::Critical, 10))).len() as u64;
        // Room for 20 records beside the notices; segments of 1 KiB (a few records each).
        let max = one * 20 + reserve(&dir.0);
        let mut spool = Spool::open(&dir.0, max).unwrap();
        for n in 10..20 {
            let appended = spool.append(&alert(Severity::Critical, n)).unwrap();
            assert!(appended.stored.is_some() && appended.dropped == [0; 4]);
        }
        for n in 20..30 {
            let appended = spool.append(&alert(Severity::Low, n)).unwrap();
            assert!(appended.stored.is_some() && appended.dropped == [0; 4]);
        }
        // Five more criticals do not fit: low ones go, oldest first.
        let mut dropped = [0; 4];
        for n in 30..35 {
            let appended = spool.append(&alert(Severity::Critical, n)).unwrap();
            assert!(appended.stored.is_some());
            add(&mut dropped, appended);
        }
        assert!(dropped[0] >= 5, "{dropped:?}");
        assert_eq!(dropped[1..], [0, 0, 0]);
        assert!(spool.bytes() <= max);
        let batch = all(&mut spool);
        let severities = |s: Severity| batch.iter().filter(|r| r.alert.severity == s).count();
        assert_eq!(severities(Severity::Critical), 15);
        let lows: Vec<&str> = batch
            .iter()
            .filter(|s| s.alert.severity == Severity::Low)
            .map(|s| s.alert.rule.as_str())
            .collect();
        assert_eq!(lows.len() as u64, 10 - dropped[0]);
        // The newest low ones are the ones kept.
        assert_eq!(lows.last(), Some(&"rule-29"));

        // The drops are reported by an alert of their own, which is spooled too.
        let report = spool.append_drop_report().unwrap().expect("a report");
        assert_eq!(report.attributes["monitor.spool.dropped.low"], dropped[0]);
        assert!(spool.append_drop_report().unwrap().is_none());
        let batch = all(&mut spool);
        let report = &batch
            .iter()
            .find(|s| s.alert.rule == DROPPED_RULE)
            .unwrap()
            .alert;
        assert_eq!(report.severity, Severity::High);
        assert_eq!(report.attributes["monitor.spool.dropped.low"], dropped[0]);
        assert_eq!(report.attributes["monitor.spool.dropped.medium"], 0);
        assert_eq!(report.attributes["monitor.spool.dropped.critical"], 0);
        assert!(spool.bytes() <= max);
    }

    #[test]
    fn alert_less_severe_than_everything_spooled_is_dropped_itself() {
        let dir = TempDir::new("full-critical");
        let one = encode_record(0, &encode_alert(&alert(Severity::Critical, 10))).len() as u64;
        let max = one * 5 + reserve(&dir.0);
        let mut spool = Spool::open(&dir.0, max).unwrap();
        for n in 10..15 {
            assert!(spool
                .append(&alert(Severity::Critical, n))
                .unwrap()
                .stored
                .is_some());
        }
        let appended = spool.append(&alert(Severity::Low, 15)).unwrap();
        assert_eq!(appended.stored, None);
        assert_eq!(appended.dropped, [1, 0, 0, 0]);
        // The report (high) still fits: the notices have room of their own.
        let report = spool.append_drop_report().unwrap().expect("a report");
        assert_eq!(report.attributes["monitor.spool.dropped.low"], 1);
        assert_eq!(spool.dropped_total(), [1, 0, 0, 0]);
        let batch = all(&mut spool);
        assert_eq!(batch.len(), 6);
        assert_eq!(batch[5].alert.rule, DROPPED_RULE);
        assert_eq!(batch[5].alert.attributes["monitor.spool.dropped.low"], 1);
        assert!(spool.bytes() <= max);
    }

    /// The `spool-dropped` counts of every report pending in the spool, summed.
    fn reported(spool: &mut Spool) -> [u64; 4] {
        let mut sum = [0; 4];
        for s in all(spool) {
            if s.alert.rule == DROPPED_RULE {
                for (t, n) in sum.iter_mut().zip(report_counts(&s.alert)) {
                    *t += n;
                }
            }
        }
        sum
    }

    #[test]
    fn drop_counts_add_up_exactly_and_reports_are_never_dropped() {
        let dir = TempDir::new("exact");
        let one = encode_record(0, &encode_alert(&alert(Severity::High, 10))).len() as u64;
        // A tiny spool: room for about 8 alerts; reports are high, like the alerts that
        // push each other out, and must survive them.
        let max = one * 8 + reserve(&dir.0);
        let mut spool = Spool::open(&dir.0, max).unwrap();
        let mut appended_total = 0;
        let mut delivered_alerts = 0;
        let mut delivered_counts = [0; 4];
        for n in 0..200 {
            let severity = SEVERITIES[n % 3];
            spool.append(&alert(severity, n)).unwrap();
            appended_total += 1;
            if n % 7 == 0 {
                spool.append_drop_report().unwrap();
            }
            if n % 50 == 0 {
                // The exporter takes a batch: a report handed out is not replaced (a second
                // one follows) until it is delivered.
                let batch = all(&mut spool);
                spool.append(&alert(Severity::High, n)).unwrap();
                appended_total += 1;
                spool.append_drop_report().unwrap();
                for s in &batch {
                    if s.alert.rule == DROPPED_RULE {
                        for (t, n) in delivered_counts.iter_mut().zip(report_counts(&s.alert)) {
                            *t += n;
                        }
                    } else {
                        delivered_alerts += 1;
                    }
                }
                let ids: Vec<RecordId> = batch.iter().map(|s| s.id).collect();
                spool.ack(&ids).unwrap();
            }
            assert!(spool.bytes() <= max, "{} > {max}", spool.bytes());
        }
        spool.append_drop_report().unwrap();
        let dropped: u64 = spool.dropped_total().iter().sum();
        assert!(dropped > 100, "{dropped}");
        let kept = all(&mut spool)
            .iter()
            .filter(|s| s.alert.rule != DROPPED_RULE)
            .count() as u64;
        assert_eq!(kept + delivered_alerts + dropped, appended_total);
        // Every drop is in exactly one report, delivered or pending.
        let pending = reported(&mut spool);
        let reported_total: [u64; 4] = std::array::from_fn(|i| pending[i] + delivered_counts[i]);
        assert_eq!(reported_total, spool.dropped_total());
        let reports = all(&mut spool)
            .iter()
            .filter(|s| s.alert.rule == DROPPED_RULE)
            .count();
        assert!((1..=2).contains(&reports), "{reports} reports pending");
        // And across a restart: the reports left pending and the new drops add up.
        let first_run = reported(&mut spool);
        drop(spool);
        let mut spool = Spool::open(&dir.0, max).unwrap();
        assert_eq!(spool.dropped_total(), [0; 4]);
        for n in 0..20 {
            spool.append(&alert(Severity::Low, 1000 + n)).unwrap();
        }
        let second_run = spool.dropped_total();
        assert!(second_run[0] > 0);
        spool.append_drop_report().unwrap();
        let expected: [u64; 4] = std::array::from_fn(|i| first_run[i] + second_run[i]);
        assert_eq!(reported(&mut spool), expected);
    }

    #[test]
    fn records_of_the_earlier_format_are_read() {
        // A payload as the spool wrote it when it stored a mirror of the alert.
        let old = br#"{"uid":"0123456789abcdef0123456789abcdef","rule":"exec-not-allowed","severity":"high","action":"would-deny","profile":"vllm","time_unix_ns":1700000000000000000,"observed_unix_ns":1700000000000000100,"count":3,"attributes":{"process.pid":42}}"#;
        let alert = decode_alert(old).unwrap();
        assert_eq!(alert.rule, "exec-not-allowed");
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.action, Action::WouldDeny);
        assert_eq!(alert.profile.as_deref(), Some("vllm"));
        assert_eq!(alert.count, 3);
        assert_eq!(alert.attributes["process.pid"], 42);
        // And what is written now reads back the same.
        assert_eq!(decode_alert(&encode_alert(&alert)).unwrap(), alert);
        let without_profile = br#"{"uid":"u","rule":"r","severity":"low","action":"alert","time_unix_ns":1,"observed_unix_ns":2,"count":1,"attributes":{}}"#;
        assert_eq!(decode_alert(without_profile).unwrap().profile, None);
    }

    #[test]
    fn files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("modes");
        // SAFETY: umask only changes the modes of files created meanwhile.
        let old = unsafe { libc::umask(0) };
        let mut spool = Spool::open(&dir.0.join("spool"), 1 << 20).unwrap();
        let appended = spool.append(&alert(Severity::Low, 1)).unwrap();
        spool.ack(&[appended.stored.unwrap()]).unwrap();
        spool.append(&alert(Severity::Low, 2)).unwrap();
        unsafe { libc::umask(old) };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.0.join("spool")), 0o700);
        let files: Vec<PathBuf> = std::fs::read_dir(dir.0.join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "ack")));
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn lower_limit_at_restart_drops_at_open() {
        let dir = TempDir::new("shrink");
        let one = encode_record(0, &encode_alert(&alert(Severity::Low, 10))).len() as u64;
        let mut spool = Spool::open(&dir.0, one * 100).unwrap();
        for n in 10..40 {
            spool.append(&alert(SEVERITIES[n % 2 * 3], n)).unwrap();
        }
        drop(spool);
        let max = one * 16 + reserve(&dir.0);
        let mut spool = Spool::open(&dir.0, max).unwrap();
        assert!(spool.bytes() <= max);
        let batch = all(&mut spool);
        assert!(batch.iter().all(|s| s.alert.severity == Severity::Critical));
        assert_eq!(batch.len(), 15);
        assert_eq!(spool.dropped_total(), [15, 0, 0, 0]);
    }

    #[test]
    fn acked_segments_are_reclaimed() {
        let dir = TempDir::new("reclaim");
        let one = encode_record(0, &encode_alert(&alert(Severity::Medium, 10))).len() as u64;
        let mut spool = Spool::open(&dir.0, one * 400).unwrap();
        for n in 0..100 {
            spool.append(&alert(Severity::Medium, n)).unwrap();
        }
        assert!(segments(&dir.0).len() > 3);
        let ids: Vec<RecordId> = all(&mut spool).iter().map(|s| s.id).collect();
        spool.ack(&ids).unwrap();
        spool.sync().unwrap();
        // Only the segment being appended to is left.
        assert_eq!(segments(&dir.0).len(), 1);
        assert_eq!(spool.pending(), 0);
        assert!(spool.bytes() <= spool.segment_bytes + one);
    }

    #[test]
    fn batches_respect_limits_and_order() {
        let dir = TempDir::new("batch");
        let mut spool = Spool::open(&dir.0, 1 << 20).unwrap();
        for n in 0..30 {
            spool.append(&alert(SEVERITIES[(n * 7) % 4], n)).unwrap();
        }
        let (batch, bad) = spool.next_batch(10, usize::MAX).unwrap();
        assert_eq!(bad, 0);
        assert_eq!(batch.len(), 10);
        let seqs: Vec<u64> = batch.iter().map(|s| s.id.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        let (batch, _) = spool.next_batch(100, 1).unwrap();
        assert_eq!(
            batch.len(),
            1,
            "at least one record, even over the byte limit"
        );
    }
}
