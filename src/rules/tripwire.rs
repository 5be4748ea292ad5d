//! Tripwires (ONVIF LineDetector): a polyline; an object crosses it when its feet move from one
//! side of a segment to the other through the segment.
//!
//! Hysteresis: a point closer to a segment's line than `hysteresis` has no side, so someone
//! standing on the line and swaying does not cross it again and again. For each segment the state
//! is the last point that had a side; a crossing is the move from that point to the next point
//! with the other side, if the move passes through the segment (walking around its end is not a
//! crossing). Pure: no clock, no I/O.

use serde::{Deserialize, Serialize};

use super::geometry::{Point, segments_intersect, signed_distance};

/// Which crossings a rule reports, relative to the line's direction (first point → last point,
/// on screen): `left` = from its right side to its left side, `right` = the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Left,
    Right,
    #[default]
    Any,
}

/// The side an object crossed *to*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Crossing {
    Left,
    Right,
}

impl Crossing {
    pub fn reversed(self) -> Self {
        match self {
            Self::Left => Self::Right,
            Self::Right => Self::Left,
        }
    }
}

impl Direction {
    pub fn matches(self, c: Crossing) -> bool {
        matches!(
            (self, c),
            (Direction::Any, _)
                | (Direction::Left, Crossing::Left)
                | (Direction::Right, Crossing::Right)
        )
    }
}

#[derive(Debug, Clone)]
pub struct Tripwire {
    points: Vec<Point>,
    hysteresis: f32,
}

/// One object's state against one tripwire.
#[derive(Debug, Clone, Default)]
pub struct TripwireState {
    /// Per segment: the last point that had a side, and that side (+1 right, -1 left).
    last: Vec<Option<(i8, Point)>>,
}

impl Tripwire {
    pub fn new(points: Vec<Point>, hysteresis: f32) -> Self {
        Self { points, hysteresis }
    }

    /// Feeds the object's next position; returns the crossing it made, if any (at most one per
    /// step, even where a step crosses two segments at a vertex).
    pub fn update(&self, state: &mut TripwireState, p: Point) -> Option<Crossing> {
        let segments = self.points.len().saturating_sub(1);
        state.last.resize(segments, None);
        let mut crossing = None;
        for (i, last) in state.last.iter_mut().enumerate() {
            let (a, b) = (self.points[i], self.points[i + 1]);
            let d = signed_distance(a, b, p);
            if d.abs() <= self.hysteresis {
                continue;
            }
            let side: i8 = if d > 0.0 { 1 } else { -1 };
            if let Some((prev_side, prev)) = *last
                && prev_side != side
                && crossing.is_none()
                && segments_intersect(prev, p, a, b)
            {
                crossing = Some(if side > 0 {
                    Crossing::Right
                } else {
                    Crossing::Left
                });
            }
            *last = Some((side, p));
        }
        crossing
    }
}

/// Why a tripwire is unusable, if it is.
pub fn tripwire_problem(points: &[[f32; 2]]) -> Option<String> {
    if points.len() < 2 {
        return Some(format!(
            "a tripwire needs at least 2 points, this one has {}",
            points.len()
        ));
    }
    if points.iter().flatten().any(|c| !(0.0..=1.0).contains(c)) {
        return Some("coordinates are fractions of the frame: use values in 0..1".into());
    }
    for (i, w) in points.windows(2).enumerate() {
        if (w[0][0] - w[1][0]).abs() < 1e-6 && (w[0][1] - w[1][1]).abs() < 1e-6 {
            return Some(format!(
                "segment {i} has zero length (points {i} and {} are the same)",
                i + 1
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(w: &Tripwire, path: &[Point]) -> Vec<Crossing> {
        let mut s = TripwireState::default();
        path.iter().filter_map(|p| w.update(&mut s, *p)).collect()
    }

    fn horizontal() -> Tripwire {
        // Left to right across the middle: below it is its right side.
        Tripwire::new(vec![(0.1, 0.5), (0.9, 0.5)], 0.02)
    }

    #[test]
    fn walking_down_across_crosses_to_the_right() {
        let path = [(0.5, 0.3), (0.5, 0.45), (0.5, 0.55), (0.5, 0.7)];
        assert_eq!(run(&horizontal(), &path), vec![Crossing::Right]);
    }

    #[test]
    fn swaying_on_the_line_does_not_cross_again() {
        let mut path = vec![(0.5, 0.3), (0.5, 0.6)];
        for i in 0..50 {
            path.push((0.5, 0.5 + if i % 2 == 0 { 0.015 } else { -0.015 }));
        }
        path.push((0.5, 0.7));
        assert_eq!(run(&horizontal(), &path), vec![Crossing::Right]);
    }

    #[test]
    fn walking_around_the_end_is_not_a_crossing() {
        let path = [(0.95, 0.3), (0.95, 0.7)];
        assert_eq!(run(&horizontal(), &path), vec![]);
    }

    #[test]
    fn a_polyline_crossed_at_a_vertex_counts_once() {
        let w = Tripwire::new(vec![(0.1, 0.5), (0.5, 0.5), (0.9, 0.2)], 0.01);
        assert_eq!(run(&w, &[(0.5, 0.3), (0.5, 0.7)]), vec![Crossing::Right]);
    }

    prop_compose! {
        fn point()(x in 0.0f32..1.0, y in 0.0f32..1.0) -> Point { (x, y) }
    }

    proptest! {
        /// Walking a path backwards crosses the same times in the opposite directions.
        #[test]
        fn reversing_the_path_reverses_the_crossings(
            path in prop::collection::vec(point(), 2..40),
            a in point(), b in point(),
        ) {
            prop_assume!((a.0 - b.0).abs() + (a.1 - b.1).abs() > 0.05);
            let w = Tripwire::new(vec![a, b], 0.01);
            let forward = run(&w, &path);
            let mut reversed_path = path.clone();
            reversed_path.reverse();
            let mut backward = run(&w, &reversed_path);
            backward.reverse();
            let expected: Vec<Crossing> = forward.iter().map(|c| c.reversed()).collect();
            prop_assert_eq!(backward, expected);
        }

        /// A path that goes back and forth across the line n times, with jitter inside the
        /// hysteresis band in between, fires exactly n crossings, alternating.
        #[test]
        fn n_passes_fire_n_crossings(
            n in 0usize..12,
            xs in prop::collection::vec(0.15f32..0.85, 12),
            jitter in prop::collection::vec(-0.019f32..0.019, 10),
            far in 0.05f32..0.4,
        ) {
            let w = horizontal();
            let mut path = vec![(0.5, 0.5 - far)];
            for (i, x) in xs.iter().take(n).enumerate() {
                for j in &jitter {
                    path.push((*x, 0.5 + j));
                }
                let side = if i % 2 == 0 { far } else { -far };
                path.push((*x, 0.5 + side));
            }
            let c = run(&w, &path);
            prop_assert_eq!(c.len(), n);
            for (i, c) in c.iter().enumerate() {
                prop_assert_eq!(*c, if i % 2 == 0 { Crossing::Right } else { Crossing::Left });
            }
        }
    }
}
