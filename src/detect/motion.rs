//! The motion gate: a cheap test that decides whether a frame is worth an inference.
//!
//! The frame is block-averaged to a small grayscale grid (about 80 cells wide); cells whose value
//! differs from a slowly updated background by more than `threshold` are "changed"; if the changed
//! share of the unmasked cells reaches `min_area`, there is motion. A camera is inferred when there
//! is motion, for `hold` after it, while it has live tracks, and at least every `keepalive`
//! (someone standing perfectly still is still found).

use std::time::{Duration, Instant};

use geo::{Contains, Coord, LineString, Point, Polygon};
use serde::Deserialize;

use crate::camera::{Frame, Pixels};

/// Grid width the frame is reduced to.
const GRID_W: usize = 80;

/// `[motion]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    /// Off: every frame is inferred. Default: true.
    pub enabled: bool,
    /// Gray-level difference (0-255) that makes a cell "changed". Default: 18.
    pub threshold: u8,
    /// Share of the unmasked picture that must change to count as motion. Default: 0.002 (0.2 %).
    pub min_area: f32,
    /// How fast the background follows the picture, per frame (0-1). Default: 0.05.
    pub background_alpha: f32,
    /// Keep inferring this long after the last motion. Default: 2s.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Infer at least this often on a still scene. While frames with motion keep the detector
    /// busy, such a keep-alive waits behind them until the next one replaces it, one more
    /// `keepalive` later (a still scene is then inferred about every 2 x `keepalive`, on a fresh
    /// frame). Default: 10s.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// While the scene is still (no motion, no hold, no live tracks), decode only the camera's
    /// keyframes: a still camera then costs a fraction of a decoder. Full decoding resumes at the
    /// next keyframe after motion is seen on one. H.264 cameras only (`codec = "h264"`).
    /// Default: true.
    pub keyframes_when_still: bool,
    /// With `keyframes_when_still`: decode a still camera's keyframe only this often, or sooner when
    /// its compressed frames grow. Motion is then noticed up to this much later. The size hint
    /// works on clean pictures only: measured on a noisy scene (docs/BENCHMARKS.md) it missed even
    /// a large walking figure, at constant bit rate and at constant quality. "0s" (the default)
    /// decodes every keyframe.
    #[serde(with = "humantime_serde")]
    pub still_keyframe_interval: Duration,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 18,
            min_area: 0.002,
            background_alpha: 0.05,
            hold: Duration::from_secs(2),
            keepalive: Duration::from_secs(10),
            keyframes_when_still: true,
            still_keyframe_interval: Duration::ZERO,
        }
    }
}

impl MotionConfig {
    /// Puts the section's problems (paths `motion.*`) in `v`.
    pub fn validate(&self, v: &mut crate::validate::Validator) {
        if !(0.0..=1.0).contains(&self.min_area) {
            v.err("motion.min_area", "a share of the picture: use 0..1");
        }
        if !(0.0..=1.0).contains(&self.background_alpha) || self.background_alpha == 0.0 {
            v.err("motion.background_alpha", "use a value in (0, 1]");
        }
        if self.keepalive.is_zero() {
            v.err("motion.keepalive", "must be greater than zero");
        }
    }
}

/// Why a frame is inferred or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    Infer(InferReason),
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferReason {
    /// The gate is off.
    Disabled,
    /// The first frame (or the first after a size change).
    First,
    Motion,
    /// Motion stopped less than `hold` ago.
    Hold,
    /// The tracker has live tracks on this camera.
    LiveTracks,
    Keepalive,
}

/// What the last frame looked like, for tamper detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PictureStats {
    /// Mean gray level, 0-255.
    pub mean: f32,
    /// Standard deviation of the gray level across the picture.
    pub spread: f32,
    /// Mean absolute change per cell since the previous frame; exactly 0 for a repeated frame.
    pub change: f32,
}

/// One camera's gate.
pub struct MotionGate {
    cfg: MotionConfig,
    /// Normalised polygons whose area is ignored.
    masks: Vec<Polygon<f32>>,
    grid: Option<Grid>,
    last_motion: Option<Instant>,
    last_inference: Option<Instant>,
    picture: Option<PictureStats>,
}

struct Grid {
    frame_w: u32,
    frame_h: u32,
    w: usize,
    h: usize,
    background: Vec<f32>,
    /// Per cell: counts towards motion (not masked).
    active: Vec<bool>,
    active_cells: usize,
    current: Vec<f32>,
    previous: Vec<f32>,
}

impl MotionGate {
    /// `masks`: polygons in normalised frame coordinates ([x, y] pairs).
    pub fn new(cfg: MotionConfig, masks: &[Vec<[f32; 2]>]) -> Self {
        let masks = masks
            .iter()
            .map(|ring| {
                Polygon::new(
                    LineString::from(
                        ring.iter()
                            .map(|&[x, y]| Coord { x, y })
                            .collect::<Vec<_>>(),
                    ),
                    vec![],
                )
            })
            .collect();
        Self {
            cfg,
            masks,
            grid: None,
            last_motion: None,
            last_inference: None,
            picture: None,
        }
    }

    /// Statistics of the last frame checked.
    pub fn picture(&self) -> Option<PictureStats> {
        self.picture
    }

    /// Decides about one frame, and learns it into the background.
    pub fn check(&mut self, frame: &Frame, live_tracks: bool, now: Instant) -> GateDecision {
        let decision = self.decide(frame, live_tracks, now);
        if let GateDecision::Infer(_) = decision {
            self.last_inference = Some(now);
        }
        decision
    }

    fn decide(&mut self, frame: &Frame, live_tracks: bool, now: Instant) -> GateDecision {
        let fresh = match &self.grid {
            Some(g) => g.frame_w != frame.width || g.frame_h != frame.height,
            None => true,
        };
        if fresh {
            let mut grid = Grid::new(frame.width, frame.height, &self.masks);
            grid.sample(frame);
            grid.background.clone_from(&grid.current);
            grid.previous.clone_from(&grid.current);
            self.grid = Some(grid);
        } else {
            let grid = self.grid.as_mut().expect("grid");
            std::mem::swap(&mut grid.previous, &mut grid.current);
            grid.sample(frame);
        }
        let grid = self.grid.as_mut().expect("grid");
        self.picture = Some(grid.picture(fresh));
        if !self.cfg.enabled {
            return GateDecision::Infer(InferReason::Disabled);
        }
        if fresh {
            self.last_motion = Some(now);
            return GateDecision::Infer(InferReason::First);
        }
        let threshold = self.cfg.threshold as f32;
        let mut changed = 0usize;
        for i in 0..grid.current.len() {
            if grid.active[i] && (grid.current[i] - grid.background[i]).abs() > threshold {
                changed += 1;
            }
            grid.background[i] +=
                self.cfg.background_alpha * (grid.current[i] - grid.background[i]);
        }
        let share = changed as f32 / grid.active_cells.max(1) as f32;
        if changed > 0 && share >= self.cfg.min_area {
            self.last_motion = Some(now);
            return GateDecision::Infer(InferReason::Motion);
        }
        if live_tracks {
            return GateDecision::Infer(InferReason::LiveTracks);
        }
        if self
            .last_motion
            .is_some_and(|t| now.duration_since(t) < self.cfg.hold)
        {
            return GateDecision::Infer(InferReason::Hold);
        }
        if self
            .last_inference
            .is_none_or(|t| now.duration_since(t) >= self.cfg.keepalive)
        {
            return GateDecision::Infer(InferReason::Keepalive);
        }
        GateDecision::Skip
    }
}

impl Grid {
    fn new(frame_w: u32, frame_h: u32, masks: &[Polygon<f32>]) -> Self {
        let w = GRID_W.min(frame_w as usize).max(1);
        let h = ((w as f32 * frame_h as f32 / frame_w as f32).round() as usize)
            .clamp(1, frame_h as usize);
        let active: Vec<bool> = (0..w * h)
            .map(|i| {
                let centre = Point::new(
                    ((i % w) as f32 + 0.5) / w as f32,
                    ((i / w) as f32 + 0.5) / h as f32,
                );
                !masks.iter().any(|m| m.contains(&centre))
            })
            .collect();
        let active_cells = active.iter().filter(|a| **a).count();
        Self {
            frame_w,
            frame_h,
            w,
            h,
            background: vec![0.0; w * h],
            active,
            active_cells,
            current: vec![0.0; w * h],
            previous: vec![0.0; w * h],
        }
    }

    fn picture(&self, first: bool) -> PictureStats {
        let n = self.current.len().max(1) as f32;
        let mean = self.current.iter().sum::<f32>() / n;
        let var = self
            .current
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>()
            / n;
        let change = if first {
            f32::NAN
        } else {
            self.current
                .iter()
                .zip(&self.previous)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / n
        };
        PictureStats {
            mean,
            spread: var.sqrt(),
            change,
        }
    }

    /// Block-averages the frame's luma (full range, 0-255) into `current`, sampling every other
    /// pixel of each block: the Y plane of an I420 frame, (R + 2G + B) / 4 of an RGB one.
    fn sample(&mut self, frame: &Frame) {
        let fw = frame.width as usize;
        match &frame.pixels {
            Pixels::Rgb(rgb) => self.sample_with(frame, |x, y| {
                let p = &rgb[(y * fw + x) * 3..];
                (p[0] as u32 + 2 * p[1] as u32 + p[2] as u32) / 4
            }),
            Pixels::I420 { data, matrix } => {
                self.sample_with(frame, |x, y| data[y * fw + x] as u32);
                let c = matrix.converter();
                for v in &mut self.current {
                    *v = c.luma(*v);
                }
            }
        }
    }

    fn sample_with(&mut self, frame: &Frame, luma: impl Fn(usize, usize) -> u32) {
        let (fw, fh) = (frame.width as usize, frame.height as usize);
        for gy in 0..self.h {
            let (y0, y1) = (
                gy * fh / self.h,
                ((gy + 1) * fh / self.h).max(gy * fh / self.h + 1),
            );
            for gx in 0..self.w {
                let (x0, x1) = (
                    gx * fw / self.w,
                    ((gx + 1) * fw / self.w).max(gx * fw / self.w + 1),
                );
                let (mut sum, mut n) = (0u32, 0u32);
                for y in (y0..y1).step_by(2) {
                    for x in (x0..x1).step_by(2) {
                        sum += luma(x, y);
                        n += 1;
                    }
                }
                self.current[gy * self.w + gx] = sum as f32 / n.max(1) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;

    fn frame(w: u32, h: u32, paint: impl Fn(u32, u32) -> u8) -> Frame {
        let mut rgb = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let v = paint(x, y);
                rgb.extend([v, v, v]);
            }
        }
        Frame {
            camera: Arc::from("c"),
            seq: 0,
            captured_at: SystemTime::now(),
            captured: Instant::now(),
            width: w,
            height: h,
            pixels: Pixels::Rgb(rgb),
        }
    }

    fn cfg() -> MotionConfig {
        MotionConfig {
            keepalive: Duration::from_secs(10),
            hold: Duration::from_secs(1),
            ..MotionConfig::default()
        }
    }

    #[test]
    fn still_scene_is_skipped_until_keepalive() {
        let mut g = MotionGate::new(cfg(), &[]);
        let t0 = Instant::now();
        let still = frame(320, 180, |x, y| ((x + y) % 200) as u8);
        assert_eq!(
            g.check(&still, false, t0),
            GateDecision::Infer(InferReason::First)
        );
        // Within hold of the first frame.
        assert_eq!(
            g.check(&still, false, t0 + Duration::from_millis(500)),
            GateDecision::Infer(InferReason::Hold)
        );
        for i in 0..40 {
            let t = t0 + Duration::from_millis(1200 + i * 200);
            assert_eq!(g.check(&still, false, t), GateDecision::Skip, "frame {i}");
        }
        assert_eq!(
            g.check(&still, false, t0 + Duration::from_secs(11)),
            GateDecision::Infer(InferReason::Keepalive)
        );
        // Live tracks keep a still camera inferred.
        assert_eq!(
            g.check(&still, true, t0 + Duration::from_secs(12)),
            GateDecision::Infer(InferReason::LiveTracks)
        );
    }

    #[test]
    fn a_moving_block_is_motion_unless_masked() {
        let t0 = Instant::now();
        let bg = |_, _| 60u8;
        // A 24x48 bright block (a person at this scale) in the left third.
        let moved = |x: u32, y: u32| {
            if (40..64).contains(&x) && (60..108).contains(&y) {
                220
            } else {
                60
            }
        };
        let mut g = MotionGate::new(cfg(), &[]);
        g.check(&frame(320, 180, bg), false, t0);
        assert_eq!(
            g.check(&frame(320, 180, moved), false, t0 + Duration::from_secs(5)),
            GateDecision::Infer(InferReason::Motion)
        );
        // The same change inside a mask over the left third is ignored.
        let mask = vec![[0.0, 0.0], [0.33, 0.0], [0.33, 1.0], [0.0, 1.0]];
        let mut g = MotionGate::new(cfg(), &[mask]);
        g.check(&frame(320, 180, bg), false, t0);
        assert_eq!(
            g.check(&frame(320, 180, moved), false, t0 + Duration::from_secs(5)),
            GateDecision::Skip
        );
    }

    #[test]
    fn sensor_noise_is_not_motion() {
        let t0 = Instant::now();
        let mut g = MotionGate::new(cfg(), &[]);
        g.check(
            &frame(320, 180, |x, y| 100 + ((x * 7 + y * 13) % 5) as u8),
            false,
            t0,
        );
        let noisy = frame(320, 180, |x, y| 100 + ((x * 3 + y * 11) % 7) as u8);
        assert_eq!(
            g.check(&noisy, false, t0 + Duration::from_secs(5)),
            GateDecision::Skip
        );
    }

    #[test]
    fn disabled_gate_infers_everything() {
        let mut g = MotionGate::new(
            MotionConfig {
                enabled: false,
                ..cfg()
            },
            &[],
        );
        let f = frame(64, 36, |_, _| 0);
        for _ in 0..5 {
            assert_eq!(
                g.check(&f, false, Instant::now()),
                GateDecision::Infer(InferReason::Disabled)
            );
        }
    }
}
