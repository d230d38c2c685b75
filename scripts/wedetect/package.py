"""The manifest shared by every WeDetect-Uni package (real export and synthetic test model), so
that the synthetic model has exactly the production signature (docs/model-contract.md)."""

STRIDES = (8, 16, 32)


def wedetect_manifest(name, description, license_text, embedding_dim, side, scales, biases):
    """model.json for a WeDetect-Uni package: RGB /255 letterbox (pad 114, centred), 3 levels
    with per-level exp(logit_scale) and bias, XLM-R tokenizer (pad id 1), infer_anything.py's
    proposal defaults, WeDetect's demo threshold 0.2."""
    return {
        "format_version": 1,
        "name": name,
        "description": description,
        "license": license_text,
        "embedding_dim": embedding_dim,
        "image": {
            "graph": "image.onnx",
            "input": "pixels",
            "input_size": [side, side],
            "batch_size": None,
            "layout": "NCHW",
            "channel_order": "RGB",
            "scale": 1.0 / 255.0,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "letterbox": {"pad_value": 114, "centered": True},
            "resize_filter": "bilinear",
            "outputs": {"boxes": "boxes", "objectness": "objectness", "embeddings": "embeddings", "levels": "levels"},
        },
        "text": {
            "graph": "text.onnx",
            "tokenizer": "tokenizer.json",
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "token_type_ids": None,
            "pad_id": 1,
            "max_length": 512,  # XLM-R has 514 positions, 2 of them reserved
            "output": "text_embeddings",
            "query_template": "{}",
        },
        # the defaults of the reference infer_anything.py; its demo threshold is 0.2
        "proposals": {"objectness_threshold": 0.1, "nms_iou": 0.7, "max_per_image": 100},
        "scoring": {
            "activation": "sigmoid",
            "levels": [{"stride": s, "scale": float(sc), "bias": float(b)} for s, sc, b in zip(STRIDES, scales, biases)],
            "default_threshold": 0.2,
        },
    }
