//! The timeline both trace formats draw ([`super::perfetto`], [`super::chrome`]).
//!
//! One slice per stage per message, from the previous present stamp to the stamp that ends
//! the stage. Kernel stages up to the wakeup (`nic→softirq`, `softirq→tcp`, `tcp→wakeup`)
//! go on the track of the CPU that received the completing segment; the rest on the
//! track of the thread that ran the callback. Slices on one track must nest (a viewer
//! builds a stack per track), which messages need not do: two messages' stages can
//! overlap partly. So each track has lanes: a slice goes into the first lane where it
//! nests in or follows what is there, and a new lane opens when none fits.
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};

use crate::correlate::{MessageRow, Stamp};

use super::ExportInput;

/// Where a slice is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Place {
    /// The CPU that received the segment.
    Cpu(u16),
    /// The thread that ran the callback.
    Thread(u32),
}

/// One stage of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    /// Index of the message in the correlation's rows.
    pub row: usize,
    /// The stamp the stage starts at (the previous present one).
    pub from: Stamp,
    /// The stamp that ends the stage.
    pub to: Stamp,
    /// CLOCK_MONOTONIC ns.
    pub start: u64,
    /// CLOCK_MONOTONIC ns, `>= start`.
    pub end: u64,
    /// Its track.
    pub place: Place,
    /// Lane on that track, 0 first.
    pub lane: u32,
    /// The message's first slice: its flow arrow starts here.
    pub flow_start: bool,
    /// The message's last slice: its flow arrow ends here.
    pub flow_end: bool,
}

impl Slice {
    /// `from→to`, e.g. `nic→softirq`.
    pub fn name(&self) -> String {
        stage_name(self.from, self.to)
    }

    /// Ns.
    pub fn dur(&self) -> u64 {
        self.end - self.start
    }

    /// The flow id of its message (non-zero).
    pub fn flow_id(&self) -> u64 {
        self.row as u64 + 1
    }
}

/// A stage's name from the stamps around it: `nic→softirq`, `tcp→epoll` (no wakeup).
pub(crate) fn stage_name(from: Stamp, to: Stamp) -> String {
    format!("{}→{}", from.name(), to.name())
}

/// Whether the stage ending at `to` runs in the receive path on the RX CPU.
fn on_rx_cpu(to: Stamp) -> bool {
    matches!(to, Stamp::Softirq | Stamp::Tcp | Stamp::Waking)
}

/// The stages of a row as `(from, to, start, end)`, in pipeline order; `end` never
/// before `start` (as [`MessageRow::stages`], which saturates).
pub(crate) fn row_stages(row: &MessageRow) -> Vec<(Stamp, Stamp, u64, u64)> {
    let mut out = Vec::new();
    let mut prev: Option<(Stamp, u64)> = None;
    for s in Stamp::ALL {
        let Some(t) = row.at(s) else { continue };
        if let Some((p, pt)) = prev {
            out.push((p, s, pt, t.max(pt)));
        }
        prev = Some((s, t));
    }
    out
}

/// A slice begins or ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    /// CLOCK_MONOTONIC ns.
    pub ts: u64,
    /// Index into [`Timeline::slices`].
    pub slice: usize,
    /// Begin (true) or end.
    pub begin: bool,
}

/// Slices placed on tracks and lanes.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    /// Every slice, by row then stage.
    pub slices: Vec<Slice>,
    /// Lanes per track (at least 1 for each track used).
    pub lanes: BTreeMap<Place, u32>,
    /// Begin and end of every slice, in time order; within one track and lane, ends and
    /// begins come in nesting order.
    pub marks: Vec<Mark>,
    /// The process of each thread that has a row: from the events' headers, else the
    /// thread itself (as if it were the main thread).
    pub tgid_of: BTreeMap<u32, u32>,
}

impl Timeline {
    /// Lays out the rows of `input`.
    pub fn build(input: &ExportInput<'_>) -> Timeline {
        let rows = &input.correlation.rows;
        let mut slices = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let stages = row_stages(row);
            let n = stages.len();
            for (k, (from, to, start, end)) in stages.into_iter().enumerate() {
                let place = if on_rx_cpu(to) {
                    Place::Cpu(row.rx_cpu)
                } else {
                    Place::Thread(row.tid)
                };
                slices.push(Slice {
                    row: i,
                    from,
                    to,
                    start,
                    end,
                    place,
                    lane: 0,
                    flow_start: n >= 2 && k == 0,
                    flow_end: n >= 2 && k == n - 1,
                });
            }
        }
        let (lanes, marks) = assign_lanes(&mut slices);

        let mut tgid_of: BTreeMap<u32, u32> = rows.iter().map(|r| (r.tid, r.tid)).collect();
        let mut seen: HashSet<u32> = HashSet::new();
        for e in input.events {
            let h = e.header();
            if h.tid != 0
                && h.tgid != 0
                && let Some(t) = tgid_of.get_mut(&h.tid)
                && seen.insert(h.tid)
            {
                *t = h.tgid;
            }
        }
        Timeline {
            slices,
            lanes,
            marks,
            tgid_of,
        }
    }
}

/// Puts each slice in a lane of its track so that slices in one lane nest or follow one
/// another; returns the lanes per track and the begin/end marks in time order.
fn assign_lanes(slices: &mut [Slice]) -> (BTreeMap<Place, u32>, Vec<Mark>) {
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by_key(|&i| {
        let s = &slices[i];
        (s.place, s.start, Reverse(s.end), s.row, s.to)
    });
    let mut lanes: BTreeMap<Place, u32> = BTreeMap::new();
    let mut marks = Vec::with_capacity(slices.len() * 2);
    // Open slices per lane of the current track, innermost last.
    let mut stacks: Vec<Vec<usize>> = Vec::new();
    let mut current: Option<Place> = None;
    let close_all = |stacks: &mut Vec<Vec<usize>>, marks: &mut Vec<Mark>, slices: &[Slice]| {
        for st in stacks.iter_mut() {
            while let Some(top) = st.pop() {
                marks.push(Mark {
                    ts: slices[top].end,
                    slice: top,
                    begin: false,
                });
            }
        }
        stacks.clear();
    };
    for i in order {
        let (place, start, end) = (slices[i].place, slices[i].start, slices[i].end);
        if current != Some(place) {
            close_all(&mut stacks, &mut marks, slices);
            current = Some(place);
        }
        let mut chosen = None;
        for (k, st) in stacks.iter_mut().enumerate() {
            while let Some(&top) = st.last() {
                if slices[top].end > start {
                    break;
                }
                marks.push(Mark {
                    ts: slices[top].end,
                    slice: top,
                    begin: false,
                });
                st.pop();
            }
            // Fits when the lane is empty or the slice nests inside the innermost open one.
            if st.last().is_none_or(|&top| slices[top].end >= end) {
                chosen = Some(k);
                break;
            }
        }
        let k = match chosen {
            Some(k) => k,
            None => {
                stacks.push(Vec::new());
                stacks.len() - 1
            }
        };
        stacks[k].push(i);
        slices[i].lane = k as u32;
        let n = lanes.entry(place).or_insert(0);
        *n = (*n).max(k as u32 + 1);
        marks.push(Mark {
            ts: start,
            slice: i,
            begin: true,
        });
    }
    close_all(&mut stacks, &mut marks, slices);
    // Stable: marks of one lane were pushed in nesting order, and their times never
    // decrease, so sorting by time alone keeps that order.
    marks.sort_by_key(|m| m.ts);
    (lanes, marks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testdata;
    use std::collections::HashMap;

    /// Replays the marks per (track, lane) with a stack: every end closes the innermost
    /// open slice of its lane, and times never go back.
    fn check_nesting(t: &Timeline) {
        let mut open: HashMap<(Place, u32), Vec<usize>> = HashMap::new();
        let mut last = 0;
        for m in &t.marks {
            assert!(m.ts >= last);
            last = m.ts;
            let s = &t.slices[m.slice];
            let st = open.entry((s.place, s.lane)).or_default();
            if m.begin {
                assert_eq!(m.ts, s.start);
                st.push(m.slice);
            } else {
                assert_eq!(m.ts, s.end);
                assert_eq!(st.pop(), Some(m.slice));
            }
        }
        assert!(open.values().all(Vec::is_empty));
        assert_eq!(t.marks.len(), t.slices.len() * 2);
    }

    #[test]
    fn slices_nest_per_lane() {
        let c = testdata::correlation();
        let input = ExportInput {
            correlation: &c,
            events: &[],
            header: None,
        };
        let t = Timeline::build(&input);
        assert_eq!(t.slices.len(), testdata::stage_count(&c));
        check_nesting(&t);
        // Rows 0 and 1 share the segment: identical kernel slices nest in one lane.
        assert_eq!(t.lanes.get(&Place::Cpu(1)), Some(&1));
        // Row 3's slow callback overlaps row 4's stages on another lane of tid 43.
        assert_eq!(t.lanes.get(&Place::Thread(43)), Some(&2));
        let flows_start = t.slices.iter().filter(|s| s.flow_start).count();
        let flows_end = t.slices.iter().filter(|s| s.flow_end).count();
        assert_eq!(flows_start, c.rows.len());
        assert_eq!(flows_end, c.rows.len());
    }

    #[test]
    fn partial_overlaps_open_lanes() {
        // [0,10] [5,15] [12,20] [1,2]: the second overlaps the first partly.
        let mk = |start, end| Slice {
            row: 0,
            from: Stamp::Nic,
            to: Stamp::Softirq,
            start,
            end,
            place: Place::Cpu(0),
            lane: 0,
            flow_start: false,
            flow_end: false,
        };
        let mut slices = vec![mk(0, 10), mk(5, 15), mk(12, 20), mk(1, 2)];
        let (lanes, marks) = assign_lanes(&mut slices);
        assert_eq!(lanes.get(&Place::Cpu(0)), Some(&2));
        let l: Vec<u32> = slices.iter().map(|s| s.lane).collect();
        assert_eq!(l, vec![0, 1, 0, 0]);
        let t = Timeline {
            slices,
            lanes,
            marks,
            tgid_of: BTreeMap::new(),
        };
        check_nesting(&t);
    }
}
