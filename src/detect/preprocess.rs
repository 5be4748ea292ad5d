//! Frame → model input tensor, as the manifest describes: size (stretch or letterbox), layout
//! (NCHW/NHWC), dtype (f32/u8) and normalisation, in one pass with bilinear sampling straight into
//! the tensor (no intermediate image on the per-frame path). An I420 frame is sampled from its
//! planes and converted to RGB only at the model's input resolution (a 768x576 frame into a
//! 416x416 input converts 40 % of its pixels, and no full-frame RGB copy is ever made).

use ndarray::Array4;

use super::manifest::{DType, InputSpec, Layout, Resize};
use crate::camera::pixels::{
    Coefficients, Pixels, YuvMatrix, chroma_size, i420_planes, i420_to_rgb_into,
};

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
            prepare_source(Input::I420(data, *matrix), w, h, spec, reuse)
        }
    }
}

#[derive(Clone, Copy)]
enum Input<'a> {
    Rgb(&'a [u8]),
    I420(&'a [u8], YuvMatrix),
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
            // (v * scale - mean) / std as one multiply-add per element.
            let mul: [f32; 3] = std::array::from_fn(|c| spec.scale / spec.std[c]);
            let add: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
            geometry.fill(input, t.as_slice_mut().expect("standard layout"), |c, v| {
                v * mul[c] + add[c]
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
                // The frame as it is (the TF SSD): the snapshot's whole-frame conversion, in fixed
                // point, is several times faster than sampling pixel by pixel.
                Input::I420(data, matrix)
                    if geometry.is_identity() && spec.layout == Layout::Nhwc =>
                {
                    i420_to_rgb_into(data, w, h, matrix, out)
                }
                _ => geometry.fill(input, out, |_, v| v.round().clamp(0.0, 255.0) as u8),
            }
            InputTensor::U8(t)
        }
    };
    (tensor, placement)
}

/// One axis of the resampling: the output positions `start..start + taps.len()` hold the frame's
/// content, each sampled between two source positions (left/upper, right/lower, weight on the
/// second); the positions outside are padding.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    start: usize,
    taps: Vec<(usize, usize, f32)>,
}

impl Axis {
    /// Bilinear, pixel-centre aligned, no antialiasing: `n_out` positions, the content `content`
    /// positions long from `off`, over `n_src` source positions.
    fn new(n_out: usize, off: f32, content: f32, n_src: usize) -> Self {
        let scale = content / n_src as f32;
        let inside = |i: usize| (i as f32) >= off && (i as f32) < off + content;
        let start = (0..n_out).find(|&i| inside(i)).unwrap_or(n_out);
        let taps = (start..n_out)
            .take_while(|&i| inside(i))
            .map(|i| {
                let f = ((i as f32 + 0.5 - off) / scale - 0.5).clamp(0.0, (n_src - 1) as f32);
                let i0 = f.floor() as usize;
                (i0, (i0 + 1).min(n_src - 1), f - i0 as f32)
            })
            .collect();
        Self { start, taps }
    }

    fn get(&self, i: usize) -> Option<(usize, usize, f32)> {
        i.checked_sub(self.start)
            .and_then(|k| self.taps.get(k))
            .copied()
    }

    /// Output position `i` is source position `i`, over the whole of `n` positions.
    fn is_identity(&self, n: usize) -> bool {
        self.start == 0
            && self.taps.len() == n
            && self
                .taps
                .iter()
                .enumerate()
                .all(|(i, t)| *t == (i, (i + 1).min(n - 1), 0.0))
    }
}

/// Precomputed sampling positions of both axes.
struct Geometry {
    w: usize,
    h: usize,
    iw: usize,
    ih: usize,
    layout: Layout,
    cols: Axis,
    rows: Axis,
}

impl Geometry {
    fn new(w: u32, h: u32, iw: u32, ih: u32, p: &Placement, layout: Layout) -> Self {
        let (w, h, iw, ih) = (w as usize, h as usize, iw as usize, ih as usize);
        Self {
            w,
            h,
            iw,
            ih,
            layout,
            cols: Axis::new(iw, p.off_x, p.content_w, w),
            rows: Axis::new(ih, p.off_y, p.content_h, h),
        }
    }

    fn is_identity(&self) -> bool {
        self.w == self.iw
            && self.h == self.ih
            && self.cols.is_identity(self.w)
            && self.rows.is_identity(self.h)
    }

    /// Writes every element of `out`: for each input row, blend the two source rows once, sample
    /// the row's columns into one buffer per channel, then convert and store them (the last two
    /// steps are straight loops over contiguous buffers, which the compiler vectorises).
    fn fill<T: Copy>(&self, input: Input<'_>, out: &mut [T], convert: impl Fn(usize, f32) -> T) {
        match input {
            Input::Rgb(rgb) => self.fill_from(RgbRows::new(rgb, self.w), out, convert),
            Input::I420(data, m) => {
                self.fill_from(I420Rows::new(data, self, m.converter()), out, convert)
            }
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
        let (x0, n) = (self.cols.start, self.cols.taps.len());
        let mut channels = [vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]];
        for y in 0..self.ih {
            let row = y * self.iw;
            let content = self.rows.get(y);
            if let Some((y0, y1, wy)) = content {
                src.load(y0, y1, wy);
                src.sample_row(&self.cols.taps, &mut channels);
            }
            match self.layout {
                Layout::Nchw => {
                    for (c, values) in channels.iter().enumerate() {
                        let dst = &mut out[c * plane + row..c * plane + row + self.iw];
                        if content.is_none() {
                            dst.fill(pad[c]);
                            continue;
                        }
                        dst[..x0].fill(pad[c]);
                        dst[x0 + n..].fill(pad[c]);
                        for (d, &v) in dst[x0..x0 + n].iter_mut().zip(values) {
                            *d = convert(c, v);
                        }
                    }
                }
                Layout::Nhwc => {
                    let dst = &mut out[row * 3..(row + self.iw) * 3];
                    for (x, px) in dst.chunks_exact_mut(3).enumerate() {
                        match x.checked_sub(x0).filter(|&k| k < n && content.is_some()) {
                            Some(k) => {
                                px[0] = convert(0, channels[0][k]);
                                px[1] = convert(1, channels[1][k]);
                                px[2] = convert(2, channels[2][k]);
                            }
                            None => px.copy_from_slice(&pad),
                        }
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
    /// RGB (0-255) of the loaded row at each column tap (left, right, weight on the right), one
    /// buffer per channel.
    fn sample_row(&self, taps: &[(usize, usize, f32)], out: &mut [Vec<f32>; 3]);
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

    fn sample_row(&self, taps: &[(usize, usize, f32)], out: &mut [Vec<f32>; 3]) {
        let bl = &self.blend;
        let [r, g, b] = out;
        for (&(a, bb, wx), ((r, g), b)) in taps
            .iter()
            .zip(r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()))
        {
            let (a, bb) = (a * 3, bb * 3);
            *r = lerp(bl[a], bl[bb], wx);
            *g = lerp(bl[a + 1], bl[bb + 1], wx);
            *b = lerp(bl[a + 2], bl[bb + 2], wx);
        }
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
    /// Per content column: chroma (left, right, weight), precomputed from the luma position.
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
            .taps
            .iter()
            .map(|(a, _, wx)| chroma_pos(*a as f32 + wx, cw))
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

    fn sample_row(&self, taps: &[(usize, usize, f32)], out: &mut [Vec<f32>; 3]) {
        // Gather Y into the red buffer and U, V into green and blue, then convert in place.
        let [r, g, b] = out;
        for ((&(a, bb, wx), &(ca, cb, wc)), ((y, u), v)) in taps
            .iter()
            .zip(&self.chroma_cols)
            .zip(r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()))
        {
            *y = lerp(self.blend_y[a], self.blend_y[bb], wx);
            *u = lerp(self.blend_u[ca], self.blend_u[cb], wc);
            *v = lerp(self.blend_v[ca], self.blend_v[cb], wc);
        }
        for ((y, u), v) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
            [*y, *u, *v] = self.c.apply(*y, *u, *v);
        }
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

    /// A busy I420 picture: every sample differs from its neighbours.
    fn busy_i420(w: u32, h: u32) -> Pixels {
        use crate::camera::pixels::YuvMatrix;
        let (cw, ch) = chroma_size(w, h);
        let mut data: Vec<u8> = (0..h)
            .flat_map(|y| (0..w).map(move |x| ((x * 37 + y * 11) % 219 + 16) as u8))
            .collect();
        data.extend((0..2 * cw * ch).map(|i| ((i * 53) % 224 + 16) as u8));
        Pixels::I420 {
            data,
            matrix: YuvMatrix::default(),
        }
    }

    #[test]
    fn i420_as_it_is_into_u8_nhwc_is_the_whole_frame_conversion() {
        let (w, h) = (30u32, 18u32);
        let pixels = busy_i420(w, h);
        let s = spec(None, None, Layout::Nhwc, DType::U8, Resize::Stretch);
        let (t, _) = prepare_pixels(&pixels, w, h, &s, None);
        let InputTensor::U8(t) = t else { panic!() };
        assert_eq!(t.shape(), &[1, 18, 30, 3]);
        assert_eq!(t.as_slice().unwrap(), &pixels.to_rgb(w, h)[..]);
    }

    #[test]
    fn both_layouts_hold_the_same_pixels_and_padding() {
        // Letterboxed (rows of padding) and pillarboxed (columns of padding), from I420 and RGB:
        // NHWC u8 and NCHW f32 (x 255) of one frame agree element by element.
        for (w, h, iw, ih) in [
            (40u32, 20u32, 24u32, 24u32),
            (20, 40, 24, 24),
            (41, 23, 17, 13),
        ] {
            let i420 = busy_i420(w, h);
            let rgb = Pixels::Rgb(i420.to_rgb(w, h).into_owned());
            for pixels in [&i420, &rgb] {
                let nhwc = spec(
                    Some(iw),
                    Some(ih),
                    Layout::Nhwc,
                    DType::U8,
                    Resize::Letterbox,
                );
                let nchw = spec(
                    Some(iw),
                    Some(ih),
                    Layout::Nchw,
                    DType::F32,
                    Resize::Letterbox,
                );
                let (InputTensor::U8(a), pa) = prepare_pixels(pixels, w, h, &nhwc, None) else {
                    panic!()
                };
                let (InputTensor::F32(b), pb) = prepare_pixels(pixels, w, h, &nchw, None) else {
                    panic!()
                };
                assert_eq!(pa, pb);
                let mut padded = 0;
                for y in 0..ih as usize {
                    for x in 0..iw as usize {
                        for c in 0..3 {
                            let (u, f) = (a[[0, y, x, c]] as f32, b[[0, c, y, x]] * 255.0);
                            assert!((u - f).abs() <= 0.51, "{w}x{h} at {x},{y},{c}: {u} vs {f}");
                        }
                        let inside = (x as f32) >= pa.off_x
                            && (x as f32) < pa.off_x + pa.content_w
                            && (y as f32) >= pa.off_y
                            && (y as f32) < pa.off_y + pa.content_h;
                        if !inside {
                            padded += 1;
                            assert_eq!(a[[0, y, x, 0]], PAD_VALUE, "padding at {x},{y}");
                        }
                    }
                }
                assert!(padded > 0, "{w}x{h} into {iw}x{ih} has padding");
            }
        }
    }

    #[test]
    fn normalisation_is_scale_mean_and_std_per_channel() {
        let rgb = gradient(8, 8);
        let mut s = spec(Some(8), Some(8), Layout::Nchw, DType::F32, Resize::Stretch);
        s.scale = 1.0;
        s.mean = [10.0, 20.0, 7.0];
        s.std = [2.0, 4.0, 0.5];
        let InputTensor::F32(t) = prepare(&rgb, 8, 8, &s) else {
            panic!()
        };
        // Pixel (3, 5): red 3*255/7, green 5*255/7, blue 7.
        let expect = [
            (f32::from((3 * 255 / 7) as u8) - 10.0) / 2.0,
            (f32::from((5 * 255 / 7) as u8) - 20.0) / 4.0,
            0.0,
        ];
        for (c, e) in expect.iter().enumerate() {
            assert!(
                (t[[0, c, 5, 3]] - e).abs() < 1e-4,
                "{c}: {}",
                t[[0, c, 5, 3]]
            );
        }
    }
}
