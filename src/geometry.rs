//! Plane geometry in normalised frame coordinates (x right, y down, both 0..1), on `geo`.
//!
//! A leaf (it imports nothing from the crate): the rules use it, and so do the sections whose
//! config holds polygons (camera masks), which sit below the rules.

use geo::{Contains, Coord, Line, LineString, Polygon, Relate};

pub type Point = (f32, f32);

/// A closed polygon (zone, mask) from `[x, y]` points.
pub fn polygon(points: &[[f32; 2]]) -> Polygon<f32> {
    Polygon::new(
        LineString::from(
            points
                .iter()
                .map(|&[x, y]| Coord { x, y })
                .collect::<Vec<_>>(),
        ),
        vec![],
    )
}

/// Is `p` inside (or on the edge of) the polygon?
pub fn contains(poly: &Polygon<f32>, p: Point) -> bool {
    let pt = geo::Point::new(p.0, p.1);
    poly.contains(&pt) || poly.exterior().contains(&pt)
}

/// Why a polygon is unusable, if it is.
pub fn polygon_problem(points: &[[f32; 2]]) -> Option<String> {
    if points.len() < 3 {
        return Some(format!(
            "a polygon needs at least 3 points, this one has {}",
            points.len()
        ));
    }
    if points.iter().flatten().any(|c| !(0.0..=1.0).contains(c)) {
        return Some("coordinates are fractions of the frame: use values in 0..1".into());
    }
    let n = points.len();
    let edge = |i: usize| {
        let (a, b) = (points[i], points[(i + 1) % n]);
        Line::new(Coord { x: a[0], y: a[1] }, Coord { x: b[0], y: b[1] })
    };
    for i in 0..n {
        if edge(i).start == edge(i).end {
            return Some(format!("points {i} and {} are the same", (i + 1) % n));
        }
        for j in i + 1..n {
            // Neighbouring edges share a vertex; any other contact is a self-intersection.
            if j == i + 1 || (i == 0 && j == n - 1) {
                continue;
            }
            if edge(i).relate(&edge(j)).is_intersects() {
                return Some(format!(
                    "edges {i} and {j} cross: the polygon intersects itself"
                ));
            }
        }
    }
    if signed_area(points).abs() < 1e-6 {
        return Some("the polygon has no area".into());
    }
    None
}

fn signed_area(points: &[[f32; 2]]) -> f32 {
    let n = points.len();
    (0..n)
        .map(|i| {
            let (a, b) = (points[i], points[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum::<f32>()
        / 2.0
}

/// Signed side of `p` relative to the directed segment a→b, scaled to a distance: positive on the
/// right of a→b as seen on screen (y down), negative on the left.
pub fn signed_distance(a: Point, b: Point, p: Point) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt();
    if len == 0.0 {
        return 0.0;
    }
    // With y pointing down, a positive cross product means "clockwise", i.e. to the right.
    (dx * (p.1 - a.1) - dy * (p.0 - a.0)) / len
}

/// Do segments p1→p2 and q1→q2 intersect (touching counts)?
pub fn segments_intersect(p1: Point, p2: Point, q1: Point, q2: Point) -> bool {
    let l1 = Line::new(Coord { x: p1.0, y: p1.1 }, Coord { x: p2.0, y: p2.1 });
    let l2 = Line::new(Coord { x: q1.0, y: q1.1 }, Coord { x: q2.0, y: q2.1 });
    l1.relate(&l2).is_intersects()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polygon_checks() {
        assert!(polygon_problem(&[[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]).is_none());
        assert!(
            polygon_problem(&[[0.1, 0.1], [0.9, 0.1]])
                .unwrap()
                .contains("at least 3")
        );
        // A bow tie.
        let bow = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]];
        assert!(polygon_problem(&bow).unwrap().contains("intersects itself"));
        assert!(
            polygon_problem(&[[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
                .unwrap()
                .contains("no area")
        );
        assert!(
            polygon_problem(&[[0.1, 0.1], [1.5, 0.1], [0.5, 0.9]])
                .unwrap()
                .contains("0..1")
        );
    }

    #[test]
    fn right_is_clockwise_on_screen() {
        // A line from left to right across the screen: below it (larger y) is its right side.
        assert!(signed_distance((0.0, 0.5), (1.0, 0.5), (0.5, 0.7)) > 0.0);
        assert!(signed_distance((0.0, 0.5), (1.0, 0.5), (0.5, 0.3)) < 0.0);
        assert!((signed_distance((0.0, 0.5), (1.0, 0.5), (0.5, 0.7)) - 0.2).abs() < 1e-6);
    }

    #[test]
    fn containment_includes_the_edge() {
        let sq = polygon(&[[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]]);
        assert!(contains(&sq, (0.5, 0.5)));
        assert!(contains(&sq, (0.2, 0.5)));
        assert!(!contains(&sq, (0.1, 0.5)));
    }
}
