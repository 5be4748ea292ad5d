//! Frame → model input tensor, as the manifest describes: size (stretch or letterbox), layout
//! (NCHW/NHWC), dtype (f32/u8) and normalisation, in one pass with bilinear sampling straight into
//! the tensor (no intermediate image on the per-frame path). An I420 frame is sampled from its
//! planes and converted to RGB only at the model's input resolution (a 768x576 frame into a
//! 416x416 input converts 40 % of its pixels, and no full-frame RGB copy is ever made).

use ndarray::Array4;

use super::manifest::{DType, InputSpec, Layout, Resize};
use crate::camera::pixels::{Coefficients, Pixels, chroma_size, i420_planes};

/// Grey used for letterbox padding (the YOLO convention).
const PAD_VALUE: u8 = 114;

/// The prepared input.
#[derive(Debug, Clone)]
pub enum InputTensor {
    F32(Array4<f32>),
    U8(Array4<u8>),
}

/// Where the frame sits inside the model input, to map model coordinates back to the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Model input size in pixels.
    pub input_w: f32,
    pub input_h: f32,
    /// The frame's content rectangle inside the input, in input pixels.
    pub off_x: f32,
    pub off_y: f32,
    pub content_w: f32,
    pub content_h: f32,
}

impl Placement {
    /// Input pixels → normalised frame coordinates.
    pub fn to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        (
            (x - self.off_x) / self.content_w,
            (y - self.off_y) / self.content_h,
        )
    }

    /// Normalised input coordinates (0..1 of the input) → normalised frame coordinates.
    pub fn norm_to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        self.to_frame(x * self.input_w, y * self.input_h)
    }
}

/// Prepares `rgb` (packed, `w * h * 3`) for a model with this input spec.
pub fn prepare(rgb: &[u8], w: u32, h: u32, spec: &InputSpec) -> InputTensor {
    prepare_into(rgb, w, h, spec, None).0
}

pub fn prepare_with_placement(
    rgb: &[u8],
    w: u32,
    h: u32,
    spec: &InputSpec,
) -> (InputTensor, Placement) {
    prepare_into(rgb, w, h, spec, None)
}

/// As [`prepare_with_placement`], reusing `reuse`'s buffer when it has the right shape and type
/// (every element is overwritten, so a detector keeps one tensor for all its frames).
pub fn prepare_into(
    rgb: &[u8],
    w: u32,
    h: u32,
    spec: &InputSpec,
    reuse: Option<InputTensor>,
) -> (InputTensor, Placement) {
    assert_eq!(rgb.len(), (w * h * 3) as usize, "packed RGB frame");
    prepare_source(Input::Rgb(rgb), w, h, spec, reuse)
}

/// As [`prepare_into`], for a frame's pixels in whatever format the pipeline delivered.
pub fn prepare_pixels(
    pixels: &Pixels,
    w: u32,
    h: u32,
    spec: &InputSpec,
    reuse: Option<InputTensor>,
) -> (InputTensor, Placement) {
    assert_eq!(pixels.len(), pixels.expected_len(w, h), "frame size");
    match pixels {
        Pixels::Rgb(rgb) => prepare_source(Input::Rgb(rgb), w, h, spec, reuse),
        Pixels::I420 { data, matrix } => {
            prepare_source(Input::I420(data, matrix.converter()), w, h, spec, reuse)
        }
    }
}

#[derive(Clone, Copy)]
enum Input<'a> {
    Rgb(&'a [u8]),
    I420(&'a [u8], Coefficients),
}

fn prepare_source(
    input: Input<'_>,
    w: u32,
    h: u32,
    spec: &InputSpec,
    reuse: Option<InputTensor>,
) -> (InputTensor, Placement) {
    // Models without a fixed size (the TF SSD) take the frame as it is.
    let (iw, ih) = (spec.width.unwrap_or(w), spec.height.unwrap_or(h));
    let placement = match spec.resize {
        Resize::Stretch => Placement {
            input_w: iw as f32,
            input_h: ih as f32,
            off_x: 0.0,
            off_y: 0.0,
            content_w: iw as f32,
            content_h: ih as f32,
        },
        Resize::Letterbox => {
            let scale = (iw as f32 / w as f32).min(ih as f32 / h as f32);
            let (cw, ch) = ((w as f32 * scale).round(), (h as f32 * scale).round());
            Placement {
                input_w: iw as f32,
                input_h: ih as f32,
                off_x: ((iw as f32 - cw) / 2.0).floor(),
                off_y: ((ih as f32 - ch) / 2.0).floor(),
                content_w: cw,
                content_h: ch,
            }
        }
    };
    let shape = match spec.layout {
        Layout::Nchw => [1, 3, ih as usize, iw as usize],
        Layout::Nhwc => [1, ih as usize, iw as usize, 3],
    };
    let geometry = Geometry::new(w, h, iw, ih, &placement, spec.layout);
    let tensor = match spec.dtype {
        DType::F32 => {
            let mut t = match reuse {
                Some(InputTensor::F32(t)) if t.shape() == shape => t,
                _ => Array4::<f32>::zeros(shape),
            };
            let (scale, mean, std) = (spec.scale, spec.mean, spec.std);
            geometry.fill(input, t.as_slice_mut().expect("standard layout"), |c, v| {
                (v * scale - mean[c]) / std[c]
            });
            InputTensor::F32(t)
        }
        DType::U8 => {
            let mut t = match reuse {
                Some(InputTensor::U8(t)) if t.shape() == shape => t,
                _ => Array4::<u8>::zeros(shape),
            };
            let out = t.as_slice_mut().expect("standard layout");
            match input {
                Input::Rgb(rgb) if geometry.is_identity() && spec.layout == Layout::Nhwc => {
                    out.copy_from_slice(rgb)
                }
                _ => geometry.fill(input, out, |_, v| v.round().clamp(0.0, 255.0) as u8),
            }
            InputTensor::U8(t)
        }
    };
    (tensor, placement)
}

/// Precomputed sampling positions: bilinear, pixel-centre aligned, no antialiasing.
struct Geometry {
    w: usize,
    h: usize,
    iw: usize,
    ih: usize,
    layout: Layout,
    /// Per input column inside the content: (left source column, right source column, weight);
    /// `None` outside the content (padding).
    cols: Vec<Option<(usize, usize, f32)>>,
    /// Per input row: (upper source row, lower source row, weight), or `None` for padding.
    rows: Vec<Option<(usize, usize, f32)>>,
}

impl Geometry {
    fn new(w: u32, h: u32, iw: u32, ih: u32, p: &Placement, layout: Layout) -> Self {
        let (w, h, iw, ih) = (w as usize, h as usize, iw as usize, ih as usize);
        let axis = |n_out: usize,
                    off: f32,
                    content: f32,
                    n_src: usize|
         -> Vec<Option<(usize, usize, f32)>> {
            let scale = content / n_src as f32;
            (0..n_out)
                .map(|i| {
                    if (i as f32) < off || (i as f32) >= off + content {
                        return None;
                    }
                    let f = ((i as f32 + 0.5 - off) / scale - 0.5).clamp(0.0, (n_src - 1) as f32);
                    let i0 = f.floor() as usize;
                    Some((i0, (i0 + 1).min(n_src - 1), f - i0 as f32))
                })
                .collect()
        };
        let cols = axis(iw, p.off_x, p.content_w, w);
        Self {
            w,
            h,
            iw,
            ih,
            layout,
            cols,
            rows: axis(ih, p.off_y, p.content_h, h),
        }
    }

    fn is_identity(&self) -> bool {
        self.w == self.iw
            && self.h == self.ih
            && self
                .cols
                .iter()
                .enumerate()
                .all(|(i, c)| *c == Some((i, (i + 1).min(self.w - 1), 0.0)))
            && self
                .rows
                .iter()
                .enumerate()
                .all(|(i, r)| *r == Some((i, (i + 1).min(self.h - 1), 0.0)))
    }

    /// Writes every element of `out`: for each input row, blend the two source rows once, then
    /// sample columns from the blend.
    fn fill<T: Copy>(&self, input: Input<'_>, out: &mut [T], convert: impl Fn(usize, f32) -> T) {
        match input {
            Input::Rgb(rgb) => self.fill_from(RgbRows::new(rgb, self.w), out, convert),
            Input::I420(data, c) => self.fill_from(I420Rows::new(data, self, c), out, convert),
        }
    }

    fn fill_from<T: Copy>(
        &self,
        mut src: impl Rows,
        out: &mut [T],
        convert: impl Fn(usize, f32) -> T,
    ) {
        let plane = self.iw * self.ih;
        let pad: [T; 3] = std::array::from_fn(|c| convert(c, PAD_VALUE as f32));
        for (y, row) in self.rows.iter().enumerate() {
            if let Some((y0, y1, wy)) = *row {
                src.load(y0, y1, wy);
            }
            for (x, col) in self.cols.iter().enumerate() {
                let px: [T; 3] = match (row, col) {
                    (Some(_), Some((a, b, wx))) => {
                        let [r, g, b] = src.sample(x, *a, *b, *wx);
                        [convert(0, r), convert(1, g), convert(2, b)]
                    }
                    _ => pad,
                };
                match self.layout {
                    Layout::Nchw => {
                        let i = y * self.iw + x;
                        out[i] = px[0];
                        out[plane + i] = px[1];
                        out[2 * plane + i] = px[2];
                    }
                    Layout::Nhwc => {
                        let i = (y * self.iw + x) * 3;
                        out[i..i + 3].copy_from_slice(&px);
                    }
                }
            }
        }
    }
}

/// A source the geometry samples from: rows are blended once per output row, then sampled per
/// output column.
trait Rows {
    /// Blends source rows `y0` and `y1` (weight `wy` on `y1`) for the next output row.
    fn load(&mut self, y0: usize, y1: usize, wy: f32);
    /// RGB (0-255) of output column `x`, between source columns `a` and `b` (weight `wx` on `b`).
    fn sample(&self, x: usize, a: usize, b: usize, wx: f32) -> [f32; 3];
}

#[inline]
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    a + (b - a) * w
}

fn blend_rows(out: &mut [f32], r0: &[u8], r1: &[u8], w: f32) {
    for ((o, &a), &b) in out.iter_mut().zip(r0).zip(r1) {
        *o = lerp(a as f32, b as f32, w);
    }
}

struct RgbRows<'a> {
    rgb: &'a [u8],
    stride: usize,
    blend: Vec<f32>,
}

impl<'a> RgbRows<'a> {
    fn new(rgb: &'a [u8], w: usize) -> Self {
        Self {
            rgb,
            stride: w * 3,
            blend: vec![0.0; w * 3],
        }
    }
}

impl Rows for RgbRows<'_> {
    fn load(&mut self, y0: usize, y1: usize, wy: f32) {
        let s = self.stride;
        blend_rows(
            &mut self.blend,
            &self.rgb[y0 * s..(y0 + 1) * s],
            &self.rgb[y1 * s..(y1 + 1) * s],
            wy,
        );
    }

    #[inline]
    fn sample(&self, _x: usize, a: usize, b: usize, wx: f32) -> [f32; 3] {
        let (a, b, bl) = (a * 3, b * 3, &self.blend);
        [
            lerp(bl[a], bl[b], wx),
            lerp(bl[a + 1], bl[b + 1], wx),
            lerp(bl[a + 2], bl[b + 2], wx),
        ]
    }
}

/// Samples luma bilinearly at the output position and chroma bilinearly at the same place in the
/// half-resolution planes (chroma sited at the centre of each 2x2 block), then converts.
struct I420Rows<'a> {
    y: &'a [u8],
    u: &'a [u8],
    v: &'a [u8],
    w: usize,
    cw: usize,
    ch: usize,
    /// Per output column: chroma (left, right, weight), precomputed from the luma position.
    chroma_cols: Vec<(usize, usize, f32)>,
    blend_y: Vec<f32>,
    blend_u: Vec<f32>,
    blend_v: Vec<f32>,
    c: Coefficients,
}

/// The chroma sample position of luma position `f` in a plane of `n` chroma samples.
fn chroma_pos(f: f32, n: usize) -> (usize, usize, f32) {
    let fc = ((f + 0.5) / 2.0 - 0.5).clamp(0.0, (n - 1) as f32);
    let i0 = fc.floor() as usize;
    (i0, (i0 + 1).min(n - 1), fc - i0 as f32)
}

impl<'a> I420Rows<'a> {
    fn new(data: &'a [u8], g: &Geometry, c: Coefficients) -> Self {
        let (y, u, v) = i420_planes(data, g.w as u32, g.h as u32);
        let (cw, ch) = chroma_size(g.w as u32, g.h as u32);
        let chroma_cols = g
            .cols
            .iter()
            .map(|col| match col {
                Some((a, _, wx)) => chroma_pos(*a as f32 + wx, cw),
                None => (0, 0, 0.0),
            })
            .collect();
        Self {
            y,
            u,
            v,
            w: g.w,
            cw,
            ch,
            chroma_cols,
            blend_y: vec![0.0; g.w],
            blend_u: vec![0.0; cw],
            blend_v: vec![0.0; cw],
            c,
        }
    }
}

impl Rows for I420Rows<'_> {
    fn load(&mut self, y0: usize, y1: usize, wy: f32) {
        let w = self.w;
        blend_rows(
            &mut self.blend_y,
            &self.y[y0 * w..(y0 + 1) * w],
            &self.y[y1 * w..(y1 + 1) * w],
            wy,
        );
        let (c0, c1, wc) = chroma_pos(y0 as f32 + wy, self.ch);
        let cw = self.cw;
        blend_rows(
            &mut self.blend_u,
            &self.u[c0 * cw..(c0 + 1) * cw],
            &self.u[c1 * cw..(c1 + 1) * cw],
            wc,
        );
        blend_rows(
            &mut self.blend_v,
            &self.v[c0 * cw..(c0 + 1) * cw],
            &self.v[c1 * cw..(c1 + 1) * cw],
            wc,
        );
    }

    #[inline]
    fn sample(&self, x: usize, a: usize, b: usize, wx: f32) -> [f32; 3] {
        let (ca, cb, wc) = self.chroma_cols[x];
        self.c.apply(
            lerp(self.blend_y[a], self.blend_y[b], wx),
            lerp(self.blend_u[ca], self.blend_u[cb], wc),
            lerp(self.blend_v[ca], self.blend_v[cb], wc),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        w: Option<u32>,
        h: Option<u32>,
        layout: Layout,
        dtype: DType,
        resize: Resize,
    ) -> InputSpec {
        InputSpec {
            name: "x".into(),
            width: w,
            height: h,
            layout,
            dtype,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            resize,
        }
    }

    /// A frame whose red channel encodes x and green encodes y.
    fn gradient(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..h {
            for x in 0..w {
                v.extend([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 7]);
            }
        }
        v
    }

    #[test]
    fn identity_size_u8_nhwc_is_an_exact_copy() {
        let rgb = gradient(16, 8);
        let t = prepare(
            &rgb,
            16,
            8,
            &spec(None, None, Layout::Nhwc, DType::U8, Resize::Stretch),
        );
        let InputTensor::U8(t) = t else { panic!() };
        assert_eq!(t.shape(), &[1, 8, 16, 3]);
        assert_eq!(t.as_slice().unwrap(), &rgb[..]);
    }

    #[test]
    fn stretch_nchw_normalises_and_keeps_geometry() {
        let rgb = gradient(64, 32);
        let t = prepare(
            &rgb,
            64,
            32,
            &spec(
                Some(32),
                Some(32),
                Layout::Nchw,
                DType::F32,
                Resize::Stretch,
            ),
        );
        let InputTensor::F32(t) = t else { panic!() };
        assert_eq!(t.shape(), &[1, 3, 32, 32]);
        // Red grows left to right, green top to bottom, blue constant 7/255.
        assert!(t[[0, 0, 5, 0]] < 0.05 && t[[0, 0, 5, 31]] > 0.95);
        assert!(t[[0, 1, 0, 5]] < 0.05 && t[[0, 1, 31, 5]] > 0.95);
        assert!((t[[0, 2, 10, 10]] - 7.0 / 255.0).abs() < 1e-4);
    }

    #[test]
    fn letterbox_pads_and_maps_back() {
        let rgb = gradient(64, 32);
        let (t, p) = prepare_with_placement(
            &rgb,
            64,
            32,
            &spec(
                Some(32),
                Some(32),
                Layout::Nchw,
                DType::F32,
                Resize::Letterbox,
            ),
        );
        let InputTensor::F32(t) = t else { panic!() };
        // 64x32 into 32x32: content 32x16, 8 rows of padding above and below.
        assert_eq!(
            (p.off_x, p.off_y, p.content_w, p.content_h),
            (0.0, 8.0, 32.0, 16.0)
        );
        assert!((t[[0, 2, 0, 0]] - 114.0 / 255.0).abs() < 1e-4, "padding");
        assert!((t[[0, 2, 31, 0]] - 114.0 / 255.0).abs() < 1e-4, "padding");
        assert!((t[[0, 2, 16, 16]] - 7.0 / 255.0).abs() < 1e-4, "content");
        // The input centre is the frame centre; the content's top-left is the frame's.
        assert_eq!(p.to_frame(16.0, 16.0), (0.5, 0.5));
        assert_eq!(p.to_frame(0.0, 8.0), (0.0, 0.0));
    }

    #[test]
    fn i420_is_sampled_from_its_planes_and_converted() {
        use crate::camera::pixels::YuvMatrix;
        // 64x32: luma grows left to right (16..235), chroma neutral: a gray ramp.
        let (w, h) = (64u32, 32u32);
        let (cw, ch) = chroma_size(w, h);
        let mut data: Vec<u8> = (0..h)
            .flat_map(|_| (0..w).map(|x| (16 + x * 219 / (w - 1)) as u8))
            .collect();
        data.extend(std::iter::repeat_n(128u8, 2 * cw * ch));
        let pixels = Pixels::I420 {
            data,
            matrix: YuvMatrix::default(),
        };
        let s = spec(
            Some(32),
            Some(32),
            Layout::Nchw,
            DType::F32,
            Resize::Stretch,
        );
        let (t, _) = prepare_pixels(&pixels, w, h, &s, None);
        let InputTensor::F32(t) = t else { panic!() };
        assert!(
            t[[0, 0, 5, 0]] < 0.03 && t[[0, 0, 5, 31]] > 0.97,
            "{}",
            t[[0, 0, 5, 31]]
        );
        for c in 0..3 {
            assert!((t[[0, c, 9, 16]] - t[[0, 0, 9, 16]]).abs() < 1e-4, "gray");
        }
        // The same picture through RGB gives the same tensor.
        let rgb = pixels.to_rgb(w, h);
        let (t2, _) = prepare_pixels(&Pixels::Rgb(rgb.into_owned()), w, h, &s, None);
        let InputTensor::F32(t2) = t2 else { panic!() };
        let worst = t
            .iter()
            .zip(t2.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 3.0 / 255.0, "I420 and RGB paths differ by {worst}");
        // A red picture is red.
        let mut red = vec![81u8; (w * h) as usize];
        red.extend(std::iter::repeat_n(90u8, cw * ch));
        red.extend(std::iter::repeat_n(240u8, cw * ch));
        let red = Pixels::I420 {
            data: red,
            matrix: YuvMatrix::default(),
        };
        let (t, _) = prepare_pixels(&red, w, h, &s, None);
        let InputTensor::F32(t) = t else { panic!() };
        assert!(t[[0, 0, 3, 3]] > 0.98 && t[[0, 1, 3, 3]] < 0.02 && t[[0, 2, 3, 3]] < 0.02);
    }
}
