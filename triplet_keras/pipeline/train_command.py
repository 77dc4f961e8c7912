"""End-to-end run: load data, fine-tune the encoder with triplet loss, evaluate, transfer, predict, report.

    triplet-keras train --model_dir experiments/digits
    triplet-keras train --model_dir experiments/my_photos --data_dir datasets/my_photos
    python init.py --model_dir experiments/cifar10          (the same, from a clone)

Parameters come from <model_dir>/params.json; any --key VALUE flag overrides one (values parse as
JSON: --epochs 5, --weights none, --source_classes '["cat", "dog"]'). The Keras backend is
KERAS_BACKEND, or when that is unset the fastest one installed as measured for the device (JAX on a
CPU and with an NVIDIA GPU; triplet_keras.backend_choice), printed in one line at start. A failure the
user can fix (bad parameters or data, missing weights offline, a diverged run, a full or read-only
disk) exits with one ``error:`` line; the files already in the model folder stay intact.
"""
import argparse
import errno
import sys

def add_train_arguments(parser):
    """The run's flags on ``parser``: --model_dir, --data_dir, --restart and one per parameter."""
    from triplet_keras.pipeline.params import add_param_flags

    parser.add_argument("--model_dir", required=True, help="experiment folder: params.json in, everything else out")
    parser.add_argument("--data_dir", help="a folder dataset (one subfolder per class); same as --dataset PATH")
    parser.add_argument("--restart", action="store_true", help="train anew instead of resuming from last.keras")
    add_param_flags(parser)


def train_from_args(args):
    """Run the pipeline as the parsed ``args`` say; 0 when it finished (SystemExit with the error line
    otherwise)."""
    from triplet_keras.pipeline.config import load_config
    from triplet_keras.pipeline.params import SCHEMA, ParamsError

    overrides = {key: value for key, value in vars(args).items() if key in SCHEMA}  # the flags given
    if args.data_dir:
        overrides["dataset"] = args.data_dir

    try:
        config = load_config(args.model_dir, overrides)
    except ParamsError as error:
        sys.exit(f"error: {error}")

    from triplet_keras.models.networks import WeightsUnavailableError
    from triplet_keras.pipeline.end_to_end import PipelineError, run
    from triplet_keras.pipeline.monitoring import TrainingDivergedError

    try:
        run(args.model_dir, config, restart=args.restart)
    except (PipelineError, WeightsUnavailableError, FileNotFoundError, TrainingDivergedError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # disk full, read-only or no permission: the files already there are intact
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        sys.exit(f"error: cannot write to the model folder {args.model_dir!r}: {error}")
    return 0


def main(argv=None):
    """init.py's entry: parse ``argv`` (the process's arguments by default) and run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    return train_from_args(parser.parse_args(argv))
