"""Nucleus types taught by clicks: features of segmented nuclei, a seeded learner trained from labelled examples,
classifiers saved as their examples (never pickles), and their application block by block.

Modules: `classes` (names and colours), `features`, `learner`, `store` (versioned folders), `examples` (points
to examples), `apply` (export hook, viewer job).
"""
