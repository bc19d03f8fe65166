"""Model commands: generate, interpolate, variations, mutate, features, duplicates, evaluate.

Each parses its options (the tables here, shared with `experiments/dx7_vae/*.py`), makes one
library call and prints; the library is imported only when a command runs.
"""
import json

from neuraldx7_jax import dx7
from neuraldx7_jax.config import MUTATE_AMOUNT, REDRAW_FACTOR
from neuraldx7_jax.commands.options import (AUDIO, BATCH, CARTRIDGES, CHECKPOINT, JSON, PRIOR, PROCESSES, SEED,
                                            SYX_OUT, TEMPERATURE, Option, processes, subcommand)

GENERATE = (
    SYX_OUT,
    CARTRIDGES,
    TEMPERATURE, PRIOR,
    Option("like", many=True, metavar="SPEC", help="new voices near these: DX7 files, FILE:INDEX, DATASET.npz or "
           "DATASET.npz:SPLIT (their latents' density, widened a little)"),
    Option("name", metavar="REGEX", help="with --like, only the voices whose name matches, e.g. --like "
           "data.npz:train --name BASS for new basses"),
    Option("allow_silent", bool, help="keep voices whose estimated loudness is silent"),
    SEED, CHECKPOINT,
)


def _counts(reasons):
    """{"training_copy": 2, "silent": 0} -> "2 training copy": the reasons a voice was skipped."""
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in reasons.items() if n)


@subcommand("generate", "Sample new 32-voice cartridges from the model.", (
    "Sample voices and write them as 32-voice cartridges. Latents are drawn from the posterior prior "
    "(near the stored latent of a random training voice), or from a Gaussian mixture or one Gaussian "
    "fitted to those latents with --prior mixture or gaussian, or N(0, I) with --prior standard, or near the "
    "voices you point at with --like. A candidate voice is redrawn when its estimated loudness at "
    "C4 is silent (a parameter-only estimate, see `neuraldx7 evaluate`), when it repeats an "
    "earlier voice, or when it copies a training voice; names come from the model and a "
    "character model of the training names. With --count C > 1 the files are numbered: "
    "OUT_001.syx, OUT_002.syx, ... Cartridge i depends only on the seed (and prior, --like, "
    "temperature), not on the count, the batch size or the number of devices."), GENERATE)
def generate(a):
    from neuraldx7_jax import cartridges

    run = cartridges.generate(a.checkpoint, a.out, count=a.count, temperature=a.temperature, seed=a.seed,
                              prior=a.prior, like=a.like, name=a.name, allow_silent=a.allow_silent)
    if run.like is not None:
        print(f"near {run.like} voice(s) of {', '.join(a.like)}")
    for path, cart in run.cartridges:
        redrawn = _counts(cart.redrawn)
        print(f"wrote {path}: 32 voices from the {run.prior.name} prior"
              + (f"; redrew {sum(cart.redrawn.values())} ({redrawn})" if redrawn else ""))
        if cart.kept:
            print(f"note: after {cartridges.MAX_CANDIDATES} candidates it kept {_counts(cart.kept)} voice(s): "
                  "the model gives too few usable ones (try a temperature above 0)")
        print(dx7.voice_table(cart.voices))


def _print_cartridge(path, voices):
    print(f"wrote {path}: {len(voices)} voices")
    print(dx7.voice_table(voices))


INTERPOLATE = (
    Option("a", positional=True, metavar="A", help="the first voice, FILE:INDEX or DATASET.npz:SPLIT:INDEX"),
    Option("b", positional=True, metavar="B", help="the last voice, same form"),
    SYX_OUT,
    Option("steps", int, 32, "voices from A to B, ends included (default: 32)"),
    Option("slerp", bool, help="spherical instead of linear interpolation"),
    CHECKPOINT,
)


@subcommand("interpolate", "Write the voices on the line between two voices' latents.", (
    "Encode voices A and B (posterior mean, through the flows: the decoder's latent) and decode "
    "STEPS evenly spaced points from A to B; the first and last voices are A's and B's "
    "reconstructions. A voice is FILE:INDEX (any DX7 file, INDEX from 1) or "
    "DATASET.npz:SPLIT:INDEX. When STEPS is not a multiple of 32, the cartridge is filled up "
    "by repeating B's reconstruction."), INTERPOLATE)
def interpolate(a):
    from neuraldx7_jax import cartridges

    voices, written = cartridges.write_interpolation(a.checkpoint, a.a, a.b, a.out, steps=a.steps, slerp=a.slerp)
    _print_cartridge(a.out, voices)
    if written > len(voices):
        print(f"    filled up to {written} voices with the last one")


VARIATIONS = (
    Option("a", positional=True, metavar="A", help="the voice, FILE:INDEX or DATASET.npz:SPLIT:INDEX"),
    SYX_OUT,
    Option("spread", float, 1.0, "scale of the posterior noise (default: 1)"),
    Option("count", int, 32, "voices, a multiple of 32 (default: 32)"),
    Option("redraw", bool, help=f"replace duplicate voices by further draws (up to {REDRAW_FACTOR}x COUNT "
           "in all) until COUNT are distinct"),
    SEED, CHECKPOINT,
)


@subcommand("variations", "Write voices sampled around one voice's posterior.", (
    "Encode voice A and decode COUNT latents z0 = mu + SPREAD * sigma * eps (eps ~ N(0, I)), "
    "passed through A's flows. SPREAD 0 gives A's reconstruction COUNT times; 1 samples the "
    "posterior itself."), VARIATIONS)
def variations(a):
    from neuraldx7_jax import cartridges, data

    voices = cartridges.write_variations(a.checkpoint, a.a, a.out, count=a.count, spread=a.spread, seed=a.seed,
                                         redraw=a.redraw)
    _print_cartridge(a.out, voices)
    distinct = data.count_distinct(voices)
    hint = "" if distinct == len(voices) or a.redraw else "; --redraw replaces duplicates by new draws"
    print(f"{distinct} of {len(voices)} voices are distinct{hint}")


MUTATE = (
    Option("source", positional=True, metavar="SOURCE", help="FILE:INDEX (a cartridge of 32 mutants of that "
           "voice) or a DX7 file (each of its voices mutated once per cartridge)"),
    SYX_OUT,
    Option("amount", float, MUTATE_AMOUNT, "the share of the 145 non-name values that changes, on average, "
           f"0 to 1 (default: {MUTATE_AMOUNT})"),
    Option("keep", many=True, metavar="GROUP", choices=tuple(dx7.GROUPS),
           help="groups that must not change: " + ", ".join(dx7.GROUPS) + " (op1 is OP1 as the DX7 numbers "
           "operators; names are always kept)"),
    CARTRIDGES,
    SEED, CHECKPOINT,
)


@subcommand("mutate", "Write mutants of voices you like: a share of their values redrawn.", (
    "Redraw about AMOUNT of a voice's 145 non-name values given all the others and the voice's "
    "latent, so that what changes goes with what stays (the masked decoder; with a model of the "
    "original's independent decoder the redrawn values depend on the latent alone). The values of "
    "the --keep groups and the name never change. Every mutant is valid, differs from its source, "
    "and no two in a cartridge are equal. With --count C > 1 the files are numbered: "
    "OUT_001.syx, OUT_002.syx, ..."), MUTATE)
def mutate(a):
    from neuraldx7_jax import cartridges

    for path, voices, changed in cartridges.write_mutants(a.checkpoint, a.source, a.out, amount=a.amount,
                                                          keep=tuple(a.keep or ()), count=a.count, seed=a.seed):
        print(f"wrote {path}: {len(voices)} mutants; values changed: {100 * changed.mean():.0f}% on average "
              f"({100 * changed.min():.0f}-{100 * changed.max():.0f}%)")
        print(dx7.voice_table(voices))


FEATURES = (
    Option("data", help="a dataset .npz (its train split is the training set) or DX7 file "
           "(default: the checkpoint's dataset)"),
    Option("out", help="also write the per-voice arrays to this .npz"),
    BATCH,
    CHECKPOINT._replace(help="the work directory (or its checkpoints/ folder) whose model is encoded and "
                        "where features.json and training.npz are written (needed: the bundled model is read-only)"),
)


@subcommand("features", "Encode a dataset and summarise the model's latent space.", (
    "Encode every voice of a dataset (both splits) or DX7 file and write their posterior means "
    "and standard deviations (mu, sigma), the flowed posterior means (zk: the decoder's input) "
    "and the per-dimension mean and std of zk to an .npz (--out). Beside the checkpoints it "
    "stores features.json (that summary, where live control and the page find their ranges, and "
    "the Gaussian prior fitted to posterior draws of the training voices' latents) and "
    "training.npz (the same draws, the posterior prior generation samples from, and the mixture "
    "prior fitted to them; "
    "the training set's value counts for the evaluation baseline, keys of its voices so that "
    "generation can reject copies, and its name statistics; no voice itself). Training runs this at its end."), FEATURES)
def features(a):
    from neuraldx7_jax import checkpoint
    from neuraldx7_jax import features as features_lib

    summary = features_lib.write(a.checkpoint, a.data, out=a.out, batch=a.batch)
    if a.out:
        print(f"wrote {a.out}: {summary['count']} voices from {summary['dataset']}")
    print(f"wrote {checkpoint.features_path(a.checkpoint)} and {checkpoint.training_path(a.checkpoint)}")
    prior = summary["prior"]
    for d, (m, s) in enumerate(zip(summary["mean"], summary["std"])):
        print(f"    z{d}  mean {m:+.3f}  std {s:.3f}   Gaussian prior: mean {prior['mean'][d]:+.3f}  "
              f"std {prior['cov'][d][d] ** 0.5:.3f}")


def _print_audibility(report):
    if "audible_fraction" in report:
        theirs = report["training_audible_fraction"]
        print(f"audible at C4    {report['audible_fraction']:.4%} of {report['audio_voices']} voices"
              + (f" (training data: {theirs:.4%})" if theirs is not None else ""))


DUPLICATES = (
    Option("samples", int, 65536, "voices to sample (default: 65536)"),
    BATCH,
    TEMPERATURE,
    Option("data", help="the training dataset .npz (default: the checkpoint's)"),
    JSON, PRIOR, AUDIO, SEED, CHECKPOINT, *PROCESSES,
)


@subcommand("duplicates", "Measure how unique and how novel the model's samples are.", (
    "The uniqueness study of the original: sample N voices from the prior and count distinct "
    "voices (over the 155 values), valid ones, novel ones (no training voice has the same 145 "
    "non-name values) and exact copies of training voices, and estimate how many are audible "
    "(the parameter-only loudness estimate; --audio renders them in Dexed). Counting streams; "
    "memory grows with the distinct voices only. The training set is --data, or the checkpoint's "
    "dataset, or else the keys of its voices stored with the model (novelty, no copies). Over "
    "several processes (--coordinator or --distributed), each draws its share and process 0 prints "
    "the merged figures, the same as one process's."), DUPLICATES)
def duplicates(a):
    from neuraldx7_jax import studies

    result = studies.duplicates(a.checkpoint, samples=a.samples, batch=a.batch, temperature=a.temperature,
                                seed=a.seed, data=a.data, prior=a.prior, audio=a.audio, progress=not a.json,
                                **processes(a))
    if result is None:  # another process than 0 of a multi-process run
        return
    if a.json:
        print(json.dumps(result))
        return
    if result["note"] and result["novel"] is None:
        print(f"note: {result['note']}; novelty not measured")
    print(f"samples          {result['samples']} from the {result['prior']} prior")
    print(f"unique           {result['distinct']} ({result['unique_fraction']:.4%})")
    print(f"valid            {result['valid_fraction']:.4%}")
    if result["novel"] is not None:
        print(f"novel            {result['novel']} ({result['novel_fraction']:.4%})"
              + (f" vs {result['training_voices']} training voices" if result["training_voices"] is not None else ""))
    if result["training_copies"] is not None:
        print(f"training copies  {result['training_copies']}")
    print(f"audible (est.)   {result['estimated_audible_fraction']:.4%}")
    _print_audibility(result)
    print(f"throughput       {result['throughput']:.1f} samples/s on {result['devices']} device(s) "
          f"({result['seconds']:.1f} s, compilation {result['compile_seconds']:.1f} s)")


EVALUATE = (
    Option("file", positional=True, many=True, metavar="FILE", help="a DX7 file, DATASET.npz or DATASET.npz:SPLIT"),
    Option("data", help="the training dataset .npz for the baseline (default: the counts stored with the "
           "model, else the checkpoint's dataset)"),
    Option("reference", metavar="SPEC", help="voices to compare the value distributions with, e.g. "
           "data.npz:validation"),
    JSON, AUDIO, SEED, CHECKPOINT,
)


@subcommand("evaluate", "Check a file's voices and score them under the model.", (
    "Check every voice of FILE (a DX7 file, a dataset .npz or DATASET.npz:SPLIT) and, for the "
    "valid voices, report the model's reconstruction accuracy (posterior mean, argmax, over the "
    "155 values), cross-entropy and -ELBO per parameter in nats (over the in-range values, as "
    "generation sees them), beside a baseline that knows only each parameter's value "
    "frequencies in the training data (Laplace-smoothed; stored with the model): what the model "
    "adds. Also: the fraction estimated audible at C4 (a parameter-only estimate of each voice's "
    "loudness, checked against Dexed), how the names read (distinct per 32-voice cartridge; with "
    "a run of three letters or more) and, with --reference, how far the voices' value "
    "distributions are from another set's (mean marginal total-variation distance over the 145 "
    "non-name parameters, and the algorithm's) and how real they look beside it: the C2ST, the "
    "5-fold cross-validated accuracy of a gradient-boosted classifier (scikit-learn, the realism "
    "extra) telling the voices from as many reference voices by their 145 non-name values (0.5: "
    "indistinguishable; the larger set is subsampled by --seed). Several FILEs are taken as one set: "
    "`neuraldx7 evaluate carts/*.syx --reference data.npz:validation`."), EVALUATE)
def evaluate(a):
    from neuraldx7_jax import studies

    report = studies.evaluate(a.checkpoint, a.file, data=a.data, reference=a.reference, audio=a.audio, seed=a.seed)
    if a.json:
        print(json.dumps(report))
        return
    print(f"{', '.join(a.file)}: {report['count']} voices, {report['valid']} valid")
    for bad in report["invalid"]:
        print(f"{bad['index']:4d}  {bad['name']:10s}  out of range: {', '.join(bad['out_of_range'])}")
    if report["model"] is None:
        return
    m, b = report["model"], report["baseline"]
    if b is None:
        print(f"note: {report['note']}; no baseline")
    print(f"{'':24s}{'model':>10s}{'baseline':>10s}")
    rows = (("accuracy", "reconstruction_accuracy", "mode_accuracy"),
            ("CE / param (nats)", "ce_per_param", "ce_per_param"),
            ("-ELBO / param (nats)", "neg_elbo_per_param", "neg_elbo_per_param"))
    for label, mk, bk in rows:
        print(f"{label:24s}{m[mk]:10.4f}" + (f"{b[bk]:10.4f}" if b else f"{'-':>10s}"))
    print(f"audible at C4 (estimated)   {report['estimated_audible_fraction']:.2%}")
    n = report["names"]
    print(f"names: distinct per cartridge {n['distinct_names_per_cartridge'] or n['distinct_names']:.1%}, "
          f"with a run of 3+ letters {n['letter_run_fraction']:.1%}, "
          f"of at most 2 characters {n['short_name_fraction']:.1%}")
    if "nearest_training_distance_median" in report:
        print(f"nearest training voice: median {report['nearest_training_distance_median']:g} of 145 values apart")
    if "marginal_tv" in report:
        tv = report["marginal_tv"]
        print(f"marginal TV vs {a.reference} ({tv['reference_voices']} voices): mean {tv['mean']:.3f}, "
              f"algorithm {tv['algorithm']:.3f}")
    if "c2st" in report:
        c = report["c2st"]
        print(f"note: {c['note']}" if c["accuracy"] is None else
              f"C2ST vs {a.reference}: {c['accuracy']:.3f} ({c['voices']} voices a side; 0.5: indistinguishable)")
    _print_audibility(report)
