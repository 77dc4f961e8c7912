"""Write the README's result tables from the runs' metrics, so that no number in them is typed by hand.

    python benchmarks/readme_tables.py --main-job benchmarks/runs/main_job_metrics.json \
        --accuracy benchmarks/runs/accuracy_digits.json benchmarks/runs/accuracy_fashion_first_half.json \
        benchmarks/runs/accuracy_fashion_second_half.json benchmarks/runs/accuracy_glyphs.json

Each table sits in README.md between ``<!-- table: NAME -->`` and ``<!-- /table -->``: ``main-job`` from
the main job's metrics.json (init.py --model_dir experiments/digits), ``few-shot`` from the JSON files
bench_accuracy.py writes. Every table says on which machine its runs were measured. ``--check`` writes
nothing and exits 1 when README.md differs from what the runs give. The runs behind the README's
tables are kept in benchmarks/runs/ (copies of the files the runs wrote).
"""
import argparse
import json
import os
import re
import sys

import numpy as np

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
ROWS = ("pixels", "initial_encoder", "auto", "semi_supervised", "ceiling")
SEARCHED = ("auto", "semi_supervised")
BASELINES = ("pixels", "initial_encoder")


def machine_line(machine):
    return f"Measured on {machine['cpu']} ({machine['cores']} cores), Keras {machine['keras']} on {machine['backend']}."


def bold_if_won(value, rows, name):
    """The value as 0.xxx, bold when a searched row beat both baselines."""
    won = name in SEARCHED and value > max(rows[b]["mean"] for b in BASELINES)
    return f"**{value:.3f}**" if won else f"{value:.3f}"


def main_job_values(metrics):
    """{row label: [values]} of the main-job table (what the test compares with a run's metrics)."""
    values = {"source test accuracy (nearest class mean)": [metrics["scores"]["test_accuracy"]]}
    for shots, rows in metrics["transfer"].items():
        values[f"new classes, {shots}: " + " / ".join(ROWS)] = [rows[name]["mean"] for name in ROWS]
    values["saved transfer predictor on the held-out report part"] = [metrics["scores"]["transfer_accuracy"]]
    return values


def run_time(metrics):
    """The run's wall seconds, with its CPU seconds and the machine's load when the metrics have them."""
    text = f"{metrics['seconds']} s"
    if "cpu_seconds" in metrics:
        text += f", {metrics['cpu_seconds']} CPU s"
    load = metrics["machine"].get("load_average")
    if load is not None:
        text += f", load average {load:g} over the 15 minutes before it ended"
    return text


def main_job_table(metrics):
    lines = [machine_line(metrics["machine"]) + f" init.py took {run_time(metrics)} (a resumed run: less).", "",
             "| metric | value |", "|---|---|"]
    for label, values in main_job_values(metrics).items():
        if " / " in label:
            shots = label.split(": ")[0].split(", ")[1]
            rows = metrics["transfer"][shots]
            cells = " / ".join(bold_if_won(rows[name]["mean"], rows, name) for name in ROWS)
        else:
            cells = f"{values[0]:.3f}"
        lines.append(f"| {label} | {cells} |")
    lines.append(f"| saved transfer predictor's features | {metrics['saved_transfer_search']['best_name']} |")
    for name, report in metrics["calibration"].items():
        unseen = report.get("unseen_unknown_share")
        lines.append(f"| calibration of the {name} predictor (`init.py`, held-out images) | ECE {report['ece_after']:.3f} "
                     f"({report['ece_before']:.3f} before), {100 * report['accepted_share']:.1f}% accepted, "
                     f"{100 * report['accepted_accuracy']:.1f}% of those right"
                     + ("" if unseen is None else f", {100 * unseen:.1f}% of never-seen classes \"unknown\"") + " |")
    return "\n".join(lines)


def parse_main_job_table(text):
    """{row label: [values]} read back from README text (bold marks dropped)."""
    block = table_block(text, "main-job")
    values = {}
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and re.fullmatch(r"[\d.*/ ]+", cells[1]):
            values[cells[0]] = [float(v.strip("* ")) for v in cells[1].split("/")]
    return values


def few_shot_table(report):
    """One Markdown table per regime of a bench_accuracy.py report (every run it holds, so a report
    still being written gives the seeds done): means over seeds, the range of auto and
    semi_supervised, and their difference to the better baseline."""
    lines = [machine_line(report["machine"]) + f" {report['args']['episodes']} episodes per K; accuracy in %, "
             "[min-max] over the seeds."]
    for title, result in report["results"].items():
        runs = [run["transfer"] for run in result["runs"]]
        lines += ["", f"**{title}** ({len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
                  "| K | " + " | ".join(ROWS) + " | auto - best baseline | semi_supervised - best baseline |",
                  "|---" * (len(ROWS) + 3) + "|"]
        for shots in runs[0]:
            mean = {name: float(np.mean([run[shots][name]["mean"] for run in runs])) for name in ROWS}
            best = max(mean[name] for name in BASELINES)
            cells = []
            for name in ROWS:
                values = [run[shots][name]["mean"] for run in runs]
                spread = f" [{100 * min(values):.0f}-{100 * max(values):.0f}]" if name in SEARCHED else ""
                cells.append(f"{100 * mean[name]:.1f}{spread}")
            gains = [f"{100 * (mean[name] - best):+.1f}" for name in SEARCHED]
            lines.append(f"| {shots.split('-')[0]} | " + " | ".join(cells) + " | " + " | ".join(gains) + " |")
    return "\n".join(lines)


def table_block(text, name):
    match = re.search(rf"<!-- table: {re.escape(name)} -->\n(.*?)<!-- /table -->", text, re.S)
    if match is None:
        raise ValueError(f"README.md has no table {name!r} between <!-- table: {name} --> and <!-- /table -->")
    return match.group(1)


def replace_block(text, name, content):
    table_block(text, name)  # the markers must be there
    return re.sub(rf"(<!-- table: {re.escape(name)} -->\n).*?(<!-- /table -->)",
                  lambda match: match.group(1) + content + "\n" + match.group(2), text, flags=re.S)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main-job", help="metrics.json of init.py --model_dir experiments/digits")
    parser.add_argument("--accuracy", nargs="*", default=[], help="JSON files written by bench_accuracy.py")
    parser.add_argument("--readme", default=README)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when README.md differs")
    args = parser.parse_args(argv)
    with open(args.readme, encoding="utf-8") as file:
        text = original = file.read()
    if args.main_job:
        with open(args.main_job, encoding="utf-8") as file:
            text = replace_block(text, "main-job", main_job_table(json.load(file)))
    if args.accuracy:
        reports = []
        for path in args.accuracy:
            with open(path, encoding="utf-8") as file:
                reports.append(few_shot_table(json.load(file)))
        text = replace_block(text, "few-shot", "\n\n".join(reports))
    if args.check:
        print("README.md tables match the runs" if text == original else "README.md tables differ from the runs")
        return 0 if text == original else 1
    with open(args.readme, "w", encoding="utf-8") as file:
        file.write(text)
    print(f"wrote the tables into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
