//! Zones (ONVIF FieldDetector) and loitering (LoiteringDetector): where an object's feet are
//! relative to a polygon, frame after frame. Pure: times come in as arguments.

use std::time::Duration;

use geo::Polygon;
use jiff::Timestamp;

use super::geometry::{Point, contains};

/// What happened to one object against one zone in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneChange {
    /// Inside for `min_frames` consecutive frames.
    Entered,
    /// Outside for `min_frames` consecutive frames after having entered.
    Left,
    /// Inside (since entering) for longer than the dwell time; once per stay.
    Loitering,
}

#[derive(Debug, Clone)]
pub struct Zone {
    polygon: Polygon<f32>,
    min_frames: u32,
    /// Loitering threshold; `None` for a plain zone.
    dwell: Option<Duration>,
}

/// One object's state against one zone.
#[derive(Debug, Clone, Default)]
pub struct ZoneState {
    /// Consecutive frames on the other side of the entered/left boundary.
    streak: u32,
    entered_at: Option<Timestamp>,
    loitering_reported: bool,
}

impl ZoneState {
    pub fn inside(&self) -> bool {
        self.entered_at.is_some()
    }
}

impl Zone {
    pub fn new(polygon: Polygon<f32>, min_frames: u32, dwell: Option<Duration>) -> Self {
        Self {
            polygon,
            min_frames: min_frames.max(1),
            dwell,
        }
    }

    pub fn contains(&self, p: Point) -> bool {
        contains(&self.polygon, p)
    }

    /// Feeds the object's feet at time `t`; returns at most one change.
    pub fn update(&self, state: &mut ZoneState, p: Point, t: Timestamp) -> Option<ZoneChange> {
        let inside_now = self.contains(p);
        match state.entered_at {
            None => {
                state.streak = if inside_now { state.streak + 1 } else { 0 };
                if state.streak >= self.min_frames {
                    state.streak = 0;
                    state.entered_at = Some(t);
                    state.loitering_reported = false;
                    return Some(ZoneChange::Entered);
                }
                None
            }
            Some(since) => {
                state.streak = if inside_now { 0 } else { state.streak + 1 };
                if state.streak >= self.min_frames {
                    state.streak = 0;
                    state.entered_at = None;
                    return Some(ZoneChange::Left);
                }
                let dwell = self.dwell?;
                let stayed = t.duration_since(since).unsigned_abs();
                if !state.loitering_reported && stayed >= dwell {
                    state.loitering_reported = true;
                    return Some(ZoneChange::Loitering);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::geometry::polygon;
    use jiff::ToSpan;
    use proptest::prelude::*;

    fn square(points: &[[f32; 2]]) -> Zone {
        Zone::new(polygon(points), 3, Some(Duration::from_secs(10)))
    }

    const SQ: [[f32; 2]; 4] = [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]];

    fn run(z: &Zone, path: &[Point]) -> Vec<(usize, ZoneChange)> {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut s = ZoneState::default();
        path.iter()
            .enumerate()
            .filter_map(|(i, p)| {
                z.update(&mut s, *p, t0 + (i as i64 * 200).milliseconds())
                    .map(|c| (i, c))
            })
            .collect()
    }

    #[test]
    fn entering_needs_min_frames_and_loitering_needs_dwell() {
        let z = square(&SQ);
        // Two frames inside then out: nothing. Then inside for 12 s at 5 fps: entered on the third
        // frame, loitering 10 s after that, once; then out for three frames: left.
        let mut path = vec![(0.5, 0.5), (0.5, 0.5), (0.1, 0.1)];
        path.extend(std::iter::repeat_n((0.5, 0.5), 60));
        path.extend(std::iter::repeat_n((0.9, 0.9), 3));
        let changes = run(&z, &path);
        assert_eq!(
            changes,
            vec![
                (5, ZoneChange::Entered),
                (55, ZoneChange::Loitering),
                (65, ZoneChange::Left)
            ]
        );
    }

    proptest! {
        /// Rotating the order of a polygon's vertices changes nothing.
        #[test]
        fn vertex_rotation_changes_nothing(
            path in prop::collection::vec((0.0f32..1.0, 0.0f32..1.0), 1..60),
            k in 0usize..4,
            reverse in any::<bool>(),
        ) {
            let mut pts = SQ.to_vec();
            pts.rotate_left(k);
            if reverse {
                pts.reverse();
            }
            prop_assert_eq!(run(&square(&SQ), &path), run(&square(&pts), &path));
        }
    }
}
