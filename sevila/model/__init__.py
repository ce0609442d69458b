"""SeViLA the model (transformers style): `configuration` (sizes, presets), `modeling` (the Localizer, the Answerer and
the SeViLA model over BLIP-2's parts, with shape comments), `selection` (pure frame-selection and fusion functions),
`prompts` (the official T5 text), `tokenizer` (T5 tokenizers and token-id look-ups) and `precision` (bf16 policy)."""
