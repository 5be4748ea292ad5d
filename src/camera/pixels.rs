//! A frame's pixels as the pipeline delivers them. Cameras deliver I420 and the daemon keeps it:
//! converting every decoded frame to RGB would cost more than most of them are worth (a frame is
//! often replaced before a worker takes it, and a still one is turned away by the motion gate).
//! The detector samples the model input straight from the planes; RGB is made only for a snapshot.

use std::borrow::Cow;

/// How Y'CbCr maps to RGB (from the stream's colorimetry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct YuvMatrix {
    /// BT.709 (HD) rather than BT.601 (SD) coefficients.
    pub bt709: bool,
    /// Y and chroma span 0-255 (JPEG-style) rather than 16-235/240.
    pub full_range: bool,
}

impl YuvMatrix {
    /// Per-channel coefficients: RGB = ky·(Y − y0) + (kr_v·V', kg_u·U' + kg_v·V', kb_u·U').
    fn coefficients(self) -> Coefficients {
        let (kr, kb) = if self.bt709 {
            (0.2126f32, 0.0722f32)
        } else {
            (0.299f32, 0.114f32)
        };
        let kg = 1.0 - kr - kb;
        let (ky, kc, y0) = if self.full_range {
            (1.0, 1.0, 0.0)
        } else {
            (255.0 / 219.0, 255.0 / 224.0, 16.0)
        };
        Coefficients {
            ky,
            y0,
            r_v: kc * 2.0 * (1.0 - kr),
            g_u: -kc * 2.0 * (1.0 - kb) * kb / kg,
            g_v: -kc * 2.0 * (1.0 - kr) * kr / kg,
            b_u: kc * 2.0 * (1.0 - kb),
        }
    }

    /// Y (as stored) → full-range luma 0-255.
    pub fn luma(self, y: f32) -> f32 {
        self.coefficients().luma(y)
    }

    /// One pixel to RGB, each channel 0-255 (not rounded).
    #[inline]
    pub fn rgb(self, y: f32, u: f32, v: f32) -> [f32; 3] {
        self.coefficients().apply(y, u, v)
    }

    pub(crate) fn converter(self) -> Coefficients {
        self.coefficients()
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Coefficients {
    ky: f32,
    y0: f32,
    r_v: f32,
    g_u: f32,
    g_v: f32,
    b_u: f32,
}

impl Coefficients {
    /// Y (as stored) → full-range luma 0-255.
    #[inline]
    pub(crate) fn luma(&self, y: f32) -> f32 {
        (self.ky * (y - self.y0)).clamp(0.0, 255.0)
    }

    #[inline]
    pub(crate) fn apply(&self, y: f32, u: f32, v: f32) -> [f32; 3] {
        let (y, u, v) = (self.ky * (y - self.y0), u - 128.0, v - 128.0);
        [
            (y + self.r_v * v).clamp(0.0, 255.0),
            (y + self.g_u * u + self.g_v * v).clamp(0.0, 255.0),
            (y + self.b_u * u).clamp(0.0, 255.0),
        ]
    }
}

/// [`Coefficients`] in 12-bit fixed point, for whole-frame conversion (snapshots).
struct FixedPoint {
    ky: i32,
    y0: i32,
    r_v: i32,
    g_u: i32,
    g_v: i32,
    b_u: i32,
}

impl FixedPoint {
    const SHIFT: i32 = 12;

    fn new(c: Coefficients) -> Self {
        let q = |v: f32| (v * (1 << Self::SHIFT) as f32).round() as i32;
        Self {
            ky: q(c.ky),
            y0: c.y0 as i32,
            r_v: q(c.r_v),
            g_u: q(c.g_u),
            g_v: q(c.g_v),
            b_u: q(c.b_u),
        }
    }

    #[inline]
    fn apply(&self, y: u8, u: u8, v: u8) -> [u8; 3] {
        let half = 1 << (Self::SHIFT - 1);
        let y = self.ky * (y as i32 - self.y0) + half;
        let (u, v) = (u as i32 - 128, v as i32 - 128);
        let px = |x: i32| (x >> Self::SHIFT).clamp(0, 255) as u8;
        [
            px(y + self.r_v * v),
            px(y + self.g_u * u + self.g_v * v),
            px(y + self.b_u * u),
        ]
    }
}

/// The pixels of one frame, tightly packed (no row padding).
#[derive(Clone)]
pub enum Pixels {
    /// `width * height * 3` bytes, R G B.
    Rgb(Vec<u8>),
    /// Planar 4:2:0: Y (`width * height`), then U and V (`ceil(width/2) * ceil(height/2)` each).
    I420 { data: Vec<u8>, matrix: YuvMatrix },
}

/// Size of the chroma planes of an I420 frame.
pub fn chroma_size(width: u32, height: u32) -> (usize, usize) {
    (width.div_ceil(2) as usize, height.div_ceil(2) as usize)
}

/// The three planes of an I420 buffer of this size: (Y, U, V).
pub fn i420_planes(data: &[u8], width: u32, height: u32) -> (&[u8], &[u8], &[u8]) {
    let n = width as usize * height as usize;
    let (cw, ch) = chroma_size(width, height);
    let (y, rest) = data.split_at(n);
    let (u, v) = rest.split_at(cw * ch);
    (y, u, &v[..cw * ch])
}

/// Converts a whole I420 frame into packed RGB (`out`: `width * height * 3` bytes), each chroma
/// sample used for its 2x2 block, in fixed point.
pub(crate) fn i420_to_rgb_into(
    data: &[u8],
    width: u32,
    height: u32,
    matrix: YuvMatrix,
    out: &mut [u8],
) {
    let w = width as usize;
    let (yp, up, vp) = i420_planes(data, width, height);
    let cw = chroma_size(width, height).0;
    let c = FixedPoint::new(matrix.converter());
    for (y, row) in out.chunks_exact_mut(w * 3).enumerate() {
        let (ys, us, vs) = (
            &yp[y * w..(y + 1) * w],
            &up[(y / 2) * cw..(y / 2 + 1) * cw],
            &vp[(y / 2) * cw..(y / 2 + 1) * cw],
        );
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            px.copy_from_slice(&c.apply(ys[x], us[x / 2], vs[x / 2]));
        }
    }
}

impl Pixels {
    /// Packed RGB of the whole frame (converted for I420: only for snapshots and tools).
    pub fn to_rgb(&self, width: u32, height: u32) -> Cow<'_, [u8]> {
        match self {
            Pixels::Rgb(rgb) => Cow::Borrowed(rgb),
            Pixels::I420 { data, matrix } => {
                let mut out = vec![0u8; width as usize * height as usize * 3];
                i420_to_rgb_into(data, width, height, *matrix, &mut out);
                Cow::Owned(out)
            }
        }
    }

    /// Bytes a frame of this size must have.
    pub fn expected_len(&self, width: u32, height: u32) -> usize {
        match self {
            Pixels::Rgb(_) => width as usize * height as usize * 3,
            Pixels::I420 { .. } => {
                let (cw, ch) = chroma_size(width, height);
                width as usize * height as usize + 2 * cw * ch
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Pixels::Rgb(d) | Pixels::I420 { data: d, .. } => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_range_bt601_primaries_and_grays() {
        let m = YuvMatrix::default();
        let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1.5);
        // Black, white and mid gray.
        assert!(close(m.rgb(16.0, 128.0, 128.0), [0.0, 0.0, 0.0]));
        assert!(close(m.rgb(235.0, 128.0, 128.0), [255.0, 255.0, 255.0]));
        assert!(close(m.rgb(126.0, 128.0, 128.0), [128.0, 128.0, 128.0]));
        // BT.601 red (81, 90, 240) and blue (41, 240, 110).
        assert!(
            close(m.rgb(81.0, 90.0, 240.0), [255.0, 0.0, 0.0]),
            "{:?}",
            m.rgb(81.0, 90.0, 240.0)
        );
        assert!(
            close(m.rgb(41.0, 240.0, 110.0), [0.0, 0.0, 255.0]),
            "{:?}",
            m.rgb(41.0, 240.0, 110.0)
        );
        assert_eq!(m.luma(16.0), 0.0);
        assert!((m.luma(235.0) - 255.0).abs() < 0.01);
        let full = YuvMatrix {
            bt709: false,
            full_range: true,
        };
        assert!(close(full.rgb(255.0, 128.0, 128.0), [255.0, 255.0, 255.0]));
        // BT.709 red (63, 102, 240).
        let hd = YuvMatrix {
            bt709: true,
            full_range: false,
        };
        assert!(
            close(hd.rgb(63.0, 102.0, 240.0), [255.0, 0.0, 0.0]),
            "{:?}",
            hd.rgb(63.0, 102.0, 240.0)
        );
    }

    #[test]
    fn i420_to_rgb_uses_each_chroma_sample_for_a_2x2_block() {
        // 3x2: chroma 2x1. Left block red-ish, right column blue-ish.
        let (w, h) = (3u32, 2u32);
        let y = [81u8, 81, 41, 81, 81, 41];
        let u = [90u8, 240];
        let v = [240u8, 110];
        let data = [&y[..], &u[..], &v[..]].concat();
        let p = Pixels::I420 {
            data,
            matrix: YuvMatrix::default(),
        };
        assert_eq!(p.expected_len(w, h), p.len());
        let rgb = p.to_rgb(w, h);
        assert_eq!(rgb.len(), 18);
        assert!(rgb[0] > 250 && rgb[2] < 5, "red {:?}", &rgb[..3]);
        assert!(rgb[6 + 2] > 250 && rgb[6] < 5, "blue {:?}", &rgb[6..9]);
        assert_eq!(&rgb[9..12], &rgb[0..3], "second row shares the chroma");
    }
}
