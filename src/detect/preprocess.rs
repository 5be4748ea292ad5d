//! Frame → model input tensor, as the manifest describes: size (stretch or letterbox), layout
//! (NCHW/NHWC), dtype (f32/u8) and normalisation, in one pass with bilinear sampling straight into
//! the tensor (no intermediate image on the per-frame path).

use ndarray::Array4;

use super::manifest::{DType, InputSpec, Layout, Resize};

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
            geometry.fill(rgb, t.as_slice_mut().expect("standard layout"), |c, v| {
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
            if geometry.is_identity() && spec.layout == Layout::Nhwc {
                out.copy_from_slice(rgb);
            } else {
                geometry.fill(rgb, out, |_, v| v.round().clamp(0.0, 255.0) as u8);
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
    /// Per input column inside the content: (left sample index, right sample index, weight) into
    /// a packed RGB row; `None` outside the content (padding).
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
        let cols = axis(iw, p.off_x, p.content_w, w)
            .into_iter()
            .map(|c| c.map(|(a, b, wx)| (a * 3, b * 3, wx)))
            .collect();
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
                .all(|(i, c)| *c == Some((i * 3, (i + 1).min(self.w - 1) * 3, 0.0)))
            && self
                .rows
                .iter()
                .enumerate()
                .all(|(i, r)| *r == Some((i, (i + 1).min(self.h - 1), 0.0)))
    }

    /// Writes every element of `out`: for each input row, blend the two source rows once, then
    /// sample columns from the blend.
    fn fill<T: Copy>(&self, rgb: &[u8], out: &mut [T], convert: impl Fn(usize, f32) -> T) {
        let plane = self.iw * self.ih;
        let stride = self.w * 3;
        let pad: [T; 3] = std::array::from_fn(|c| convert(c, PAD_VALUE as f32));
        let mut blend = vec![0f32; stride];
        for (y, row) in self.rows.iter().enumerate() {
            if let Some((y0, y1, wy)) = *row {
                let r0 = &rgb[y0 * stride..(y0 + 1) * stride];
                let r1 = &rgb[y1 * stride..(y1 + 1) * stride];
                for ((b, &a), &c) in blend.iter_mut().zip(r0).zip(r1) {
                    let a = a as f32;
                    *b = a + (c as f32 - a) * wy;
                }
            }
            for (x, col) in self.cols.iter().enumerate() {
                let px: [T; 3] = match (row, col) {
                    (Some(_), Some((a, b, wx))) => {
                        let (a, b, wx) = (*a, *b, *wx);
                        [
                            convert(0, blend[a] + (blend[b] - blend[a]) * wx),
                            convert(1, blend[a + 1] + (blend[b + 1] - blend[a + 1]) * wx),
                            convert(2, blend[a + 2] + (blend[b + 2] - blend[a + 2]) * wx),
                        ]
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
}
