"""The embedded synthetic world (docs/design.md §4): `world` (generated videos and their annotations in the real
benchmarks' formats), `render` (their pixels), and the `bootstrap` of its tiny backbone (with `bootstrap_examples`)."""
