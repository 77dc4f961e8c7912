"""End-to-end run: load data, fine-tune the encoder with triplet loss, evaluate, transfer, predict, report.

    python init.py --model_dir experiments/digits
    python init.py --model_dir experiments/cifar10
    python init.py --model_dir experiments/my_photos --data_dir datasets/my_photos

Parameters come from <model_dir>/params.json; any --key VALUE flag overrides one (values parse as
JSON: --epochs 5, --weights none, --source_classes '["cat", "dog"]'). The Keras backend is
KERAS_BACKEND, or when that is unset the fastest one installed as measured for the device (JAX on a
CPU and with an NVIDIA GPU; triplet_keras.backend_choice), printed in one line at start.
"""
import argparse
import errno
import sys

from triplet_keras.backend_choice import choose_backend


def parse_args(argv=None):
    from triplet_keras.params import add_param_flags

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="experiment folder: params.json in, everything else out")
    parser.add_argument("--data_dir", help="a folder dataset (one subfolder per class); same as --dataset PATH")
    parser.add_argument("--restart", action="store_true", help="train anew instead of resuming from last.keras")
    add_param_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("model_dir", "data_dir", "restart")}
    if args.data_dir:
        overrides["dataset"] = args.data_dir

    from triplet_keras.params import ParamsError, load_params

    try:
        params = load_params(args.model_dir, overrides)
    except ParamsError as error:
        sys.exit(f"error: {error}")

    from triplet_keras.models import WeightsUnavailableError
    from triplet_keras.monitoring import TrainingDivergedError
    from triplet_keras.pipeline import PipelineError, run

    try:
        run(args.model_dir, params, restart=args.restart)
    except (PipelineError, WeightsUnavailableError, FileNotFoundError, TrainingDivergedError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # disk full, read-only or no permission: the files already there are intact
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        sys.exit(f"error: cannot write to the model folder {args.model_dir!r}: {error}")


if __name__ == "__main__":
    choose_backend()  # before keras is imported
    main()
