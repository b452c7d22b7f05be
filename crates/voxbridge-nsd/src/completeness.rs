//! Whether the behaviour rows account for every trial of the betas. NSD's betas hold one row per
//! trial of every session (750 per session), and the webdataset tars one behaviour row per
//! trial, so a betas row that no behaviour row names is a trial lost from a damaged tar — not
//! data to skip silently. Pure: rows in, gaps out.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// A behaviour row's place: its session, its betas row, and the tar it came from.
#[derive(Debug, Clone, Copy)]
pub struct RowPlace<'a> {
    pub session: u16,
    pub global_trial: u32,
    pub file: &'a str,
}

/// The trials a session lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionGap {
    pub session: u16,
    /// Trials the session should hold (its block of betas rows).
    pub expected: usize,
    /// Trials the tars hold for it.
    pub found: usize,
    /// The tars holding its other trials (none when the whole session is absent).
    pub files: Vec<String>,
    /// The first betas rows without a behaviour row (at most a few, for the message).
    pub first_missing: Vec<u32>,
}

impl SessionGap {
    pub fn missing(&self) -> usize {
        self.expected - self.found
    }
}

/// Every betas row no behaviour row names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissingTrials {
    /// Sessions with missing trials, in session order.
    pub sessions: Vec<SessionGap>,
    /// Betas rows outside every session's block (when sessions are not equal blocks of rows,
    /// a row between two sessions' trials cannot be attributed to either).
    pub unattributed: Vec<Range<u32>>,
}

impl MissingTrials {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.unattributed.is_empty()
    }

    /// Trials missing in all.
    pub fn total(&self) -> usize {
        self.sessions.iter().map(SessionGap::missing).sum::<usize>()
            + self.unattributed.iter().map(|r| r.len()).sum::<usize>()
    }

    /// One line per gap, for the refusal and the log.
    pub fn describe(&self) -> String {
        let mut lines: Vec<String> = self
            .sessions
            .iter()
            .map(|g| {
                let whence = if g.files.is_empty() { "no tar holds it".to_string() } else { g.files.join(", ") };
                let rows: Vec<String> = g.first_missing.iter().map(u32::to_string).collect();
                format!(
                    "session {} has {} of {} trials ({} missing; {whence}; first missing betas rows {}{})",
                    g.session,
                    g.found,
                    g.expected,
                    g.missing(),
                    rows.join(", "),
                    if g.missing() > rows.len() { ", …" } else { "" }
                )
            })
            .collect();
        lines.extend(
            self.unattributed
                .iter()
                .map(|r| format!("betas rows {}..{} belong to no session's trials", r.start, r.end)),
        );
        lines.join("; ")
    }
}

/// Rows of the betas (`0..betas_rows`) without a behaviour row, by session. When the betas
/// split into equal blocks of rows, session s holding block s − 1 (NSD: 750 rows each), each
/// session's block is its expected trials — so a session absent from every tar is found too. Otherwise a session's expected trials are the rows between its first and last
/// behaviour row, and rows outside every session's span are reported unattributed.
pub fn missing_trials(places: &[RowPlace<'_>], betas_rows: usize) -> MissingTrials {
    const SHOWN: usize = 5;
    let mut named = vec![false; betas_rows];
    let mut by_session: BTreeMap<u16, (u32, u32, usize, BTreeSet<&str>)> = BTreeMap::new();
    for p in places {
        if let Some(slot) = named.get_mut(p.global_trial as usize) {
            *slot = true;
        }
        let entry = by_session.entry(p.session).or_insert((p.global_trial, p.global_trial, 0, BTreeSet::new()));
        entry.0 = entry.0.min(p.global_trial);
        entry.1 = entry.1.max(p.global_trial);
        entry.2 += 1;
        entry.3.insert(p.file);
    }
    let Some(&last_session) = by_session.keys().next_back() else {
        return MissingTrials {
            sessions: Vec::new(),
            unattributed: (betas_rows > 0).then_some(0..betas_rows as u32).into_iter().collect(),
        };
    };
    // The block size: the longest session's span, or the rows divided by the sessions seen,
    // whichever makes every row fall in its session's block.
    let longest = by_session.values().map(|i| (i.1 - i.0) as usize + 1).max().unwrap_or(0);
    let mut candidates = vec![longest];
    if betas_rows.is_multiple_of(usize::from(last_session)) {
        candidates.push(betas_rows / usize::from(last_session));
    }
    candidates.sort_unstable();
    let block = candidates.into_iter().find(|&b| {
        b >= longest
            && b > 0
            && betas_rows.is_multiple_of(b)
            && places.iter().all(|p| p.session >= 1 && p.global_trial as usize / b + 1 == usize::from(p.session))
    });
    let mut out = MissingTrials::default();
    let gap = |session: u16, rows: Range<usize>, info: Option<&(u32, u32, usize, BTreeSet<&str>)>| {
        let missing: Vec<u32> = rows.clone().filter(|&r| !named[r]).map(|r| r as u32).collect();
        (!missing.is_empty()).then(|| SessionGap {
            session,
            expected: rows.len(),
            found: rows.len() - missing.len(),
            files: info.map(|i| i.3.iter().map(|f| f.to_string()).collect()).unwrap_or_default(),
            first_missing: missing.into_iter().take(SHOWN).collect(),
        })
    };
    if let Some(b) = block {
        for s in 1..=(betas_rows / b) as u16 {
            let start = (usize::from(s) - 1) * b;
            out.sessions.extend(gap(s, start..start + b, by_session.get(&s)));
        }
        return out;
    }
    let mut covered = vec![false; betas_rows];
    for (&s, info) in &by_session {
        let span = info.0 as usize..(info.1 as usize + 1).min(betas_rows);
        covered[span.clone()].iter_mut().for_each(|c| *c = true);
        out.sessions.extend(gap(s, span, Some(info)));
    }
    let mut r = 0;
    while r < betas_rows {
        if covered[r] || named[r] {
            r += 1;
            continue;
        }
        let start = r;
        while r < betas_rows && !covered[r] && !named[r] {
            r += 1;
        }
        out.unattributed.push(start as u32..r as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(sessions: &[(u16, Range<u32>)], skip: &[u32]) -> Vec<RowPlace<'static>> {
        sessions
            .iter()
            .flat_map(|(s, rows)| {
                rows.clone().filter(|g| !skip.contains(g)).map(move |g| RowPlace {
                    session: *s,
                    global_trial: g,
                    file: "train/x.tar",
                })
            })
            .collect()
    }

    #[test]
    fn complete_sessions_have_no_gaps() {
        let p = places(&[(1, 0..750), (2, 750..1500)], &[]);
        assert!(missing_trials(&p, 1500).is_empty());
    }

    #[test]
    fn a_damaged_tar_loses_trials_of_its_session() {
        let p = places(&[(1, 0..750), (2, 750..1500)], &[0, 800, 801, 1499]);
        let m = missing_trials(&p, 1500);
        assert_eq!(m.total(), 4);
        assert_eq!(
            m.sessions.iter().map(|g| (g.session, g.found, g.expected)).collect::<Vec<_>>(),
            [(1, 749, 750), (2, 747, 750)]
        );
        assert_eq!(m.sessions[1].first_missing, [800, 801, 1499]);
        let text = m.describe();
        assert!(text.contains("session 2 has 747 of 750 trials (3 missing; train/x.tar"), "{text}");
    }

    #[test]
    fn a_session_absent_from_every_tar_is_found_from_the_betas_blocks() {
        let p = places(&[(1, 0..750), (3, 1500..2250)], &[]);
        let m = missing_trials(&p, 2250);
        assert_eq!(m.sessions.len(), 1);
        assert_eq!((m.sessions[0].session, m.sessions[0].found, m.sessions[0].missing()), (2, 0, 750));
        assert!(m.describe().contains("no tar holds it"), "{}", m.describe());
    }

    #[test]
    fn trailing_sessions_absent_from_the_tars_are_found() {
        let p = places(&[(1, 0..750), (2, 750..1500)], &[1499]);
        let m = missing_trials(&p, 3000);
        let got: Vec<_> = m.sessions.iter().map(|g| (g.session, g.found)).collect();
        assert_eq!(got, [(2, 749), (3, 0), (4, 0)]);
        assert_eq!(m.total(), 1501);
    }

    #[test]
    fn unequal_sessions_count_gaps_inside_spans_and_report_the_rest_unattributed() {
        // Betas rows 0..30: session 1 spans 0..10, session 2 spans 12..25; rows 10, 11 and
        // 25..30 are nobody's.
        let p = places(&[(1, 0..10), (2, 12..25)], &[14]);
        let m = missing_trials(&p, 30);
        assert_eq!(m.sessions.len(), 1);
        assert_eq!((m.sessions[0].session, m.sessions[0].missing()), (2, 1));
        assert_eq!(m.unattributed, [10..12, 25..30]);
        assert_eq!(m.total(), 8);
    }
}
