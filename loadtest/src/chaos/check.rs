//! The loss checker: replays what the publishers were told (`pub-*.log`) and what every
//! subscriber saw (`sub-*.log`) and decides, per channel and subscriber, whether every
//! acknowledged publication arrived in order, and whether every gap was announced.
//!
//! Log lines (space-separated, one event each, in the order the client saw them; see
//! `log.rs`):
//! - `A <channel> <id> <epoch> <offset>`: a publish acknowledged at that position;
//! - `F <channel> <id> <reason>`: a publish that got no acknowledgement;
//! - `S <client> <channel> <epoch> <offset> <recovered 0|1> <asked 0|1>`: a subscribe
//!   result (`asked`: it asked to recover), followed by its publications as `D ... R`
//!   and closed by `T <client> <channel>`;
//! - `D <client> <channel> <offset> <id> <L|R>`: a publication, live or recovered;
//! - `U <client> <channel> <code>`: the server unsubscribed it;
//! - `E <client> <channel> <code>`: a subscribe answered an error;
//! - `X <client> <code>`: the connection ended (disconnect push, close, error);
//! - `END <client> <channel> <subscribed 0|1>`: the client stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

/// Acknowledged publications of one channel: epoch -> offset -> payload id.
type Acks = HashMap<String, BTreeMap<u64, String>>;

#[derive(Default, Debug, Serialize)]
pub struct Counts {
    pub published: u64,
    pub acknowledged: u64,
    pub unacknowledged: u64,
    pub subscriptions: u64,
    /// Publications received for the first time (live + recovered).
    pub delivered: u64,
    pub delivered_live: u64,
    pub recovered: u64,
    /// Acknowledged publications a subscriber should have had and never got.
    pub lost: u64,
    /// Publications a subscriber got again (same offset twice).
    pub duplicated: u64,
    /// Payload ids that were acknowledged at two positions.
    pub duplicated_ids: u64,
    /// A publication whose offset skipped ahead without a `recovered: false`.
    pub silent_gaps: u64,
    /// A publication whose payload id is not the one acknowledged at its position.
    pub mismatched: u64,
    /// Told gaps: subscribe results with `recovered: false` after asking to recover.
    pub told_gaps: u64,
    /// Acknowledged publications inside the told gaps (announced loss).
    pub told_missed: u64,
    /// Unsubscribe pushes with code 2500 (insufficient state: resubscribe).
    pub unsubscribe_2500: u64,
    /// Unsubscribe pushes with any other code (not expected here).
    pub unsubscribe_other: u64,
    pub subscribe_errors: u64,
    pub connections_ended: u64,
    /// Subscriptions that were not subscribed when their client stopped.
    pub ended_unsubscribed: u64,
}

impl Counts {
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.silent_gaps == 0
            && self.mismatched == 0
            && self.duplicated_ids == 0
            && self.unsubscribe_other == 0
            && self.ended_unsubscribed == 0
    }
}

/// One subscriber's view of one channel.
#[derive(Default)]
struct Track {
    epoch: String,
    pos: u64,
    /// Per epoch: (first position, last position, offsets accounted for).
    segments: Vec<Segment>,
    /// The subscribe result being read: its top offset and whether it recovered.
    pending: Option<(u64, bool)>,
    ended_subscribed: Option<bool>,
}

struct Segment {
    epoch: String,
    start: u64,
    end: u64,
    seen: BTreeSet<u64>,
    told: Vec<(u64, u64)>,
}

impl Track {
    fn segment(&mut self) -> Option<&mut Segment> {
        self.segments.last_mut().filter(|s| s.epoch == self.epoch)
    }

    fn subscribed(&mut self, epoch: &str, top: u64, recovered: bool, asked: bool, c: &mut Counts) {
        c.subscriptions += 1;
        let first = self.segments.is_empty();
        if !first && asked && !recovered {
            c.told_gaps += 1;
            if epoch == self.epoch {
                let (from, to) = (self.pos, top);
                if let Some(s) = self.segment() {
                    s.told.push((from, to));
                }
            } else if let Some(s) = self.segment() {
                s.told.push((s.end, u64::MAX));
            }
        }
        if first || epoch != self.epoch {
            self.segments.push(Segment {
                epoch: epoch.to_string(),
                start: top,
                end: top,
                seen: BTreeSet::new(),
                told: Vec::new(),
            });
            self.epoch = epoch.to_string();
            self.pos = top;
        } else if !recovered {
            self.pos = self.pos.max(top);
        }
        self.pending = Some((top, recovered || first));
    }

    fn delivered(&mut self, offset: u64, live: bool, c: &mut Counts) {
        if offset == 0 {
            return;
        }
        if offset <= self.pos {
            c.duplicated += 1;
            return;
        }
        if offset > self.pos + 1 {
            c.silent_gaps += 1;
        }
        self.pos = offset;
        if live {
            c.delivered_live += 1;
        } else {
            c.recovered += 1;
        }
        c.delivered += 1;
        if let Some(s) = self.segment() {
            s.seen.insert(offset);
            s.end = s.end.max(offset);
        }
    }

    /// The end of a subscribe result: the position is its top offset now.
    fn settled(&mut self, c: &mut Counts) {
        if let Some((top, _)) = self.pending.take() {
            if top > self.pos {
                // A recovery that stopped short of the top it reported.
                c.silent_gaps += 1;
                self.pos = top;
            }
            let pos = self.pos;
            if let Some(s) = self.segment() {
                s.end = s.end.max(pos);
            }
        }
    }

    /// Acknowledged publications this subscription should have had and did not.
    fn missing(&self, acks: Option<&Acks>, c: &mut Counts) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let Some(acks) = acks else { return out };
        for s in &self.segments {
            let Some(by_offset) = acks.get(&s.epoch) else {
                continue;
            };
            // Every acknowledged offset after the start counts: the checker runs after
            // the publishers stopped and the subscribers caught up, and an epoch is left
            // only through a told gap, which covers the rest of it.
            for (&o, _) in by_offset.range(s.start + 1..) {
                if s.seen.contains(&o) {
                    continue;
                }
                if s.told.iter().any(|&(from, to)| o > from && o <= to) {
                    c.told_missed += 1;
                    continue;
                }
                out.push((s.epoch.clone(), o));
            }
        }
        out
    }
}

/// The result of a check: counts plus a few examples of each problem.
#[derive(Default, Serialize)]
pub struct Report {
    pub counts: Counts,
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, text: String) {
        if self.problems.len() < 30 {
            self.problems.push(text);
        }
    }
}

/// Checks the logs in `dir`.
pub fn check_dir(dir: &Path) -> anyhow::Result<Report> {
    let mut pubs = Vec::new();
    let mut subs = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with("pub-") && name.ends_with(".log") {
            pubs.push(read_lines(&path)?);
        } else if name.starts_with("sub-") && name.ends_with(".log") {
            subs.push(read_lines(&path)?);
        }
    }
    anyhow::ensure!(
        !pubs.is_empty() && !subs.is_empty(),
        "no pub-*.log or sub-*.log in {}",
        dir.display()
    );
    Ok(check(&pubs, &subs))
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(path)?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()?)
}

/// Checks publisher logs against subscriber logs (one `Vec` of lines per file).
pub fn check(pubs: &[Vec<String>], subs: &[Vec<String>]) -> Report {
    let mut r = Report::default();
    let mut acks: HashMap<String, Acks> = HashMap::new();
    let mut ids: HashMap<String, (String, String, u64)> = HashMap::new();
    for line in pubs.iter().flatten() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["A", ch, id, epoch, offset] => {
                let Ok(offset) = offset.parse::<u64>() else {
                    continue;
                };
                r.counts.published += 1;
                r.counts.acknowledged += 1;
                let at = acks
                    .entry(ch.to_string())
                    .or_default()
                    .entry(epoch.to_string())
                    .or_default();
                if let Some(other) = at.insert(offset, id.to_string()) {
                    r.counts.duplicated_ids += 1;
                    r.problem(format!(
                        "{ch} {epoch}:{offset} acknowledged for {other} and {id}"
                    ));
                }
                if let Some(prev) =
                    ids.insert(id.to_string(), (ch.to_string(), epoch.to_string(), offset))
                {
                    r.counts.duplicated_ids += 1;
                    r.problem(format!(
                        "{id} acknowledged twice: {prev:?} and {ch} {epoch}:{offset}"
                    ));
                }
            }
            ["F", ..] => {
                r.counts.published += 1;
                r.counts.unacknowledged += 1;
            }
            _ => {}
        }
    }
    let mut tracks: BTreeMap<(String, String), Track> = BTreeMap::new();
    for line in subs.iter().flatten() {
        let f: Vec<&str> = line.split(' ').collect();
        let c = &mut r.counts;
        match f.as_slice() {
            ["S", client, ch, epoch, top, recovered, asked] => {
                let Ok(top) = top.parse::<u64>() else {
                    continue;
                };
                let t = tracks
                    .entry((client.to_string(), ch.to_string()))
                    .or_default();
                t.settled(c);
                t.subscribed(epoch, top, *recovered == "1", *asked == "1", c);
            }
            ["D", client, ch, offset, id, how] => {
                let Ok(offset) = offset.parse::<u64>() else {
                    continue;
                };
                let t = tracks
                    .entry((client.to_string(), ch.to_string()))
                    .or_default();
                if *how == "L" {
                    t.settled(c);
                }
                let (gaps, epoch) = (c.silent_gaps, t.epoch.clone());
                let pos = t.pos;
                t.delivered(offset, *how == "L", c);
                if c.silent_gaps > gaps {
                    r.problem(format!(
                        "{client} {ch}: silent gap {pos} -> {offset} ({how})"
                    ));
                }
                let expected = acks
                    .get(*ch)
                    .and_then(|a| a.get(&epoch))
                    .and_then(|a| a.get(&offset));
                if let Some(want) = expected.filter(|want| want.as_str() != *id) {
                    r.counts.mismatched += 1;
                    r.problem(format!(
                        "{client} {ch} {epoch}:{offset}: got {id}, acknowledged {want}"
                    ));
                }
            }
            ["T", client, ch] => {
                if let Some(t) = tracks.get_mut(&(client.to_string(), ch.to_string())) {
                    t.settled(c);
                }
            }
            ["U", _, _, code] if *code == "2500" => c.unsubscribe_2500 += 1,
            ["U", client, ch, code] => {
                c.unsubscribe_other += 1;
                r.problem(format!("{client} {ch}: unsubscribed with code {code}"));
            }
            ["E", ..] => c.subscribe_errors += 1,
            ["X", ..] => c.connections_ended += 1,
            ["END", client, ch, subscribed] => {
                if let Some(t) = tracks.get_mut(&(client.to_string(), ch.to_string())) {
                    t.settled(c);
                    t.ended_subscribed = Some(*subscribed == "1");
                }
            }
            _ => {}
        }
    }
    for ((client, ch), t) in &tracks {
        if t.ended_subscribed != Some(true) {
            r.counts.ended_unsubscribed += 1;
            r.problem(format!(
                "{client} {ch}: not subscribed at the end ({:?})",
                t.ended_subscribed
            ));
            continue;
        }
        let missing = t.missing(acks.get(ch), &mut r.counts);
        r.counts.lost += missing.len() as u64;
        if let Some((epoch, first)) = missing.first() {
            r.problem(format!(
                "{client} {ch}: {} acknowledged publications never arrived, first {epoch}:{first}",
                missing.len()
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    const PUBS: &str = "
        A ch p1 e 1
        A ch p2 e 2
        F ch p3 timeout
        A ch p4 e 3
        A ch p5 e 4
    ";

    #[test]
    fn in_order_live_and_recovered_is_clean() {
        let subs = lines(
            "S c ch e 0 0 0
             T c ch
             D c ch 1 p1 L
             D c ch 2 p2 L
             X c 3001
             S c ch e 4 1 1
             D c ch 3 p4 R
             D c ch 4 p5 R
             T c ch
             D c ch 4 p5 L
             END c ch 1",
        );
        let r = check(&[lines(PUBS)], &[subs]);
        let c = &r.counts;
        assert!(c.ok(), "{:?}", r.problems);
        assert_eq!((c.published, c.acknowledged, c.unacknowledged), (5, 4, 1));
        assert_eq!(
            (c.delivered, c.delivered_live, c.recovered, c.duplicated),
            (4, 2, 2, 1)
        );
    }

    #[test]
    fn a_skipped_offset_is_a_silent_gap_and_a_loss() {
        let subs = lines(
            "S c ch e 0 0 0\nT c ch\nD c ch 1 p1 L\nD c ch 3 p4 L\nD c ch 4 p5 L\nEND c ch 1",
        );
        let r = check(&[lines(PUBS)], &[subs]);
        assert_eq!((r.counts.silent_gaps, r.counts.lost), (1, 1));
        assert!(!r.counts.ok());
    }

    #[test]
    fn a_missing_tail_is_a_loss() {
        let subs = lines("S c ch e 0 0 0\nT c ch\nD c ch 1 p1 L\nD c ch 2 p2 L\nEND c ch 1");
        let r = check(&[lines(PUBS)], &[subs]);
        assert_eq!((r.counts.silent_gaps, r.counts.lost), (0, 2));
    }

    #[test]
    fn a_recovery_short_of_its_top_is_a_silent_gap() {
        let subs = lines("S c ch e 0 0 0\nT c ch\nD c ch 1 p1 L\nS c ch e 4 1 1\nD c ch 2 p2 R\nT c ch\nEND c ch 1");
        let r = check(&[lines(PUBS)], &[subs]);
        assert_eq!((r.counts.silent_gaps, r.counts.lost), (1, 2));
    }

    #[test]
    fn a_told_gap_is_counted_not_lost() {
        let subs = lines(
            "S c ch e 0 0 0
             T c ch
             D c ch 1 p1 L
             U c ch 2500
             S c ch e2 9 0 1
             T c ch
             END c ch 1",
        );
        let r = check(&[lines(PUBS)], &[subs]);
        let c = &r.counts;
        assert!(c.ok(), "{:?}", r.problems);
        assert_eq!((c.told_gaps, c.told_missed, c.unsubscribe_2500), (1, 3, 1));
    }

    #[test]
    fn a_wrong_payload_and_an_unfinished_subscription_are_problems() {
        let subs = lines("S c ch e 0 0 0\nT c ch\nD c ch 1 p2 L\nS d ch e 4 0 0\nT d ch");
        let r = check(&[lines(PUBS)], &[subs]);
        assert_eq!(r.counts.mismatched, 1);
        assert_eq!(r.counts.ended_unsubscribed, 2);
    }
}
