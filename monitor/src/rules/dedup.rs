//! Folding of identical alerts: the first of a kind is raised at once, repeats within the
//! window are only counted, and one alert with `monitor.count = N` follows when the window
//! closes.

use std::collections::{HashMap, VecDeque};

use crate::event::alert::{new_uid, Alert};

/// What makes two alerts identical: rule, process identity and the object (path, peer,
/// device class or executable).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) rule: &'static str,
    pub(crate) tgid: u32,
    pub(crate) start_time_ns: u64,
    pub(crate) object: String,
}

struct Entry {
    /// `CLOCK_BOOTTIME` ns at which the window closes.
    closes_at_ns: u64,
    repeats: u64,
    /// The last repeat, whose attributes the folded alert carries.
    last: Option<Alert>,
}

/// The open windows, at most `max_keys` of them.
pub(crate) struct Dedup {
    window_ns: u64,
    max_keys: usize,
    entries: HashMap<Key, Entry>,
    /// Keys in the order their windows opened, oldest first, to evict when full.
    order: VecDeque<Key>,
}

impl Dedup {
    pub(crate) fn new(window_ns: u64, max_keys: usize) -> Dedup {
        Dedup {
            window_ns,
            max_keys: max_keys.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn set_window(&mut self, window_ns: u64) {
        self.window_ns = window_ns;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes an alert that happened at `at_ns`: pushed to `out` when it is the first of its
    /// window, counted otherwise. Folded alerts of windows that closed (or were evicted to
    /// make room) are pushed to `out` too.
    pub(crate) fn admit(&mut self, key: Key, at_ns: u64, alert: Alert, out: &mut Vec<Alert>) {
        if self.window_ns == 0 {
            out.push(alert);
            return;
        }
        if let Some(entry) = self.entries.get_mut(&key) {
            if at_ns < entry.closes_at_ns {
                entry.repeats += 1;
                entry.last = Some(alert);
                return;
            }
            // Closed but not flushed yet: report it, then open a new window.
            out.extend(fold(entry, alert.observed_unix_ns));
            entry.closes_at_ns = at_ns.saturating_add(self.window_ns);
            out.push(alert);
            return;
        }
        while self.entries.len() >= self.max_keys {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(mut entry) = self.entries.remove(&oldest) {
                out.extend(fold(&mut entry, alert.observed_unix_ns));
            }
        }
        self.entries.insert(
            key.clone(),
            Entry {
                closes_at_ns: at_ns.saturating_add(self.window_ns),
                repeats: 0,
                last: None,
            },
        );
        self.order.push_back(key);
        out.push(alert);
    }

    /// Closes the windows that ended by `now_ns`: one alert for each with repeats.
    pub(crate) fn flush(&mut self, now_ns: u64, observed_unix_ns: i128) -> Vec<Alert> {
        let mut out = Vec::new();
        self.entries.retain(|_, entry| {
            if now_ns < entry.closes_at_ns {
                return true;
            }
            out.extend(fold(entry, observed_unix_ns));
            false
        });
        let entries = &self.entries;
        self.order.retain(|key| entries.contains_key(key));
        out
    }
}

/// The alert standing for an entry's repeats, if any; resets the entry.
fn fold(entry: &mut Entry, observed_unix_ns: i128) -> Option<Alert> {
    let repeats = std::mem::take(&mut entry.repeats);
    let mut alert = entry.last.take()?;
    alert.count = repeats;
    alert.uid = new_uid();
    alert.observed_unix_ns = observed_unix_ns;
    Some(alert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::alert::{Action, Severity};

    fn alert(n: i128) -> Alert {
        Alert {
            rule: "exec-not-allowed".into(),
            severity: Severity::High,
            action: Action::Alert,
            profile: None,
            time_unix_ns: n,
            observed_unix_ns: n,
            count: 1,
            uid: new_uid(),
            attributes: serde_json::Map::new(),
        }
    }

    fn key(object: &str) -> Key {
        Key {
            rule: "exec-not-allowed",
            tgid: 1,
            start_time_ns: 2,
            object: object.into(),
        }
    }

    #[test]
    fn burst_is_one_now_and_one_counted() {
        let mut dedup = Dedup::new(10, 100);
        let mut out = Vec::new();
        for t in 0..5 {
            dedup.admit(key("/bin/x"), t, alert(t as i128), &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, 1);
        assert!(dedup.flush(9, 9).is_empty(), "window still open");
        let folded = dedup.flush(10, 10);
        assert_eq!(folded.len(), 1);
        assert_eq!(folded[0].count, 4);
        assert_eq!(folded[0].time_unix_ns, 4, "attributes of the last repeat");
        assert_ne!(folded[0].uid, out[0].uid);
        assert_eq!(dedup.len(), 0);
        // After the window, the next one is raised at once again.
        out.clear();
        dedup.admit(key("/bin/x"), 20, alert(20), &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn single_alert_folds_nothing() {
        let mut dedup = Dedup::new(10, 100);
        let mut out = Vec::new();
        dedup.admit(key("/bin/x"), 0, alert(0), &mut out);
        assert!(dedup.flush(100, 100).is_empty());
    }

    #[test]
    fn distinct_objects_are_distinct() {
        let mut dedup = Dedup::new(10, 100);
        let mut out = Vec::new();
        dedup.admit(key("/bin/x"), 0, alert(0), &mut out);
        dedup.admit(key("/bin/y"), 0, alert(0), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn late_repeat_after_unflushed_window_reports_both() {
        let mut dedup = Dedup::new(10, 100);
        let mut out = Vec::new();
        dedup.admit(key("/bin/x"), 0, alert(0), &mut out);
        dedup.admit(key("/bin/x"), 1, alert(1), &mut out);
        dedup.admit(key("/bin/x"), 15, alert(15), &mut out);
        let counts: Vec<u64> = out.iter().map(|a| a.count).collect();
        assert_eq!(counts, [1, 1, 1]);
        assert_eq!(out[1].time_unix_ns, 1, "the folded repeat");
        assert_eq!(out[2].time_unix_ns, 15, "the new window's first");
    }

    #[test]
    fn full_map_evicts_oldest_and_keeps_its_count() {
        let mut dedup = Dedup::new(1000, 2);
        let mut out = Vec::new();
        dedup.admit(key("a"), 0, alert(0), &mut out);
        dedup.admit(key("a"), 1, alert(1), &mut out);
        dedup.admit(key("b"), 2, alert(2), &mut out);
        dedup.admit(key("c"), 3, alert(3), &mut out);
        assert_eq!(dedup.len(), 2);
        // a (first), b, then a's folded repeat, then c.
        let counts: Vec<u64> = out.iter().map(|a| a.count).collect();
        assert_eq!(counts, [1, 1, 1, 1]);
        assert_eq!(out[2].time_unix_ns, 1);
        assert_eq!(out[3].time_unix_ns, 3);
    }

    #[test]
    fn zero_window_folds_nothing() {
        let mut dedup = Dedup::new(0, 10);
        let mut out = Vec::new();
        dedup.admit(key("a"), 0, alert(0), &mut out);
        dedup.admit(key("a"), 0, alert(0), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(dedup.len(), 0);
    }
}
