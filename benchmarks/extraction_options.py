"""Which way of running the frozen backbone is fastest on this CPU: batch size, folding, XLA, bfloat16, threads.

Measures MobileNetV2 (alpha 0.35) cut at `out_relu`:

- raw forward on random tensors: the Keras body as it is, with batch normalisation folded
  (tlcore's extractor), with XLA (`jit_compile=True`), and in bfloat16 (`mixed_bfloat16`);
  each with its largest difference from the float32 Keras body;
- the whole extraction pipeline (parallel decoding, prefetching, forward) over real images.

Usage:
    python benchmarks/extraction_options.py [DATA ...] [--size 224] [--images 256] [--threads N]
    python benchmarks/extraction_options.py --smoke   # a tiny run that only checks it works
"""

from __future__ import annotations

import argparse
import time

from common import DATASETS, machine_line, parse_with_smoke, print_table, private_keras_home, small_copy


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="*", default=[str(DATASETS / "horse-or-human"), str(DATASETS / "flowers")])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256, help="images per timing of the raw forward")
    parser.add_argument("--pipeline-images", type=int, default=300, help="images per timing of the pipeline")
    parser.add_argument("--batches", default="8,16,32,64")
    parser.add_argument("--repeats", type=int, default=3, help="timings per option; the best is kept")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra- and inter-op threads (0: default)")
    return parse_with_smoke(parser, smoke_defaults)


def smoke_defaults() -> dict:
    """`--smoke`: a few horse-or-human images at 96 px, one batch size, one timing."""
    return {"data": [str(small_copy(DATASETS / "horse-or-human", 4))], "size": 96, "images": 8,
            "pipeline_images": 8, "batches": "8", "repeats": 1}


def main():
    args = parse_args()
    private_keras_home()
    import keras
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from tlcore.config import ModelConfig
    from tlcore.dataset import load_dataset
    from tlcore.extraction import FeatureExtractor
    from tlcore.inputs import image_dataset
    from tlcore.model import build_body, preprocess

    print(machine_line())
    size = args.size
    batches = [int(b) for b in args.batches.split(",")]
    config = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=size, cut_layer="out_relu").resolved()
    body = build_body(config)
    # The saved model's own preprocessing (built-in Keras layers), as tlcore's extractor runs it.
    prepare = lambda x: preprocess(config.backbone, x)  # noqa: E731
    spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]
    keras_forward = tf.function(lambda x: body(prepare(x), training=False), input_signature=spec)
    folded = FeatureExtractor(body, config, ("map",), map_dtype="float32")
    folded_forward = lambda x: folded.tensors(x)["map"]  # noqa: E731
    xla_forward = tf.function(lambda x: body(prepare(x), training=False), input_signature=spec, jit_compile=True)
    keras.config.set_dtype_policy("mixed_bfloat16")
    body16 = build_body(config)
    keras.config.set_dtype_policy("float32")
    bf16_forward = tf.function(
        lambda x: tf.cast(body16(prepare(x), training=False), tf.float32), input_signature=spec
    )
    options = {
        "Keras body": keras_forward,
        "folded batch norm (tlcore)": folded_forward,
        "Keras body + XLA": xla_forward,
        "Keras body, bfloat16": bf16_forward,
    }
    probe = tf.random.uniform((4, size, size, 3), 0, 255, seed=3)
    reference = keras_forward(probe).numpy()
    rows = []
    for name, forward in options.items():
        difference = float(np.abs(forward(probe).numpy() - reference).max())
        for batch in batches if name in ("Keras body", "folded batch norm (tlcore)") else [16]:
            images = tf.random.uniform((batch, size, size, 3), 0, 255, seed=1)
            forward(images).numpy()
            calls = max(1, args.images // batch)
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    forward(images).numpy()
                best = min(best, time.perf_counter() - start)
            rows.append([name, batch, batch * calls / best, difference])
    print_table(
        ["raw forward on random tensors", "batch", "images/s", "max |diff| vs Keras"],
        rows,
        title=f"Raw forward, {size}px (best of {args.repeats}; feature values reach about 6)",
    )

    rows = []
    for data in args.data:
        dataset = load_dataset(data)
        items = (dataset.train + dataset.validation)[: args.pipeline_images]
        for name in ("Keras body", "folded batch norm (tlcore)"):
            forward = options[name]
            for batch in batches:
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    for images, _ in image_dataset(items, size, batch):
                        forward(images).numpy()
                    best = min(best, time.perf_counter() - start)
                rows.append([data.rstrip("/").split("/")[-1], name, batch, len(items) / best])
        decode_only = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in image_dataset(items, size, 16):
                pass
            decode_only = min(decode_only, time.perf_counter() - start)
        rows.append([data.rstrip("/").split("/")[-1], "decode + resize only", 16, len(items) / decode_only])
    print_table(
        ["data", "pipeline (decode + forward)", "batch", "images/s"],
        rows,
        title=f"Extraction pipeline over real images (best of {args.repeats})",
    )
    print(machine_line())


if __name__ == "__main__":
    main()
