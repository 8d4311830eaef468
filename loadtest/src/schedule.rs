//! The open-loop schedule: the intended send time of every request. A run is a list of
//! phases, each a duration at a constant rate; a spike is a phase at ten times the rate
//! of its neighbours. Latency is measured from these times, not from when a request
//! actually left, so a stalled server is charged for every request it delayed
//! (no coordinated omission).

use std::time::Duration;

/// A stretch of the run at one offered rate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Phase {
    pub seconds: f64,
    pub rate: f64,
}

/// Phases with their first request number and start time, precomputed.
#[derive(Debug, Clone)]
pub struct Schedule {
    phases: Vec<(Phase, u64, f64)>,
    total: u64,
}

impl Schedule {
    /// Validates the phases: positive durations and rates, bounded in all.
    pub fn new(phases: &[Phase]) -> Result<Schedule, String> {
        if phases.is_empty() {
            return Err("no phases".into());
        }
        let mut out = Vec::with_capacity(phases.len());
        let (mut first, mut start) = (0u64, 0f64);
        for p in phases {
            if !(p.seconds > 0.0 && p.seconds.is_finite() && p.rate > 0.0 && p.rate.is_finite()) {
                return Err(format!("phase {p:?}: duration and rate must be above 0"));
            }
            out.push((*p, first, start));
            first += (p.seconds * p.rate).round() as u64;
            start += p.seconds;
        }
        if first > 500_000_000 {
            return Err(format!("{first} requests: too many for one run"));
        }
        Ok(Schedule {
            phases: out,
            total: first,
        })
    }

    /// How many requests the schedule sends.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The length of the whole run.
    pub fn seconds(&self) -> f64 {
        self.phases.iter().map(|(p, _, _)| p.seconds).sum()
    }

    pub fn phases(&self) -> impl Iterator<Item = Phase> + '_ {
        self.phases.iter().map(|(p, _, _)| *p)
    }

    /// Request `i`'s phase index and intended send time (from the start of the run);
    /// `None` past the end.
    pub fn at(&self, i: u64) -> Option<(usize, Duration)> {
        if i >= self.total {
            return None;
        }
        // Few phases: a linear scan from the back is cheapest.
        let k = self.phases.iter().rposition(|(_, first, _)| *first <= i)?;
        let (p, first, start) = self.phases[k];
        Some((k, Duration::from_secs_f64(start + (i - first) as f64 / p.rate)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate() {
        let s = Schedule::new(&[Phase {
            seconds: 2.0,
            rate: 1000.0,
        }])
        .unwrap();
        assert_eq!(s.total(), 2000);
        assert_eq!(s.at(0), Some((0, Duration::ZERO)));
        assert_eq!(s.at(1), Some((0, Duration::from_micros(1000))));
        assert_eq!(s.at(1500), Some((0, Duration::from_millis(1500))));
        assert_eq!(s.at(2000), None);
    }

    #[test]
    fn spike_steps_up_and_back() {
        let s = Schedule::new(&[
            Phase {
                seconds: 1.0,
                rate: 100.0,
            },
            Phase {
                seconds: 0.5,
                rate: 1000.0,
            },
            Phase {
                seconds: 1.0,
                rate: 100.0,
            },
        ])
        .unwrap();
        assert_eq!(s.total(), 100 + 500 + 100);
        assert_eq!(s.at(99), Some((0, Duration::from_millis(990))));
        assert_eq!(s.at(100), Some((1, Duration::from_secs(1))));
        assert_eq!(s.at(101), Some((1, Duration::from_millis(1001))));
        assert_eq!(s.at(600), Some((2, Duration::from_millis(1500))));
        assert_eq!(s.at(699), Some((2, Duration::from_millis(2490))));
        assert_eq!(s.at(700), None);
        assert_eq!(s.seconds(), 2.5);
        // Intended times never go backwards.
        let times: Vec<_> = (0..700).map(|i| s.at(i).unwrap().1).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn refuses_nonsense() {
        assert!(Schedule::new(&[]).is_err());
        assert!(Schedule::new(&[Phase {
            seconds: 0.0,
            rate: 1.0
        }])
        .is_err());
        assert!(Schedule::new(&[Phase {
            seconds: 1.0,
            rate: f64::NAN
        }])
        .is_err());
        assert!(Schedule::new(&[Phase {
            seconds: 1e6,
            rate: 1e6
        }])
        .is_err());
    }
}
