"""Weights into a SeViLA model, whatever their source. The entry is `sevila.weights.load` (`load_for_inference`,
`assemble`, `detect_kind`: the format told apart by its files); one module per format: `ours` (our checkpoint
directories, laid out by `checkpoint_dir`), `transformers_blip2` (a `save_pretrained` BLIP-2 directory), `lavis`
(the official SeViLA `.pth` and LAVIS BLIP-2); `apply` copies a key plan into a model and reports what it set."""
