"""Command line: ``triplet-keras <command> ...`` or ``python -m triplet_keras <command> ...``.

``train --model_dir D [--data_dir F] [--restart] [--key VALUE ...]`` is the end-to-end run, init.py's
(triplet_keras.pipeline.train_command): parameters from D/params.json, each overridable by a flag; a failure the
user can fix prints one ``error:`` line and exits with status 1.

``predict --model_dir D [--proba] [--lookup K] [--no-unknown] [--batch_size N] image ...`` prints one
``path<TAB>class`` line per image; --proba adds ``<TAB>probability`` (of the most likely class), and
--lookup K adds ``<TAB>id<TAB>label<TAB>distance`` for each of the K nearest gallery items, nearest
first (all of them when the gallery holds fewer). A calibrated predictor answers ``unknown`` for
images beyond its calibrated thresholds (Predictor.calibrate) unless --no-unknown is given. A missing
or unreadable image, a bad model directory or a lookup without a gallery prints one error line and
exits with status 2.

``gallery-add --model_dir D [--batch_size N] [--chunk_size N] FOLDER`` adds the images of FOLDER's class
subfolders to the gallery of the predictor in D and saves it, with a progress bar; killed, it resumes
where it stopped when run again (triplet_keras.serving.gallery_folder). It prints the number of items added
and the gallery size; a folder or model directory it cannot use prints one error line, status 2.

The Keras backend is ``KERAS_BACKEND``, or when that is unset the fastest one measured for the device
(:func:`triplet_keras.backend_choice.choose_backend`, called by :func:`cli`, the function behind every
command).
"""
import argparse
import os
import sys

from triplet_keras.backend_choice import choose_backend


def _predict(args):
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"image file not found: {missing[0]!r}"
                                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    from triplet_keras.serving.predict import Predictor

    predictor = Predictor.load(args.model_dir, batch_size=args.batch_size)
    if args.lookup is not None and predictor.gallery is None:
        raise LookupError(f"{args.model_dir!r} holds no gallery to look up")
    embeddings = predictor.embed(args.images)
    names = predictor.predict_embeddings(embeddings, reject_unknown=not args.no_unknown)
    columns = [[path, name] for path, name in zip(args.images, names)]
    if args.proba:
        for row, probabilities in zip(columns, predictor.predict_proba_embeddings(embeddings)):
            row.append(f"{probabilities.max():.4f}")
    if args.lookup is not None:
        found = predictor.lookup_embeddings(embeddings, min(args.lookup, len(predictor.gallery.ids)))
        for row, labels, ids, distances in zip(columns, *found):
            row += [f"{i}\t{label}\t{distance:.4f}" for label, i, distance in zip(labels, ids, distances)]
    for row in columns:
        print("\t".join(row))
    return 0


def _gallery_add(args):
    from triplet_keras.serving.gallery_folder import add_folder_to_gallery

    added, size = add_folder_to_gallery(args.model_dir, args.folder, args.batch_size, args.chunk_size)
    print(f"added {added} images to the gallery of {args.model_dir}, which holds {size}")
    return 0


def positive_int(text):
    """argparse type: an integer >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _add_predict(commands):
    parser = commands.add_parser("predict", help="classify images with a saved Predictor",
                                 description="Print path<TAB>class for each image.")
    parser.add_argument("--model_dir", required=True, help="directory written by Predictor.save")
    parser.add_argument("--proba", action="store_true", help="also print the probability of the class")
    parser.add_argument("--lookup", type=positive_int, metavar="K",
                        help="also print the K nearest gallery items (id, label, distance)")
    parser.add_argument("--no-unknown", action="store_true",
                        help="always name a class, even for images the calibration would call unknown")
    parser.add_argument("--batch_size", type=int, default=64, help="images read and embedded at a time")
    parser.add_argument("images", nargs="+", help="image files")
    parser.set_defaults(run=_predict)


def _add_gallery_add(commands):
    parser = commands.add_parser("gallery-add", help="add a folder of images to a saved Predictor's gallery",
                                 description="Embed the images of FOLDER/<class>/... into the gallery of the "
                                             "predictor in --model_dir; run again after a kill to resume.")
    parser.add_argument("--model_dir", required=True, help="directory written by Predictor.save")
    parser.add_argument("--batch_size", type=positive_int, default=64, help="images embedded at a time")
    parser.add_argument("--chunk_size", type=positive_int, default=1024,
                        help="images read and saved as one resumable step")
    parser.add_argument("folder", help="folder of class subfolders named as the predictor's classes")
    parser.set_defaults(run=_gallery_add)


def _add_train(commands):
    from triplet_keras.pipeline.train_command import __doc__ as description
    from triplet_keras.pipeline.train_command import add_train_arguments, train_from_args

    parser = commands.add_parser("train", help="the end-to-end run (init.py): train, evaluate, transfer, report",
                                 description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.set_defaults(run=train_from_args)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m triplet_keras",
                                     description="Triplet-loss embeddings and few-shot classification.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train(commands)
    _add_predict(commands)
    _add_gallery_add(commands)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from triplet_keras.core.images import ImageReadError
    from triplet_keras.data.datasets import DatasetError
    from triplet_keras.serving.predict import PredictorFormatError

    try:
        return args.run(args)
    except (FileNotFoundError, NotADirectoryError, ImageReadError, PredictorFormatError, DatasetError,
            LookupError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def cli(argv=None):
    """The ``triplet-keras`` console script and ``python -m triplet_keras``: choose the Keras backend
    (before keras is imported), then run :func:`main`; its exit status."""
    choose_backend()
    return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
