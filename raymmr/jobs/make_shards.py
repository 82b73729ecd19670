"""Write WebDataset shards (+ manifest.json, tokenizer.json), index shards written by another
tool (img2dataset), or validate a shard set.

    python jobs/make_shards.py synthrad --out data/synthrad-tiny --config tiny
    python jobs/make_shards.py vqa-rad --src data_RAD --out data/vqa-rad --image-size 224 --vocab train
    python jobs/make_shards.py slake --src Slake1.0 --out data/slake --vocab all     # paper-compatible
    python jobs/make_shards.py validate data/vqa-rad                                 # exit 1 on any error
    python jobs/make_shards.py index s3://bucket/laion-med --val-fraction 0.02       # img2dataset shards, in place
    python jobs/make_shards.py index data/mine --field caption=json:text --split val='0000[0-1].tar'

--vocab train: the answer vocabulary comes from the train split (clean protocol); --vocab all:
from every split, as M3AE-style papers do. Sources without a validation split (vqa-rad, pmc-vqa)
get one carved from train, grouped by image (--val-fraction, default 0.1).

index: a manifest and tokenizer are written beside existing shards (KEY.jpg/jpeg/png/webp + KEY.txt
caption and/or KEY.json), which stay as they are; see raymmr/data/making/foreign.py. --field NAME=SOURCE
says where a sample's caption (txt or json:FIELD) and labels (domain/modality/organ=json:FIELD) are;
shards go to splits by --split SPLIT=GLOB rules, else by a hash of their names (--val-fraction,
--test-fraction; default: all train).
"""

import argparse
import sys

from raymmr.data.making.converters import CONVERTERS

SOURCES = ("synthrad", *CONVERTERS)  # SynthRad is generated; every other source has a converter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=SOURCES + ("validate", "index"), help="dataset to convert, 'validate' or 'index'")
    p.add_argument("directory", nargs="?", help="validate: the shard set directory; index: the shards' directory or URL")
    p.add_argument("--field", dest="fields", action="append", default=[], metavar="NAME=SOURCE",
                   help="index: where a sample's caption / labels are, e.g. caption=json:text (default caption=txt)")
    p.add_argument("--split", dest="split_rules", action="append", default=[], metavar="SPLIT=GLOB",
                   help="index: shards whose file name matches GLOB go to SPLIT (repeatable; the rest: train)")
    p.add_argument("--test-fraction", type=float, default=0.0, help="index: share of shards hashed into test")
    p.add_argument("--tokenizer-vocab", type=int, default=8192, help="index: tokenizer vocabulary size")
    p.add_argument("--src", help="dataset folder in its public layout (not for synthrad)")
    p.add_argument("--out", help="output directory of the shard set")
    p.add_argument("--config", default="tiny", help="preset (tiny, base) or YAML file for data.* (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. --set data.synthrad_train=500 (repeatable)")
    p.add_argument("--image-size", type=int, help="stored image size (overrides data.image_size)")
    p.add_argument("--samples-per-shard", type=int, help="overrides data.samples_per_shard")
    p.add_argument("--vocab", choices=("train", "all"), default="train", help="splits of the answer vocabulary")
    p.add_argument("--val-fraction", type=float, help="converters: share of train images moved to val; index: share of shards hashed into val")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from raymmr import storage
    from raymmr.cli import config_from_args
    from raymmr.config import ConfigError
    from raymmr.data.making.sets import make_converted_shards, make_synthrad_shards
    from raymmr.data.making.validate import format_report, validate_shards
    from raymmr.data.shards import MANIFEST

    if args.source == "validate":
        if not args.directory:
            print("error: usage: make_shards.py validate DIR", file=sys.stderr)
            return 2
        report = validate_shards(args.directory, progress=not args.quiet)
        print(format_report(report))
        return 0 if report["ok"] else 1
    if args.source == "index":
        return index(args)
    if not args.out:
        print("error: --out DIR is required", file=sys.stderr)
        return 2
    if (args.source == "synthrad") == bool(args.src):
        print("error: --src is " + ("not used for synthrad" if args.src else f"required for {args.source}"), file=sys.stderr)
        return 2
    remote = storage.is_remote(args.out)
    out = args.out
    if remote:  # write locally, then upload the finished set
        out = str(storage.cache_path("staging", args.out))
    try:
        cfg = config_from_args(args, {"image_size": "data.image_size", "samples_per_shard": "data.samples_per_shard"})
        if args.source == "synthrad":
            if args.vocab != "train":
                print("note: SynthRad answers are the same in every split; --vocab is ignored", file=sys.stderr)
            manifest = make_synthrad_shards(out, cfg.data, progress=not args.quiet)
        else:
            manifest = make_converted_shards(args.source, args.src, out, cfg.data, vocab=args.vocab,
                                             val_fraction=args.val_fraction, progress=not args.quiet)
        if remote:
            print(f"uploading {out} -> {args.out}", flush=True)
            storage.put(out, args.out, last=MANIFEST)
    except (ConfigError, ValueError, FileNotFoundError, NotADirectoryError, storage.StorageError) as e:
        # ConverterError and ShardError are ValueErrors that name the file, field and fix.
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, info in manifest["splits"].items():
        skipped = f", {info['skipped']} skipped" if info.get("skipped") else ""
        print(f"{split}: {info['count']} samples in {len(info['shards'])} shards, domains {info['domains']}{skipped}")
    print(f"{len(manifest['answers'])} answers (vocab over {manifest['vocab_splits']}); manifest: {args.out}/manifest.json")
    return 0



def index(args: argparse.Namespace) -> int:
    from raymmr.data.making.foreign import index_shards, parse_fields
    from raymmr.data.shards import ShardError
    from raymmr.storage import StorageError

    if not args.directory:
        print("error: usage: make_shards.py index DIR_OR_URL [--field NAME=SOURCE] [--split SPLIT=GLOB]", file=sys.stderr)
        return 2
    try:
        rules = {}
        for rule in args.split_rules:
            split, sep, pattern = rule.partition("=")
            if not sep or not split or not pattern:
                raise ShardError(f"--split {rule!r}: expected SPLIT=GLOB, e.g. val='0000[0-1].tar'")
            rules[split] = pattern
        manifest = index_shards(args.directory, fields=parse_fields(args.fields), rules=rules,
                                val_fraction=args.val_fraction or 0.0, test_fraction=args.test_fraction,
                                tokenizer_vocab_size=args.tokenizer_vocab, progress=not args.quiet)
    except (ShardError, StorageError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, info in manifest["splits"].items():
        skipped = f" ({info['skipped']} without an image or caption, skipped by the loader)" if info["skipped"] else ""
        print(f"{split}: {info['count']} samples in {len(info['shards'])} shards{skipped}")
    print(f"manifest and tokenizer written beside the shards in {args.directory}; the shards were not changed")
    return 0
