"""The library's names and defaults that the command line offers, in a module that imports nothing, so that
`maest --help` starts without torch while the CLI's choices still come from the library (each defined once, here).
"""

# The package's version (setup.cfg reads it from here).
__version__ = "0.1.0"

# The published model `maest tag`/`maest embed`/`load_model` use when none is named.
DEFAULT_MODEL = "mtg-upf/discogs-maest-30s-pw-129e-519l"

# What runs a model (`maest.inference.backends`): torch, or an exported graph; "auto" picks the fastest installed.
BACKENDS = ("torch", "onnxruntime", "openvino")
BACKEND_CHOICES = ("auto",) + BACKENDS
DEFAULT_BACKEND = "torch"

# `maest probe` (`maest.training.evaluation`): the probe's kinds, the tasks, and the poster's token sets
# (c: cls, d: dist, a: the mean of the patch tokens).
PROBE_KINDS = ("mlp", "linear")
PROBE_TASKS = ("auto", "multilabel", "multiclass")
POSTER_TOKEN_SETS = ("c", "d", "a", "cd", "ca", "da", "cda")

# The largest seed numpy takes (the probe's carved splits; accelerate's set_seed seeds numpy too).
MAX_SEED = 2**32 - 1
