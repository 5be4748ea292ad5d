//! The per-camera tracker: turns per-frame detections into tracks with stable ids, so one person
//! crossing a fence is one event and not one per frame.
//!
//! Each step predicts every track's box from its velocity (constant velocity, for the time since it
//! was last seen), matches detections of the same class to predictions greedily by IoU, updates the
//! matched tracks, ages the others and starts tracks for unmatched detections. A track is confirmed
//! after `confirm_hits` matches and ends after `max_misses` inferred frames without a match or
//! `max_unseen` of time. Each track keeps its path (feet points) and its best snapshot: the `S` of
//! the frame where it scored highest. Pure: `S` is whatever the caller wants kept (a frame).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;

use crate::detect::{BBox, Detection};

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Least IoU between a predicted box and a detection to match them.
    pub min_iou: f32,
    pub confirm_hits: u32,
    pub max_misses: u32,
    pub max_unseen: Duration,
    /// Points kept per track path.
    pub max_path: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            min_iou: 0.2,
            confirm_hits: 2,
            max_misses: 5,
            max_unseen: Duration::from_secs(3),
            max_path: 300,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Track<S> {
    pub id: u64,
    pub class_id: u32,
    pub label: Arc<str>,
    /// The last matched box.
    pub bbox: BBox,
    /// The last matched score.
    pub score: f32,
    pub hits: u32,
    /// Inferred frames since the last match.
    pub misses: u32,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub confirmed: bool,
    /// Feet positions with their times, oldest first.
    pub path: VecDeque<(Timestamp, (f32, f32))>,
    /// The highest-scoring sighting: (score, box, snapshot).
    pub best: (f32, BBox, S),
    /// Box centre velocity, frame fractions per second.
    velocity: (f32, f32),
}

impl<S> Track<S> {
    /// Matched in the latest step.
    pub fn seen_now(&self) -> bool {
        self.misses == 0
    }

    pub fn feet(&self) -> (f32, f32) {
        self.bbox.feet()
    }

    fn predicted(&self, t: Timestamp) -> BBox {
        let dt = t
            .duration_since(self.last_seen)
            .as_secs_f32()
            .clamp(0.0, 2.0);
        let (dx, dy) = (self.velocity.0 * dt, self.velocity.1 * dt);
        BBox::new(
            self.bbox.x1 + dx,
            self.bbox.y1 + dy,
            self.bbox.x2 + dx,
            self.bbox.y2 + dy,
        )
    }
}

pub struct Tracker<S> {
    cfg: TrackerConfig,
    tracks: Vec<Track<S>>,
    next_id: u64,
}

/// What one step changed.
#[derive(Debug, Default)]
pub struct StepResult {
    /// Ids of tracks that ended in this step (their last state is in `ended`).
    pub ended: Vec<u64>,
}

impl<S: Clone> Tracker<S> {
    pub fn new(cfg: TrackerConfig) -> Self {
        Self {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    pub fn tracks(&self) -> &[Track<S>] {
        &self.tracks
    }

    /// True while any confirmed track is alive (the motion gate keeps such a camera inferred).
    pub fn has_live_tracks(&self) -> bool {
        self.tracks.iter().any(|t| t.confirmed)
    }

    /// One inferred frame at time `t` with its detections; `snapshot` is kept as a track's best
    /// when a detection beats its best score. Returns the tracks that ended.
    pub fn update(
        &mut self,
        t: Timestamp,
        detections: &[Detection],
        snapshot: &S,
    ) -> Vec<Track<S>> {
        // Candidate pairs (IoU, track, detection), best first.
        let predicted: Vec<BBox> = self.tracks.iter().map(|tr| tr.predicted(t)).collect();
        let mut pairs = Vec::new();
        for (ti, tr) in self.tracks.iter().enumerate() {
            for (di, d) in detections.iter().enumerate() {
                if d.class_id != tr.class_id {
                    continue;
                }
                let iou = predicted[ti].iou(&d.bbox).max(tr.bbox.iou(&d.bbox));
                if iou >= self.cfg.min_iou {
                    pairs.push((iou, ti, di));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_taken = vec![false; self.tracks.len()];
        let mut det_taken = vec![false; detections.len()];
        for (_, ti, di) in pairs {
            if track_taken[ti] || det_taken[di] {
                continue;
            }
            track_taken[ti] = true;
            det_taken[di] = true;
            let d = &detections[di];
            let tr = &mut self.tracks[ti];
            let dt = t.duration_since(tr.last_seen).as_secs_f32();
            if dt > 0.0 {
                let (ox, oy) = center(&tr.bbox);
                let (nx, ny) = center(&d.bbox);
                let v = ((nx - ox) / dt, (ny - oy) / dt);
                // Smooth: detector boxes jitter.
                tr.velocity = if tr.hits == 1 {
                    v
                } else {
                    (
                        0.5 * tr.velocity.0 + 0.5 * v.0,
                        0.5 * tr.velocity.1 + 0.5 * v.1,
                    )
                };
            }
            tr.bbox = d.bbox;
            tr.score = d.score;
            tr.hits += 1;
            tr.misses = 0;
            tr.last_seen = t;
            tr.confirmed |= tr.hits >= self.cfg.confirm_hits;
            tr.path.push_back((t, d.bbox.feet()));
            if tr.path.len() > self.cfg.max_path {
                tr.path.pop_front();
            }
            if d.score > tr.best.0 {
                tr.best = (d.score, d.bbox, snapshot.clone());
            }
        }
        for (ti, taken) in track_taken.iter().enumerate() {
            if !taken {
                self.tracks[ti].misses += 1;
            }
        }
        let (cfg, mut ended) = (&self.cfg, Vec::new());
        self.tracks.retain_mut(|tr| {
            let gone = tr.misses > cfg.max_misses
                || t.duration_since(tr.last_seen).unsigned_abs() > cfg.max_unseen;
            if gone {
                ended.push(tr.clone());
            }
            !gone
        });
        for (di, d) in detections.iter().enumerate() {
            if det_taken[di] {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.tracks.push(Track {
                id,
                class_id: d.class_id,
                label: d.label.clone(),
                bbox: d.bbox,
                score: d.score,
                hits: 1,
                misses: 0,
                first_seen: t,
                last_seen: t,
                confirmed: self.cfg.confirm_hits <= 1,
                path: VecDeque::from([(t, d.bbox.feet())]),
                best: (d.score, d.bbox, snapshot.clone()),
                velocity: (0.0, 0.0),
            });
        }
        ended
    }
}

fn center(b: &BBox) -> (f32, f32) {
    ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::ToSpan;

    fn det(x: f32, y: f32, score: f32) -> Detection {
        Detection {
            class_id: 0,
            label: "person".into(),
            score,
            bbox: BBox::new(x, y, x + 0.06, y + 0.2),
        }
    }

    fn t(i: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + (i * 200).milliseconds()
    }

    #[test]
    fn two_walkers_keep_their_ids_through_a_gap_and_a_dropped_frame() {
        let mut tr: Tracker<u32> = Tracker::new(TrackerConfig::default());
        // Walker A moves right fast (0.03 per frame), B moves left; they never overlap.
        let mut ids = std::collections::HashSet::new();
        for i in 0..30i64 {
            if i == 12 || i == 13 {
                // Two frames where the detector misses A (occlusion).
                tr.update(t(i), &[det(0.7 - 0.01 * i as f32, 0.6, 0.8)], &(i as u32));
                continue;
            }
            if i == 20 {
                continue; // a dropped frame: no inference at all
            }
            tr.update(
                t(i),
                &[
                    det(0.05 + 0.03 * i as f32, 0.2, 0.5 + 0.01 * i as f32),
                    det(0.7 - 0.01 * i as f32, 0.6, 0.8),
                ],
                &(i as u32),
            );
            for track in tr.tracks() {
                ids.insert(track.id);
            }
        }
        assert_eq!(ids.len(), 2, "ids: {ids:?}");
        let a = tr.tracks().iter().find(|t| t.bbox.y1 < 0.5).unwrap();
        assert!(a.confirmed);
        assert_eq!(a.best.2, 29, "best snapshot is the highest-scoring frame");
        assert!(a.path.len() >= 25);
    }

    #[test]
    fn a_track_ends_after_max_misses() {
        let mut tr: Tracker<()> = Tracker::new(TrackerConfig::default());
        tr.update(t(0), &[det(0.5, 0.5, 0.9)], &());
        let mut ended = vec![];
        for i in 1..=6 {
            ended.extend(tr.update(t(i), &[], &()));
        }
        assert_eq!(ended.len(), 1);
        assert!(tr.tracks().is_empty());
    }
}
