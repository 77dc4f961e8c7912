"""Command line: ``python -m triplet_keras <command> ...``.

``predict --model_dir D [--proba] [--batch_size N] image ...`` prints one ``path<TAB>class`` line per
image (``path<TAB>class<TAB>probability`` with --proba). A missing or unreadable image or a bad model
directory prints one error line naming the file and exits with status 2.
"""
import argparse
import os
import sys


def _predict(args):
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"image file not found: {missing[0]!r}"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    from .predict import Predictor

    predictor = Predictor.load(args.model_dir, batch_size=args.batch_size)
    probabilities = predictor.predict_proba(args.images)
    for path, row in zip(args.images, probabilities):
        best = int(row.argmax())
        line = f"{path}\t{predictor.class_names[best]}"
        print(f"{line}\t{row[best]:.4f}" if args.proba else line)
    return 0


def _add_predict(commands):
    parser = commands.add_parser("predict", help="classify images with a saved Predictor",
                                 description="Print path<TAB>class for each image.")
    parser.add_argument("--model_dir", required=True, help="directory written by Predictor.save")
    parser.add_argument("--proba", action="store_true", help="also print the probability of the class")
    parser.add_argument("--batch_size", type=int, default=64, help="images read and embedded at a time")
    parser.add_argument("images", nargs="+", help="image files")
    parser.set_defaults(run=_predict)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m triplet_keras",
                                     description="Triplet-loss embeddings and few-shot classification.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_predict(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .images import ImageReadError
    from .predict import PredictorFormatError

    try:
        return args.run(args)
    except (FileNotFoundError, ImageReadError, PredictorFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
