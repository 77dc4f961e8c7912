"""What the stages of pipeline.run share: the error that stops a run before it trains, and the
progress line each stage prints."""
import time


class PipelineError(ValueError):
    """The run cannot start as configured; raised before any training."""


def start_clock():
    """Count the seconds that ``stage`` prints from now on (each run restarts the clock)."""
    STARTED["at"], STARTED["cpu"] = time.perf_counter(), time.process_time()


def elapsed_seconds():
    """Seconds since start_clock."""
    return time.perf_counter() - STARTED.setdefault("at", time.perf_counter())


def elapsed_cpu_seconds():
    """CPU seconds of this process, all its threads, since start_clock: what the run cost, however
    loaded the machine was."""
    return time.process_time() - STARTED.setdefault("cpu", time.process_time())


def stage(text):
    """Print the stage and the seconds since start_clock (else since the first stage)."""
    print(f"==> {text} [{elapsed_seconds():.0f} s]", flush=True)


STARTED = {}
