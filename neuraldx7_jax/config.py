"""Run configuration: one `Config` per run (the model's architecture and the training), presets
are functions returning it. No JAX: commands read it before deciding to import JAX."""
import dataclasses
import math

from neuraldx7_jax.errors import Error

# The temperature new voices are drawn at, wherever they are (generate, the page, the duplicates
# study): values sampled from the decoder's softmax, so that each parameter's values come out
# distributed like real voices'. 0, the original's argmax, concentrates every parameter on its
# most likely values (most voices then share a few algorithms): MODEL_CARD.md has both's figures.
# Decoding a given latent (live control, interpolate, variations) stays argmax.
NEW_VOICE_TEMPERATURE = 1.0
# Passes of the masked decoder (`ModelConfig.decoder`) to draw or decode a voice: each fixes a
# share of the values still hidden (sample.unmask). The independent decoder takes one.
DECODE_PASSES = 8
# Live control's passes (and `bench`'s decode1): a voice within a JACK period. One is the voice
# from z alone, as the independent decoder's; each more fixes the most confident values first and
# decodes the rest again given them (MODEL_CARD.md has the latency of each).
LIVE_PASSES = 2
# The share of a voice's 145 non-name values that `mutate` (and the page's Mutate) changes by default.
MUTATE_AMOUNT = 0.3
# Live control's CCs and the page's sliders sweep mean -/+ LATENT_SPAN std of each latent dimension.
LATENT_SPAN = 3.0
# Seconds a process of a multi-process run may stay silent before the others stop (JAX's default).
HEARTBEAT_S = 100
SEEDS = 2 ** 32  # a seed is in 0..SEEDS-1, what a JAX key holds (larger ones used to wrap around)
# The priors latents can be drawn from by name (`priors.prior_of`, --prior).
PRIORS = ("posterior", "mixture", "gaussian", "standard")
# `variations --redraw` draws at most this many times the count (`sample.variations`).
REDRAW_FACTOR = 16
# The MIDI backends of live control, ports and send (`midi.BACKENDS`, --backend).
MIDI_BACKENDS = ("jack", "rtmidi")
# A run's schedule by default (`neuraldx7 train`, `checkpoint.Run`): steps between checkpoints,
# checkpoints kept, steps between validation runs, steps between metric lines.
CHECKPOINT_EVERY, KEEP, EVAL_EVERY, LOG_EVERY = 1000, 3, 1000, 50


def check_seed(seed):
    """Raises Error unless `seed` is in 0..SEEDS-1: a larger one would wrap around silently, and
    one beyond 64 bits was a traceback."""
    if not 0 <= seed < SEEDS:
        raise Error(f"the seed must be in 0..{SEEDS - 1}, got {seed}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture. Defaults are the original run behind thisdx7cartdoesnotexist.com."""
    features: int = 512  # F, width of every attention layer
    heads: int = 8  # H; each head is F / H wide
    layers: int = 12  # attention layers, in the encoder and in the decoder each
    # Attention layers of the decoder alone when set; 0: `layers` (the original: equal stacks).
    decoder_layers: int = 0
    latent: int = 8  # Z, size of the latent space
    flows: int = 16  # K triangular Sylvester flows
    # The original divides attention scores by sqrt(H) (a quirk); "head_dim" uses sqrt(F / H).
    attention_scale: str = "heads"
    # The original uses the exact (erf) GELU; True uses the tanh approximation.
    gelu_approximate: bool = False
    # Which positional-table row each field gets: "original" (the row of its position in the
    # original's packed-field order, as NeuralDX7 did; imported weights need it) or "canonical"
    # (row p for field p). Either trains equally well; only imports care.
    position_order: str = "original"
    # The attention stacks' matmuls and activations: "float32" (the original's) or "bfloat16"
    # (mixed precision: parameters, softmax, GELU, layer-norm statistics, the latent path and
    # the logits stay float32; slower on a CPU; docs/performance.md has what it was measured at).
    compute_dtype: str = "float32"
    # What the decoder reads besides z: "independent" (nothing: each value is drawn independently
    # given z, the original) or "masked" (also the values of a chosen subset of the parameters,
    # through a learned coupling of every pair of fields (model.Reader); trained with a uniformly
    # random share hidden per voice, an any-order autoregressive bound, and sampled by unmasking
    # in a few passes).
    decoder: str = "independent"

    def __post_init__(self):
        if self.decoder_layers < 0:
            raise ValueError(f"decoder_layers must be >= 0, not {self.decoder_layers}")
        if self.features % self.heads:
            raise ValueError(f"features ({self.features}) must be a multiple of heads ({self.heads})")
        if self.attention_scale not in ("heads", "head_dim"):
            raise ValueError(f"attention_scale must be 'heads' or 'head_dim', not {self.attention_scale!r}")
        if self.position_order not in ("canonical", "original"):
            raise ValueError(f"position_order must be 'canonical' or 'original', not {self.position_order!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype must be 'float32' or 'bfloat16', not {self.compute_dtype!r}")
        if self.decoder not in ("independent", "masked"):
            raise ValueError(f"decoder must be 'independent' or 'masked', not {self.decoder!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loss. Defaults are the original's (AdamW with torch defaults)."""
    batch_size: int = 16  # global batch, split over all devices
    learning_rate: float = 1e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW's decoupled weight decay (torch default)
    warmup_steps: int = 0  # linear warm-up from 0 to the peak; 0 = none (original)
    lr_schedule: str = "constant"  # "constant" (original) or "cosine" (decay to 0 at `decay_steps`)
    decay_steps: int = 0  # length of the cosine schedule, warm-up included
    max_beta: float = 0.5  # weight of the KL term once annealed
    beta_temp: float = 6e-5  # beta(step) = normalised sigmoid(step * beta_temp - 6)
    # The original's CE covers all 128 values; True ignores values outside each parameter's range.
    masked_ce: bool = False
    # At most this many voices per forward/backward pass on each device (equal passes); a step
    # averages its passes' gradients, so only speed and float rounding depend on it. 0: 4 on a CPU
    # (the pass stays in cache, faster: docs/performance.md), one pass on a GPU or TPU.
    microbatch: int = 0
    # The masked decoder: the share of voices trained with every value hidden (the voice from z
    # alone), besides the uniformly random share hidden for the rest; 0 is the any-order bound.
    hidden_all: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.hidden_all <= 1.0:
            raise ValueError(f"hidden_all must be within [0, 1], not {self.hidden_all}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a finite number > 0, not {self.learning_rate}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError(f"warmup_steps and decay_steps must be >= 0, not {self.warmup_steps} and {self.decay_steps}")
        if self.microbatch < 0:
            raise ValueError(f"microbatch must be >= 0, not {self.microbatch}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and self.decay_steps <= self.warmup_steps:
            raise ValueError("the cosine schedule needs decay_steps > warmup_steps")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(model=ModelConfig(**d["model"]), train=TrainConfig(**d["train"]))

    def replace(self, **train_overrides):
        """A copy with some TrainConfig fields changed (None values are ignored)."""
        changes = {k: v for k, v in train_overrides.items() if v is not None}
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))


def original():
    """The run behind thisdx7cartdoesnotexist.com: F=512 (8x64), 12 layers, Z=8, 16 flows."""
    return Config()


def small():
    """F=128 (4x32), 4 layers, Z=8, 8 flows; same semantics. CPU benchmarks use it."""
    return Config(model=ModelConfig(features=128, heads=4, layers=4, latent=8, flows=8))


def test():
    """A tiny model for tests: seconds on a CPU."""
    return Config(model=ModelConfig(features=16, heads=2, layers=1, latent=4, flows=2),
                  train=TrainConfig(batch_size=8, learning_rate=1e-3))


def bundled():
    """The bundled default model: narrow enough to train on a 2-core CPU and to decode one voice
    within live control's budget, with a decoder one layer deeper than its encoder that also reads
    the values it is shown (the masked decoder); with the named improvements on (see MODEL_CARD.md)."""
    return Config(
        model=ModelConfig(features=64, heads=4, layers=2, decoder_layers=3, latent=8, flows=4,
                          attention_scale="head_dim", decoder="masked"),
        train=TrainConfig(batch_size=64, learning_rate=1e-3, warmup_steps=200, lr_schedule="cosine",
                          decay_steps=20000, masked_ce=True, max_beta=0.03, beta_temp=3e-3, hidden_all=0.25))


PRESETS = {"original": original, "small": small, "bundled": bundled, "test": test}


def preset(name):
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def _parse(value, kind):
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() in ("true", "1")
    return kind(value)


def override(cfg, assignments):
    """`cfg` with `section.field=value` assignments applied, e.g. `model.features=256`."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        section, _, name = key.strip().partition(".")
        part = getattr(cfg, section, None) if sep and section in ("model", "train") else None
        fields = {f.name: f for f in dataclasses.fields(part)} if part is not None else {}
        if name not in fields:
            raise ValueError(f"bad override {assignment!r}: use model.FIELD=VALUE or train.FIELD=VALUE "
                             f"with a field of ModelConfig or TrainConfig")
        kind = type(getattr(part, name))
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(part, **{name: _parse(value.strip(), kind)})})
    return cfg
