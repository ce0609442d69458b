"""Inference on videos: `features` (the ViT feature cache, clips, `score_frames`), `predictor` (a predictor loaded
once: video -> features -> keyframes -> answer), `cli` (`sevila answer`, `localize`, `model-info`), `plots`."""
