"""Model commands: generate, interpolate, variations, features, duplicates, evaluate."""
import json

import numpy as np

from neuraldx7_jax import dx7, sample
from neuraldx7_jax.cli import command
from neuraldx7_jax.errors import Error

CHECKPOINT_HELP = "a training work directory or its checkpoints/ folder (default: the bundled model)"


def _checkpoint(parser):
    parser.add_argument("--checkpoint", metavar="DIR", help=CHECKPOINT_HELP)


def _seed(parser):
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed; the same seed gives the same output (default: 0)")


def _audio(parser):
    parser.add_argument("--audio", type=int, nargs="?", const=1024, default=None, metavar="N",
                        help="also render N voices (default 1024) at C4 through Dexed and report the "
                             "audible fraction (RMS above -60 dBFS), beside the training data's; "
                             "needs the audio extra")


def _print_cartridge(path, voices):
    print(f"wrote {path}: {len(voices)} voices")
    print(dx7.voice_table(voices))


def _counts(reasons):
    """{"training_copy": 2, "silent": 0} -> "2 training copy": the reasons a voice was skipped."""
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in reasons.items() if n)


def _prior(parser):
    parser.add_argument("--prior", choices=sample.PRIORS,
                        help="where latents are drawn: 'fitted', the density of the training set's "
                             "latents stored with the model (the default when it has one), or "
                             "'standard', N(0, I) as the original did")


@command("generate", "Sample new 32-voice cartridges from the model.")
def generate(parser):
    parser.description = (
        "Sample voices and write them as 32-voice cartridges. Latents are drawn from the fitted prior "
        "(the density of the training voices' latents), or N(0, I) with --prior standard, or near the "
        "voices you point at with --like. A candidate voice is redrawn when its estimated loudness at "
        "C4 is silent (a parameter-only estimate, see `neuraldx7 evaluate`), when it repeats an "
        "earlier voice, or when it copies a training voice; names come from the model and a "
        "character model of the training names. With --count C > 1 the files are numbered: "
        "OUT_001.syx, OUT_002.syx, ... Cartridge i depends only on the seed (and prior, --like, "
        "temperature), not on the count, the batch size or the number of devices.")
    parser.add_argument("--out", required=True, help="the .syx file to write")
    parser.add_argument("--count", type=int, default=1, help="number of cartridges (default: 1)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 takes the most likely value of each parameter (default); "
                             "> 0 samples from softmax(logits / T)")
    _prior(parser)
    parser.add_argument("--like", nargs="+", metavar="SPEC",
                        help="new voices near these: DX7 files, FILE:INDEX, DATASET.npz or "
                             "DATASET.npz:SPLIT (their latents' density, widened a little)")
    parser.add_argument("--name", metavar="REGEX",
                        help="with --like, only the voices whose name matches, e.g. --like "
                             "data.npz:train --name BASS for new basses")
    parser.add_argument("--allow-silent", action="store_true",
                        help="keep voices whose estimated loudness is silent")
    _seed(parser)
    _checkpoint(parser)

    def run(args):
        if args.name is not None and not args.like:
            raise Error("--name selects among the voices of --like; give --like too")
        if args.like and args.prior:
            raise Error("--like and --prior both say where to draw from; give one")
        dx7.check_writable(*sample.cartridge_paths(args.out, args.count))
        model = sample.load_model(args.checkpoint)
        prior = sample.prior_of(model, args.prior)
        if args.like:
            like = sample.like_voices(args.like, args.name)
            prior = sample.like_prior(model, like, args.seed)
            print(f"near {len(like)} voice(s) of {', '.join(args.like)}")
        for path, cart in sample.generate_cartridges(model, args.out, args.count, args.temperature, args.seed,
                                                     prior=prior, allow_silent=args.allow_silent):
            redrawn = _counts(cart.redrawn)
            print(f"wrote {path}: 32 voices from the {prior.name} prior"
                  + (f"; redrew {sum(cart.redrawn.values())} ({redrawn})" if redrawn else ""))
            if cart.kept:
                print(f"note: after {sample.MAX_CANDIDATES} candidates it kept {_counts(cart.kept)} voice(s): "
                      "the model gives too few usable ones (try a temperature above 0)")
            print(dx7.voice_table(cart.voices))
    return run


@command("interpolate", "Write the voices on the line between two voices' latents.")
def interpolate(parser):
    parser.description = (
        "Encode voices A and B (posterior mean, through the flows: the decoder's latent) and decode "
        "STEPS evenly spaced points from A to B; the first and last voices are A's and B's "
        "reconstructions. A voice is FILE:INDEX (any DX7 file, INDEX from 1) or "
        "DATASET.npz:SPLIT:INDEX. When STEPS is not a multiple of 32, the cartridge is filled up "
        "by repeating B's reconstruction.")
    parser.add_argument("a", metavar="A", help="the first voice, FILE:INDEX or DATASET.npz:SPLIT:INDEX")
    parser.add_argument("b", metavar="B", help="the last voice, same form")
    parser.add_argument("--out", required=True, help="the .syx file to write")
    parser.add_argument("--steps", type=int, default=32, help="voices from A to B, ends included (default: 32)")
    parser.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    _checkpoint(parser)

    def run(args):
        dx7.check_writable(args.out)
        model = sample.load_model(args.checkpoint)
        voices, _ = sample.interpolate(model, sample.load_voice(args.a), sample.load_voice(args.b),
                                       args.steps, args.slerp)
        written = sample.save_voices(args.out, voices)
        _print_cartridge(args.out, sample.clean_names(voices))
        if written > len(voices):
            print(f"    filled up to {written} voices with the last one")
    return run


@command("variations", "Write voices sampled around one voice's posterior.")
def variations(parser):
    parser.description = (
        "Encode voice A and decode COUNT latents z0 = mu + SPREAD * sigma * eps (eps ~ N(0, I)), "
        "passed through A's flows. SPREAD 0 gives A's reconstruction COUNT times; 1 samples the "
        "posterior itself.")
    parser.add_argument("a", metavar="A", help="the voice, FILE:INDEX or DATASET.npz:SPLIT:INDEX")
    parser.add_argument("--out", required=True, help="the .syx file to write")
    parser.add_argument("--spread", type=float, default=1.0, help="scale of the posterior noise (default: 1)")
    parser.add_argument("--count", type=int, default=32, help="voices, a multiple of 32 (default: 32)")
    parser.add_argument("--redraw", action="store_true",
                        help="replace duplicate voices by further draws (up to "
                             f"{sample.REDRAW_FACTOR}x COUNT in all) until COUNT are distinct")
    _seed(parser)
    _checkpoint(parser)

    def run(args):
        if args.count < 32 or args.count % 32:
            raise Error(f"--count must be a positive multiple of 32, got {args.count}")
        dx7.check_writable(args.out)
        model = sample.load_model(args.checkpoint)
        voices = sample.variations(model, sample.load_voice(args.a), args.count, args.spread, args.seed,
                                   redraw=args.redraw)
        sample.save_voices(args.out, voices)
        _print_cartridge(args.out, sample.clean_names(voices))
        distinct = sample.count_distinct(voices)
        hint = "" if distinct == len(voices) or args.redraw else "; --redraw replaces duplicates by new draws"
        print(f"{distinct} of {len(voices)} voices are distinct{hint}")
    return run


@command("features", "Encode a dataset and summarise the model's latent space.")
def features(parser):
    parser.description = (
        "Encode every voice of a dataset (both splits) or DX7 file and write their posterior means "
        "and standard deviations (mu, sigma), the flowed posterior means (zk: the decoder's input) "
        "and the per-dimension mean and std of zk to an .npz (--out). Beside the checkpoints it "
        "stores features.json (that summary, where live control and the page find their ranges, and "
        "the fitted prior: a Gaussian fitted to posterior draws of the training voices' latents, which "
        "generation samples from) and training.npz (the training set's value counts for the "
        "evaluation baseline, keys of its voices so that generation can reject copies, and its name "
        "statistics; no voice itself). Training runs this at its end.")
    parser.add_argument("--data", help="a dataset .npz (its train split is the training set) or DX7 file "
                                       "(default: the checkpoint's dataset)")
    parser.add_argument("--out", help="also write the per-voice arrays to this .npz")
    _checkpoint(parser)

    def run(args):
        if args.out:
            dx7.check_writable(args.out)
        model = sample.load_model(args.checkpoint)
        summary = sample.write_features(model, args.data, args.out)
        if args.out:
            print(f"wrote {args.out}: {summary['count']} voices from {summary['dataset']}")
        print(f"wrote {sample.features_path(model.path)} and {sample.training_path(model.path)}")
        prior = summary["prior"]
        for d, (m, s) in enumerate(zip(summary["mean"], summary["std"])):
            print(f"    z{d}  mean {m:+.3f}  std {s:.3f}   fitted prior: mean {prior['mean'][d]:+.3f}  "
                  f"std {prior['cov'][d][d] ** 0.5:.3f}")
    return run


def _print_audibility(report):
    if "audible_fraction" in report:
        theirs = report["training_audible_fraction"]
        print(f"audible at C4    {report['audible_fraction']:.4%} of {report['audio_voices']} voices"
              + (f" (training data: {theirs:.4%})" if theirs is not None else ""))


@command("duplicates", "Measure how unique and how novel the model's samples are.")
def duplicates(parser):
    parser.description = (
        "The uniqueness study of the original: sample N voices from the prior and count distinct "
        "voices (over the 155 values), valid ones, novel ones (no training voice has the same 145 "
        "non-name values) and exact copies of training voices, and estimate how many are audible "
        "(the parameter-only loudness estimate; --audio renders them in Dexed). Counting streams; "
        "memory grows with the distinct voices only. The training set is --data, or the checkpoint's "
        "dataset, or else the keys of its voices stored with the model (novelty, no copies).")
    parser.add_argument("--samples", type=int, default=65536, help="voices to sample (default: 65536)")
    parser.add_argument("--batch", type=int,
                        help="voices per device call (default: 256 on CPU, 4096 on GPU/TPU); "
                             "results do not depend on it")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, argmax)")
    parser.add_argument("--data", help="the training dataset .npz (default: the checkpoint's)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    _prior(parser)
    _audio(parser)
    _seed(parser)
    _checkpoint(parser)

    def run(args):
        model = sample.load_model(args.checkpoint)
        training, path, why = sample.training_voices(model, args.data)
        result = sample.duplicates_study(model, args.samples, args.batch, args.temperature, args.seed,
                                         training, progress=not args.json, prior=args.prior)
        result["dataset"] = path
        if args.audio:
            from neuraldx7_jax import audio
            voices = sample.sample_prior(model, min(args.audio, args.samples), args.temperature, args.seed,
                                         prior=args.prior)
            result.update(audio.audibility(voices, training, args.audio, args.seed))
        if args.json:
            print(json.dumps(result))
            return
        if why and result["novel"] is None:
            print(f"note: {why}; novelty not measured")
        print(f"samples          {result['samples']} from the {result['prior']} prior")
        print(f"unique           {result['distinct']} ({result['unique_fraction']:.4%})")
        print(f"valid            {result['valid_fraction']:.4%}")
        if result["novel"] is not None:
            print(f"novel            {result['novel']} ({result['novel_fraction']:.4%})"
                  + (f" vs {len(training)} training voices" if training is not None else ""))
        if result["training_copies"] is not None:
            print(f"training copies  {result['training_copies']}")
        print(f"audible (est.)   {result['estimated_audible_fraction']:.4%}")
        _print_audibility(result)
        print(f"throughput       {result['throughput']:.1f} samples/s on {result['devices']} device(s) "
              f"({result['seconds']:.1f} s, compilation {result['compile_seconds']:.1f} s)")
    return run


@command("evaluate", "Check a file's voices and score them under the model.")
def evaluate(parser):
    parser.description = (
        "Check every voice of FILE (a DX7 file, a dataset .npz or DATASET.npz:SPLIT) and, for the "
        "valid voices, report the model's reconstruction accuracy (posterior mean, argmax, over the "
        "155 values), cross-entropy and -ELBO per parameter in nats (over the in-range values, as "
        "generation sees them), beside a baseline that knows only each parameter's value "
        "frequencies in the training data (Laplace-smoothed; stored with the model): what the model "
        "adds. Also: the fraction estimated audible at C4 (a parameter-only estimate of each voice's "
        "loudness, checked against Dexed), how the names read (distinct per 32-voice cartridge; with "
        "a run of three letters or more) and, with --reference, how far the voices' value "
        "distributions are from another set's (mean marginal total-variation distance over the 145 "
        "non-name parameters, and the algorithm's). Several FILEs are taken as one set: "
        "`neuraldx7 evaluate carts/*.syx --reference data.npz:validation`.")
    parser.add_argument("file", metavar="FILE", nargs="+", help="a DX7 file, DATASET.npz or DATASET.npz:SPLIT")
    parser.add_argument("--data", help="the training dataset .npz for the baseline (default: the counts "
                                       "stored with the model, else the checkpoint's dataset)")
    parser.add_argument("--reference", metavar="SPEC",
                        help="voices to compare the value distributions with, e.g. data.npz:validation")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    _audio(parser)
    _checkpoint(parser)

    def run(args):
        model = sample.load_model(args.checkpoint)
        voices = np.concatenate([sample.load_voices(f) for f in args.file])
        reference = sample.load_voices(args.reference) if args.reference else None
        training, path, why = (None, None, None) if args.data is None and model.training is not None \
            else sample.training_voices(model, args.data)
        report = sample.evaluate_voices(model, voices, training, reference)
        report["dataset"] = path
        if args.audio:
            from neuraldx7_jax import audio
            report.update(audio.audibility(voices[dx7.is_valid(voices)], training, args.audio))
        if args.json:
            print(json.dumps(report))
            return
        print(f"{', '.join(args.file)}: {report['count']} voices, {report['valid']} valid")
        for bad in report["invalid"]:
            print(f"{bad['index']:4d}  {bad['name']:10s}  out of range: {', '.join(bad['out_of_range'])}")
        if report["model"] is None:
            return
        m, b = report["model"], report["baseline"]
        if b is None:
            print(f"note: {why}; no baseline")
        print(f"{'':24s}{'model':>10s}{'baseline':>10s}")
        rows = (("accuracy", "reconstruction_accuracy", "mode_accuracy"),
                ("CE / param (nats)", "ce_per_param", "ce_per_param"),
                ("-ELBO / param (nats)", "neg_elbo_per_param", "neg_elbo_per_param"))
        for label, mk, bk in rows:
            print(f"{label:24s}{m[mk]:10.4f}" + (f"{b[bk]:10.4f}" if b else f"{'-':>10s}"))
        print(f"audible at C4 (estimated)   {report['estimated_audible_fraction']:.2%}")
        n = report["names"]
        print(f"names: distinct per cartridge {n['distinct_names_per_cartridge'] or n['distinct_names']:.1%}, "
              f"with a run of 3+ letters {n['letter_run_fraction']:.1%}")
        if "nearest_training_distance_median" in report:
            print(f"nearest training voice: median {report['nearest_training_distance_median']:g} of 145 values apart")
        if "marginal_tv" in report:
            tv = report["marginal_tv"]
            print(f"marginal TV vs {args.reference} ({tv['reference_voices']} voices): mean {tv['mean']:.3f}, "
                  f"algorithm {tv['algorithm']:.3f}")
        _print_audibility(report)
    return run
