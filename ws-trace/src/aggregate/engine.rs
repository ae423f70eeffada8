//! The engine's stages of each message, from its stamp-channel record, into histograms.
use ws_abi::MsgStamps;

use crate::correlate::Stamp;
use crate::stats::{LogHistogram, StageHistogram};

/// The engine stages aggregate mode keeps, in pipeline order. Each lasts from the
/// previous engine stamp present in the message's record: decrypt from recv_start,
/// recv_end from decrypt (else recv_start), parsed from recv_end, callback from parsed,
/// callback_done from callback.
pub const ENGINE_STAGES: [Stamp; 5] = [
    Stamp::Decrypt,
    Stamp::RecvEnd,
    Stamp::Parsed,
    Stamp::Callback,
    Stamp::CallbackDone,
];

/// Histograms of the engine stages, filled one message at a time.
#[derive(Clone, Debug, Default)]
pub struct EngineStages {
    hists: [LogHistogram; ENGINE_STAGES.len()],
    messages: u64,
}

impl EngineStages {
    /// Empty histograms.
    pub fn new() -> EngineStages {
        EngineStages::default()
    }

    /// Adds one message: its engine stamps and its callback's start and end (ns). A stamp
    /// that is 0 is absent, and so is the stage it ends (and the next stage then lasts
    /// from the stamp before it); a stamp before the one it follows (the engine's clock
    /// conversion, at most its calibration error) counts as no time, as the join's
    /// levelling makes it.
    pub fn record(&mut self, stamps: &MsgStamps, start_ns: u64, done_ns: u64) {
        self.record_weighted(stamps, start_ns, done_ns, 1);
    }

    /// As [`EngineStages::record`] for a sampled message that stands for `weight`.
    pub fn record_weighted(
        &mut self,
        stamps: &MsgStamps,
        start_ns: u64,
        done_ns: u64,
        weight: u64,
    ) {
        self.messages += 1;
        let ends = [
            stamps.decrypt_start_ns,
            stamps.recv_end_ns,
            stamps.parsed_ns,
            start_ns,
            done_ns,
        ];
        let mut prev = stamps.recv_start_ns;
        for (hist, &end) in self.hists.iter_mut().zip(ends.iter()) {
            if end == 0 {
                continue;
            }
            if prev != 0 {
                hist.record_n(end.saturating_sub(prev), weight);
            }
            prev = prev.max(end);
        }
    }

    /// Messages recorded (each sampled one once, whatever its weight).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The stage histograms (cumulative), in pipeline order.
    pub fn stages(&self) -> impl Iterator<Item = StageHistogram> + '_ {
        ENGINE_STAGES
            .iter()
            .zip(self.hists.iter())
            .map(|(&stamp, hist)| StageHistogram {
                stamp,
                hist: hist.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamps(recv_start: u64, decrypt: u64, recv_end: u64, parsed: u64) -> MsgStamps {
        MsgStamps {
            event_ns: 0,
            recv_start_ns: recv_start,
            recv_end_ns: recv_end,
            decrypt_start_ns: decrypt,
            parsed_ns: parsed,
            callback_ns: 0,
        }
    }

    fn counts(e: &EngineStages) -> Vec<(Stamp, u64, u64)> {
        e.stages()
            .map(|s| (s.stamp, s.hist.count(), s.hist.sum()))
            .collect()
    }

    #[test]
    fn each_stage_lasts_from_the_previous_present_stamp() {
        let mut e = EngineStages::new();
        // Plain: no decrypt.
        e.record(&stamps(1_000, 0, 1_400, 1_500), 1_600, 51_600);
        assert_eq!(
            counts(&e),
            vec![
                (Stamp::Decrypt, 0, 0),
                (Stamp::RecvEnd, 1, 400),
                (Stamp::Parsed, 1, 100),
                (Stamp::Callback, 1, 100),
                (Stamp::CallbackDone, 1, 50_000),
            ]
        );
        // Userspace TLS: recv_start → decrypt → recv_end.
        e.record(&stamps(1_000, 1_300, 1_400, 1_500), 1_600, 1_700);
        assert_eq!(counts(&e)[0], (Stamp::Decrypt, 1, 300));
        assert_eq!(counts(&e)[1], (Stamp::RecvEnd, 2, 500));
        assert_eq!(e.messages(), 2);
    }

    #[test]
    fn a_missing_read_start_leaves_only_the_read_stage_out() {
        let mut e = EngineStages::new();
        e.record(&stamps(0, 0, 1_400, 1_500), 1_600, 1_650);
        let c = counts(&e);
        assert_eq!(c[1], (Stamp::RecvEnd, 0, 0));
        assert_eq!(c[2], (Stamp::Parsed, 1, 100));
        assert_eq!(c[4], (Stamp::CallbackDone, 1, 50));
    }

    #[test]
    fn a_sampled_message_counts_for_its_weight() {
        let mut e = EngineStages::new();
        e.record_weighted(&stamps(1_000, 0, 1_400, 1_500), 1_600, 1_700, 16);
        assert_eq!(counts(&e)[1], (Stamp::RecvEnd, 16, 16 * 400));
        assert_eq!(e.messages(), 1);
    }

    #[test]
    fn a_stamp_behind_its_predecessor_counts_as_no_time() {
        let mut e = EngineStages::new();
        // parsed 20 ns before recv_end (clock conversion noise).
        e.record(&stamps(1_000, 0, 1_400, 1_380), 1_500, 1_600);
        let c = counts(&e);
        assert_eq!(c[2], (Stamp::Parsed, 1, 0));
        // The next stage lasts from the later of the two.
        assert_eq!(c[3], (Stamp::Callback, 1, 100));
    }
}
