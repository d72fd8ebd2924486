//! A durable on-disk spool of alerts: every alert is written here before it is exported, and
//! removed only once the collector has accepted it, so an outage or a restart loses nothing.
//!
//! Layout of the spool directory:
//! - `lock`: held with `flock` while a monitor uses the directory.
//! - `<severity>-<id>.seg`: segments, append-only files of records. Each severity has its own
//!   chain of segments (a "lane"), so that dropping "the oldest alerts of the lowest severity"
//!   frees whole files, never rewrites one.
//! - `<severity>-<id>.ack`: the sequence numbers of the records of that segment that are done
//!   (exported, or rejected for good). A segment and its ack file are deleted together once
//!   every record in the segment is done.
//!
//! A record is `magic "MSP1" | payload length u32 | sequence u64 | crc32 u32 | payload`, all
//! little-endian; the CRC covers the length, the sequence and the payload. The payload is the
//! alert as JSON. Sequence numbers grow across lanes and restarts: the exporter sends in that
//! order. An ack entry is `sequence u64 | crc32 u32` of those 8 bytes.
//!
//! Crash safety: records and acks are written with one `write` each (they survive a crash of
//! the process at once) and made durable with `fdatasync` in batches ([`Spool::sync`], called
//! every 100 ms by the exporter). A torn or corrupt stretch of a segment is skipped at start-up
//! by scanning for the next record whose magic and CRC check out; what was skipped is logged and
//! counted. A lost ack only means a record is sent twice, with the same `log.record.uid`.
//! Old segments are never appended to: each run starts new ones.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::{fs::FileExt, io::AsRawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{debug, warn};

use crate::alert::{Action, Alert, Severity};

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

/// The rule of the alert that reports alerts the spool had to drop.
pub const DROPPED_RULE: &str = "spool-dropped";

fn lane_index(severity: Severity) -> usize {
    match severity {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
        Severity::Critical => 3,
    }
}

/// Identifies one spooled record: what [`Spool::ack`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    pub severity: Severity,
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

/// The alert as stored in a record.
#[derive(Serialize, Deserialize)]
struct Stored {
    uid: String,
    rule: String,
    severity: String,
    action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    time_unix_ns: i128,
    observed_unix_ns: i128,
    count: u64,
    attributes: Map<String, Value>,
}

fn action_from_name(name: &str) -> Option<Action> {
    [
        Action::Alert,
        Action::Denied,
        Action::Killed,
        Action::WouldDeny,
        Action::WouldKill,
    ]
    .into_iter()
    .find(|a| a.name() == name)
}

fn encode_alert(alert: &Alert) -> Vec<u8> {
    let stored = Stored {
        uid: alert.uid.clone(),
        rule: alert.rule.clone(),
        severity: alert.severity.name().into(),
        action: alert.action.name().into(),
        profile: alert.profile.clone(),
        time_unix_ns: alert.time_unix_ns,
        observed_unix_ns: alert.observed_unix_ns,
        count: alert.count,
        attributes: alert.attributes.clone(),
    };
    serde_json::to_vec(&stored).expect("an alert serializes to JSON")
}

fn decode_alert(payload: &[u8]) -> anyhow::Result<Alert> {
    let stored: Stored = serde_json::from_slice(payload)?;
    Ok(Alert {
        severity: Severity::from_name(&stored.severity)
            .with_context(|| format!("unknown severity {:?}", stored.severity))?,
        action: action_from_name(&stored.action)
            .with_context(|| format!("unknown action {:?}", stored.action))?,
        rule: stored.rule,
        profile: stored.profile,
        time_unix_ns: stored.time_unix_ns,
        observed_unix_ns: stored.observed_unix_ns,
        count: stored.count,
        uid: stored.uid,
        attributes: stored.attributes,
    })
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
    lanes: [Lane; 4],
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

fn segment_name(severity: Severity, id: u64) -> String {
    format!("{}-{id:016x}.seg", severity.name())
}

fn parse_segment_name(name: &str) -> Option<(Severity, u64, bool)> {
    let (stem, is_segment) = if let Some(stem) = name.strip_suffix(".seg") {
        (stem, true)
    } else {
        (name.strip_suffix(".ack")?, false)
    };
    let (severity, id) = stem.rsplit_once('-')?;
    Some((
        Severity::from_name(severity)?,
        u64::from_str_radix(id, 16).ok()?,
        is_segment,
    ))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovering what a previous run left.
    /// Corrupt stretches are skipped and reported, never fatal.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Spool> {
        let hint = "; pass --spool-dir DIR with a directory the monitor can write";
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create the spool dir {}{hint}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
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
            lanes: Default::default(),
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
            let Some((severity, id, is_segment)) = name.to_str().and_then(parse_segment_name)
            else {
                continue;
            };
            if is_segment {
                segments.push((severity, id));
            } else {
                ack_files.push((severity, id, entry.path()));
            }
            self.next_segment = self.next_segment.max(id + 1);
        }
        segments.sort_by_key(|&(_, id)| id);
        for (severity, id) in segments {
            let name = segment_name(severity, id);
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
            let lane = &mut self.lanes[lane_index(severity)];
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
        for (severity, id, path) in ack_files {
            if !self.lanes[lane_index(severity)].segments.contains_key(&id) {
                let _ = std::fs::remove_file(path);
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
        self.append_record(alert, true)
    }

    /// Spools a `spool-dropped` alert (rule [`DROPPED_RULE`], severity high,
    /// `monitor.spool.dropped.<severity>` counts) for the drops since the last report, if any.
    /// When the report does not fit either (only critical alerts are left), its counts are
    /// kept for the next try and the report is not counted as a drop of its own.
    pub fn append_drop_report(&mut self) -> io::Result<Option<Appended>> {
        let Some((report, drops)) = self.take_drop_alert() else {
            return Ok(None);
        };
        let appended = self.append_record(&report, false)?;
        if appended.stored.is_none() {
            for (unreported, n) in self.unreported_drops.iter_mut().zip(drops) {
                *unreported += n;
            }
        }
        Ok(Some(appended))
    }

    fn append_record(&mut self, alert: &Alert, count_own_drop: bool) -> io::Result<Appended> {
        let payload = encode_alert(alert);
        let record_bytes = (HEADER + payload.len()) as u64;
        let severity = alert.severity;
        let mut appended = Appended::default();
        if record_bytes > self.max_bytes
            || !self.make_room(record_bytes, severity, &mut appended)?
        {
            if count_own_drop {
                self.count_drop(severity, 1, &mut appended);
            }
            return Ok(appended);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let segment_id = self.active_segment(severity)?;
        let buf = encode_record(seq, &payload);
        let lane = &mut self.lanes[lane_index(severity)];
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
            self.retire_active(severity);
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
            },
        );
        self.total_bytes += record_bytes;
        self.dirty.push(writer);
        if full {
            self.retire_active(severity);
        }
        appended.stored = Some(RecordId { severity, seq });
        Ok(appended)
    }

    fn count_drop(&mut self, severity: Severity, n: u64, appended: &mut Appended) {
        let i = lane_index(severity);
        appended.dropped[i] += n;
        self.unreported_drops[i] += n;
        self.dropped_total[i] += n;
    }

    /// Drops whole segments, lowest severity and oldest first, until `record_bytes` more fit.
    /// False when only segments more severe than `severity` are left to drop.
    fn make_room(
        &mut self,
        record_bytes: u64,
        severity: Severity,
        appended: &mut Appended,
    ) -> io::Result<bool> {
        while self.total_bytes + record_bytes > self.max_bytes {
            let Some(victim_severity) = SEVERITIES
                .into_iter()
                .find(|&s| !self.lanes[lane_index(s)].segments.is_empty())
            else {
                return Ok(false);
            };
            if victim_severity > severity {
                return Ok(false);
            }
            let lane = &mut self.lanes[lane_index(victim_severity)];
            let (&id, _) = lane.segments.first_key_value().expect("lane is not empty");
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
    fn active_segment(&mut self, severity: Severity) -> io::Result<u64> {
        if let Some(id) = self.lanes[lane_index(severity)].active {
            return Ok(id);
        }
        let id = self.next_segment;
        self.next_segment += 1;
        let path = self.dir.join(segment_name(severity, id));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        self.dir_dirty = true;
        let lane = &mut self.lanes[lane_index(severity)];
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
    fn retire_active(&mut self, severity: Severity) {
        let lane = &mut self.lanes[lane_index(severity)];
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

    /// Up to `max_records` pending records (and about `max_bytes` of them), oldest first.
    /// Records that cannot be read back (corrupt since written, or undecodable) are dropped
    /// with a warning and counted in the returned number.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<Spooled>, usize)> {
        let mut cursors: [std::collections::btree_map::Iter<'_, u64, Entry>; 4] =
            std::array::from_fn(|i| self.lanes[i].pending.iter());
        let mut picked: Vec<(RecordId, u64, u64, usize)> = Vec::new();
        let mut peeked: [Option<(u64, u64, u64, usize)>; 4] = std::array::from_fn(|i| {
            cursors[i]
                .next()
                .map(|(&seq, e)| (seq, e.segment, e.offset, e.len))
        });
        let mut bytes = 0;
        while picked.len() < max_records && (picked.is_empty() || bytes < max_bytes) {
            let Some(i) = (0..4)
                .filter(|&i| peeked[i].is_some())
                .min_by_key(|&i| peeked[i].unwrap().0)
            else {
                break;
            };
            let (seq, segment, offset, len) = peeked[i].unwrap();
            picked.push((
                RecordId {
                    severity: SEVERITIES[i],
                    seq,
                },
                segment,
                offset,
                len,
            ));
            bytes += HEADER + len;
            peeked[i] = cursors[i]
                .next()
                .map(|(&seq, e)| (seq, e.segment, e.offset, e.len));
        }
        drop(cursors);
        let mut batch = Vec::with_capacity(picked.len());
        let mut bad = Vec::new();
        for (id, segment_id, offset, len) in picked {
            let segment = self.lanes[lane_index(id.severity)]
                .segments
                .get_mut(&segment_id)
                .expect("pending record's segment exists");
            if segment.reader.is_none() {
                segment.reader = Some(File::open(&segment.path)?);
            }
            let mut buf = vec![0u8; HEADER + len];
            let read = segment
                .reader
                .as_ref()
                .unwrap()
                .read_exact_at(&mut buf, offset);
            let alert = match read {
                Ok(()) => match parse_record(&buf, 0) {
                    Some((seq, _)) if seq == id.seq => decode_alert(&buf[HEADER..]),
                    _ => Err(anyhow::anyhow!("the record fails its CRC check")),
                },
                Err(e) => Err(e.into()),
            };
            match alert {
                Ok(alert) => batch.push(Spooled {
                    id,
                    alert,
                    bytes: buf.len(),
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

    /// Marks records as done (exported, or rejected for good). Segments with nothing left
    /// pending are removed, except the one each lane is appending to.
    pub fn ack(&mut self, ids: &[RecordId]) -> io::Result<()> {
        let mut entries: BTreeMap<(usize, u64), Vec<u8>> = BTreeMap::new();
        for id in ids {
            let lane = lane_index(id.severity);
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
                match OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&segment.ack_path)
                {
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

    /// The report of the drops since the last call, and their counts; `None` when nothing
    /// was dropped.
    fn take_drop_alert(&mut self) -> Option<(Alert, [u64; 4])> {
        if self.unreported_drops.iter().all(|&n| n == 0) {
            return None;
        }
        let drops = std::mem::take(&mut self.unreported_drops);
        let mut attributes = Map::new();
        for (severity, n) in SEVERITIES.iter().zip(drops) {
            attributes.insert(
                format!("monitor.spool.dropped.{}", severity.name()),
                Value::from(n),
            );
        }
        attributes.insert(
            "monitor.spool.max_bytes".into(),
            Value::from(self.max_bytes),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let alert = Alert {
            rule: DROPPED_RULE.into(),
            severity: Severity::High,
            action: Action::Alert,
            profile: None,
            time_unix_ns: now,
            observed_unix_ns: now,
            count: 1,
            uid: crate::alert::new_uid(),
            attributes,
        };
        Some((alert, drops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> TempDir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!(
                "monitor-spool-test-{name}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

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
            uid: crate::alert::new_uid(),
            attributes,
        }
    }

    fn all(spool: &mut Spool) -> Vec<Spooled> {
        spool.next_batch(usize::MAX, usize::MAX).unwrap().0
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

    #[test]
    fn full_spool_drops_low_before_critical() {
        let dir = TempDir::new("full");
        // Critical records are the largest ("critical" is the longest severity name).
        let one = encode_record(0, &encode_alert(&alert(Severity::Critical, 10))).len() as u64;
        // Room for 20 records; segments of 1 KiB (a few records each).
        let max = one * 20;
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
        let id = report.stored.expect("the report fits");
        assert!(spool.append_drop_report().unwrap().is_none());
        let batch = all(&mut spool);
        let report = &batch.iter().find(|s| s.id == id).unwrap().alert;
        assert_eq!(report.rule, DROPPED_RULE);
        assert_eq!(report.severity, Severity::High);
        assert_eq!(report.attributes["monitor.spool.dropped.low"], dropped[0]);
        assert_eq!(report.attributes["monitor.spool.dropped.medium"], 0);
        assert_eq!(report.attributes["monitor.spool.dropped.critical"], 0);
    }

    #[test]
    fn alert_less_severe_than_everything_spooled_is_dropped_itself() {
        let dir = TempDir::new("full-critical");
        let one = encode_record(0, &encode_alert(&alert(Severity::Critical, 10))).len() as u64;
        let mut spool = Spool::open(&dir.0, one * 5).unwrap();
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
        // The report (high) does not fit either: it is kept for later, not counted as a drop.
        let report = spool
            .append_drop_report()
            .unwrap()
            .expect("a report was due");
        assert_eq!(report.stored, None);
        assert_eq!(report.dropped, [0; 4]);
        assert_eq!(spool.dropped_total(), [1, 0, 0, 0]);
        // Once the criticals are exported, the report goes out with the first count.
        let ids: Vec<RecordId> = all(&mut spool).iter().map(|s| s.id).collect();
        spool.ack(&ids).unwrap();
        let report = spool.append_drop_report().unwrap().expect("still due");
        assert!(report.stored.is_some());
        let batch = all(&mut spool);
        assert_eq!(batch[0].alert.attributes["monitor.spool.dropped.low"], 1);
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
        let mut spool = Spool::open(&dir.0, one * 16).unwrap();
        assert!(spool.bytes() <= one * 16);
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
