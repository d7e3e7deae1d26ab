"""Every choice list and default of edgevae's settings, stated once.

The config dataclasses (``ModelConfig``, ``TrainConfig``, ``ExportConfig``, ``ScoringSpec``) take their
defaults and allowed values from here, and the command line shows them in its help from here, so the two
cannot drift apart. The score methods themselves are the registry's (``edgevae.runtime.methods``), named here
for the callers that read every choice from one module. Pure Python: the CLI imports it without numpy, torch or
onnxruntime; it lives in the runtime so that the runtime never imports upward.
"""

from __future__ import annotations

from .methods import MONTE_CARLO_METHODS as MONTE_CARLO_METHODS
from .methods import SCORE_METHODS as SCORE_METHODS
from .methods import samples_for as samples_for

# ---------------------------------------------------------------------------------------------- scoring
DEFAULT_METHOD = "combined"
# The parts of ``combined``: the defect head's score and the VAE's local score (small defects) and two global
# ones (unusual members of the normal kind, images of another kind), joined through their calibrated p-values
# (docs/scoring.md), and ``too_likely`` for images more likely than normal ones (blank, flat, simpler). A bundle
# without a defect head leaves ``defect`` out. Bundles that predate the parts' field in the manifest used
# LEGACY_COMBINED_PARTS.
COMBINED_PARTS = ("defect", "local", "smooth_recon", "elbo", "too_likely")
LEGACY_COMBINED_PARTS = ("local", "smooth_recon", "elbo")
# Monte-Carlo samples of the elbo part inside ``combined`` (the first rows of the elbo noise): inside the
# combination one sample ranks images about as well as sixteen (docs/scoring.md) for far fewer decoder passes.
COMBINED_ELBO_SAMPLES = 1
# ``local``: the mean of the top LOCAL_TOP_FRACTION of an image's anomaly-map pixels (at least one pixel).
LOCAL_TOP_FRACTION = 0.01
# Training images the map statistics and the combined score's reference distributions are measured on.
REFERENCE_IMAGES = 1000
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned")
# Width (standard deviation, pixels) of the Gaussian that smooths the residual in ``smooth_recon``: the
# default and the largest allowed value (the lower bound is exclusive: sigma > 0).
SMOOTH_SIGMA = 1.0
SMOOTH_SIGMA_MAX = 16.0
ELBO_SAMPLES = 16
ELBO_SAMPLES_MAX = 10_000
IWAE_SAMPLES = 256
IWAE_SAMPLES_MAX = 100_000
SCORE_SEED = 0

# ---------------------------------------------------------------------------------------------- export
CALIBRATION_FPR = 0.01
# Edge variants: one made by quantization, one by a lower float precision (``--quantize`` / ``--precision``).
QUANTIZE_VARIANTS = ("int8",)
PRECISION_VARIANTS = ("fp16",)
VARIANTS = QUANTIZE_VARIANTS + PRECISION_VARIANTS
OPSET = 18
OPSET_RANGE = (17, 21)

# ---------------------------------------------------------------------------------------------- model
ACTIVATIONS = ("silu", "relu")
ACTIVATION = "silu"
# The encoder's activation: ReLU, which folds into int8 convolutions (a faster int8 encoder) and measured better
# one-class detection, for about 2 nats of held-out ELBO (docs/benchmarks.md, the speed issue's decision). The
# decoder keeps ACTIVATION. Checkpoints written before this default keep their SiLU encoder.
ENCODER_ACTIVATION = "relu"
LIKELIHOOD = "bernoulli"
LATENT_DIM = 16
WIDTHS = (32, 64)
HIDDEN = 256
# The architecture rule (edgevae.training.model.architecture_for): stride-2 stages until the feature map is at
# most BOTTLENECK_MAX on its longer side (at least MIN_STAGES), WIDTH_START channels doubling per stage up to
# WIDTH_MAX, and LATENT_DIM latent dimensions per 28x28 grayscale image's worth of values, doubling for every
# fourfold growth up to LATENT_DIM_MAX. A 1x28x28 input gets exactly LATENT_DIM, WIDTHS and HIDDEN above.
BOTTLENECK_MAX = 7
MIN_STAGES = 2
WIDTH_START = 32
WIDTH_MAX = 128
LATENT_DIM_MAX = 128
REFERENCE_VALUES = 784
REFINE = 0
CHANNELS = (1, 3)

# ---------------------------------------------------------------------------------------------- training
EPOCHS = 150
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
# The validation/calibration split: by default ("auto") at least VAL_FRACTION of the images, and at least
# CALIBRATION_IMAGES where that takes no more than VAL_FRACTION_MAX (a 1 % threshold needs about 100 images:
# the smallest rate n calibration images can promise is 1 / (n + 1), docs/scoring.md).
VAL_FRACTION = 0.1
VAL_FRACTION_MAX = 0.25
CALIBRATION_IMAGES = 100
SEED = 0
BETA = 1.0
KL_WARMUP_EPOCHS = 0
AUGMENT_SHIFT = 1
AUGMENT_SHIFT_MAX = 8
AUGMENT_ROTATE = 0.0
# Distributed training (torchrun): where to train, and how long a collective waits for a silent process before
# the run ends with an error (a process that exits is noticed at once; this bounds a process that hangs).
DEVICES = ("auto", "cpu", "cuda")
DEVICE = "auto"
DISTRIBUTED_TIMEOUT_SECONDS = 600
AUGMENT_ROTATE_MAX = 45.0
# Tiled training (--tile): random tiles per epoch when not given, one per tile-sized area of the training images
# clamped to this range (the upper end keeps an epoch of a large data set as long as one of ~1,000 images).
TILES_PER_EPOCH_MIN = 256
TILES_PER_EPOCH_MAX = 512

# ---------------------------------------------------------------------------------------------- defect head
# The defect head (edgevae.training.defect_head): trained after the VAE on synthetic defects, by default.
DEFECT_HEAD = True
DEFECT_WIDTHS = (16, 32, 64)
DEFECT_RESOLUTIONS = ("half", "full")  # where the defect head makes its logits (TrainConfig.defect_resolution)
DEFECT_WIDTH_MAX = 256  # channels of any one stage of the defect head (TrainConfig.defect_widths)
# Defect heads trained from successive seeds and shipped as one, their logits averaged (TrainConfig.defect_heads).
DEFECT_HEADS = 1
DEFECT_MEMBERS_MAX = 8
DEFECT_STEPS = 3000
DEFECT_BATCH_SIZE = 32
DEFECT_LEARNING_RATE = 2e-3
# The ``defect`` score: the largest mean of the head's logits over a DEFECT_WINDOW x DEFECT_WINDOW window.
DEFECT_WINDOW = 5
# ... and a tiled bundle's (train --tile): the largest logit itself. Its head trains with hard negatives against
# false peaks, and a defect of 3-10 px on a texture is averaged away by a wider window (docs/scoring.md).
TILED_DEFECT_WINDOW = 1
# How the exported defect graph brings the head's half-resolution logits to the image's size: "bilinear" (a smooth
# map, below the head's own peak on a feature one logit wide) or "nearest" (each logit over a 2x2 block: the map's
# largest value is the head's largest logit). Untiled bundles and fixed cameras keep bilinear; a stationary surface's
# tiled bundle, scored by the largest logit on textures whose thin defects make narrow peaks, takes nearest
# (docs/scoring.md).
DEFECT_UPSAMPLINGS = ("bilinear", "nearest")
DEFECT_UPSAMPLING = "bilinear"
TILED_DEFECT_UPSAMPLING = "nearest"
# A tiled bundle's ``combined`` gives its ``defect`` part this share of the false-alarm budget (weighted Bonferroni;
# the other parts share the rest): tiles are for small local defects, which the head is built to find, and the VAE's
# four parts are all global scores of one model. Untiled bundles keep equal shares (docs/scoring.md).
TILED_DEFECT_SHARE = 0.5
