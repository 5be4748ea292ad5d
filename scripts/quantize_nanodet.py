#!/usr/bin/env python3
"""Makes models/nanodet-coco-416-int8.onnx: NanoDet statically quantised to int8 (QDQ, per-channel
weights, MinMax calibration, convolutions only, the head's last two layers before each output kept
in float) with onnxruntime's own quantisation tool, and measures it against the float model on
frames it was not calibrated on. (Quantising everything, outputs included, loses every person:
the score maps collapse to < 0.1.)

    python3 -m venv /tmp/qvenv && /tmp/qvenv/bin/pip install onnxruntime==1.31.1 onnx numpy pillow opencv-python-headless
    /tmp/qvenv/bin/python scripts/quantize_nanodet.py          # after scripts/setup.sh (sample media)

Calibration: every 15th frame of vtest.avi (people walking) and four photos without people.
Evaluation: every 15th frame starting at the 7th (none of them used for calibration): for each
frame, the float model's people (score >= 0.4) and the int8 model's; recall = share of the float
model's people that the int8 model finds (IoU >= 0.5), precision the other way round.
Pre-processing and decoding are those of tests/fixtures/make_parity.py (the daemon's).
"""
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import make_parity  # noqa: E402  (bilinear pre-processing and the NanoDet decoder)

MEDIA = ROOT / ".deps" / "media"
FLOAT = ROOT / "models" / "nanodet-coco-416.onnx"
INT8 = ROOT / "models" / "nanodet-coco-416-int8.onnx"
SCORE = 0.4


def vtest_frames(offset):
    cap = cv2.VideoCapture(str(MEDIA / "vtest.avi"))
    i, out = 0, []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        if i % 15 == offset:
            out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
        i += 1


def tensor(rgb):
    x = make_parity.bilinear(rgb, 416, 416) / 255.0
    return x.transpose(2, 0, 1)[None].astype(np.float32)


class Calibration(CalibrationDataReader):
    def __init__(self):
        photos = [np.asarray(Image.open(MEDIA / p).convert("RGB"))
                  for p in ["coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png"]]
        self.items = iter([{"input_1:0": tensor(f)} for f in vtest_frames(0) + photos])

    def get_next(self):
        return next(self.items, None)


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def people(sess, rgb):
    return [d for d in make_parity.nanodet(sess, rgb) if d[0] >= SCORE]


def main():
    pre = INT8.with_suffix(".pre.onnx")
    quant_pre_process(str(FLOAT), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre)).graph
    producer = {o: n for n in graph.node for o in n.output}
    keep_float = set()
    for out in graph.output:
        node = producer[out.name]
        keep_float.add(node.name)
        keep_float.update(producer[i].name for i in node.input if i in producer)
    quantize_static(str(pre), str(INT8), Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"],
                    nodes_to_exclude=sorted(keep_float))
    pre.unlink()
    f32, i8 = session(FLOAT), session(INT8)
    found = total = kept = produced = 0
    for rgb in vtest_frames(7):
        a, b = people(f32, rgb), people(i8, rgb)
        total += len(a)
        produced += len(b)
        found += sum(any(make_parity.iou(x[1:], y[1:]) >= 0.5 for y in b) for x in a)
        kept += sum(any(make_parity.iou(y[1:], x[1:]) >= 0.5 for x in a) for y in b)
    print(f"{INT8.name}: {INT8.stat().st_size} bytes; on {len(vtest_frames(7))} held-out vtest frames: "
          f"float model {total} people, int8 {produced}; recall vs float {found / total:.3f}, "
          f"precision vs float {kept / max(produced, 1):.3f}")


if __name__ == "__main__":
    main()
