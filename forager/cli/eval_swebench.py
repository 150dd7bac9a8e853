"""`forager eval swebench` and `forager eval grade`: SWE-bench evaluations, graded the official way."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from forager.cli import options as opts
from forager.cli import RuntimeChoice, console, fail, make_progress, table_console

if TYPE_CHECKING:
    from forager.core import Task
    from forager.eval.runs import Environments
    from forager.eval.swebench import InstanceResult

DATASET = typer.Option(..., "--dataset", help="verified, lite, full, gym, a hub name, or a local JSON/JSONL/Parquet file or dataset directory.")
REPOS = typer.Option(None, "--repos", help="Mirrors of the repositories (owner__name: bare repos, work trees or bundles): instance images are built offline.")
SPECS = typer.Option(None, "--specs", help="swebench specs: a JSON/YAML file {repo: {version: spec}}, or swebench 4's constants/python.py or wheel (default: the installed swebench's).")
REGISTRY = typer.Option(False, "--registry-images", help="Use the official instance images by their swebench names (pulled where a registry answers).")
IDS = typer.Option([], "--instance-ids", help="Only these instances; repeatable.")
FILTER = typer.Option(None, "--filter", help="Only instances whose id matches this regex.")
SLICE = typer.Option(None, "--slice", help="Only rows START:END of the dataset (after the other filters).")
SPLIT = typer.Option("test", help="Dataset split.")
TIMEOUT = typer.Option(1800.0, "--timeout", help="Seconds one instance's eval script may run.")


def grade_command(
    predictions: Path = typer.Argument(..., help="swebench predictions: JSONL, a JSON list, or a JSON object keyed by instance id."),
    dataset: str = DATASET, repos: Path | None = REPOS, specs: str | None = SPECS, registry_images: bool = REGISTRY,
    instance_ids: list[str] = IDS, filter: str | None = FILTER, window: str | None = SLICE, split: str = SPLIT,
    workers: int = typer.Option(2, "--workers", "-j", min=1, help="Instances graded at once."),
    out: Path = typer.Option(Path("eval-grade"), help="Directory for report.json, results.0.jsonl and the logs (the same command resumes)."),
    timeout: float = TIMEOUT,
) -> None:
    """Grade a predictions file made anywhere, as swebench's run_evaluation does, in images built offline or pulled."""
    from forager.eval.predictions import make_report, read_predictions, write_report
    from forager.eval.runs import Environments, load_instances

    rows = load_instances(dataset, split=split, instance_ids=instance_ids, pattern=filter, window=window)
    preds = read_predictions(predictions)
    predicted = {str(p["instance_id"]) for p in preds}
    envs = Environments(registry=registry_images, repos=repos, specs=specs, workers=workers, dataset=dataset)
    tasks, errors = _environments([row for row in rows if row["instance_id"] in predicted], envs)
    results = _grade(tasks, preds, out, 0, workers, errors, timeout)
    report = make_report([row["instance_id"] for row in rows], preds, results)
    path = write_report(out / "report.json", report)
    show_report(report, results)
    console.print(f"report: [bold]{path}[/]  (logs in {out / 'logs' / '0'})")


def swebench_command(
    dataset: str = DATASET, repos: Path | None = REPOS, specs: str | None = SPECS, registry_images: bool = REGISTRY,
    instance_ids: list[str] = IDS, filter: str | None = FILTER, window: str | None = SLICE, split: str = SPLIT,
    samples: int = opts.SAMPLES,
    workers: int = typer.Option(4, "--workers", "-j", min=1, help="Episodes (and gradings) at once."),
    out: Path = typer.Option(Path("eval-swebench"), help="Directory for the trajectories, predictions, reports and summary (the same command resumes)."),
    policy: str | None = opts.POLICY,
    model: str | None = opts.MODEL,
    base_url: str | None = opts.BASE_URL,
    api_key: str | None = opts.API_KEY,
    temperature: float | None = opts.TEMPERATURE,
    policy_option: list[str] = opts.POLICY_OPTION,
    config: Path | None = opts.CONFIG,
    prompts: str | None = opts.PROMPTS,
    max_turns: int | None = opts.MAX_TURNS,
    ray_address: str | None = opts.RAY_ADDRESS,
    tts: int = typer.Option(0, "--tts", min=0, help="Test-time scaling: N candidates and N generated reproduction tests per instance; the candidate passing most is submitted (reported beside pass@1)."),
    timeout: float = TIMEOUT,
    allow_mixed: bool = opts.ALLOW_MIXED,
) -> None:
    """Run the ForagerAgent K times per SWE-bench instance, write swebench predictions, grade them officially, report."""
    from forager.agent.config import CollectConfig
    from forager.cli.collect import _policy_spec, agent_settings, run_collection
    from forager.eval.runs import Environments, load_instances

    spec = _policy_spec(policy, model, base_url, api_key, temperature, None, policy_option)
    agent = agent_settings(config, prompts, spec, max_turns=max_turns)
    rows = load_instances(dataset, split=split, instance_ids=instance_ids, pattern=filter, window=window)
    if not rows:
        fail(f"no instances in {dataset} with these filters")
    envs = Environments(registry=registry_images, repos=repos, specs=specs, workers=min(workers, 2), dataset=dataset)
    tasks, errors = _environments(rows, envs)
    samples = max(samples, tts)
    if tasks:
        console.print(f"evaluating {len(tasks)} instance(s) x {samples} sample(s) with the {spec.name} policy -> {out}")
        run_collection(list(tasks.values()), out, spec, agent, CollectConfig(
            samples_per_task=samples, workers=workers, runtime=RuntimeChoice.docker.value, ray_address=ray_address,
            warm_pool=min(workers, 4)), dataset, allow_mixed)
    if tasks and tts:
        from forager.eval.tts import TESTGEN_ENV

        console.print(f"test-time scaling: {tts} reproduction test(s) per instance from {TESTGEN_ENV} -> {out / 'tts-tests'}")
        run_collection(list(tasks.values()), out / "tts-tests", spec, agent, CollectConfig(
            samples_per_task=tts, workers=workers, runtime=RuntimeChoice.docker.value, ray_address=ray_address,
            warm_pool=min(workers, 4), env_id=TESTGEN_ENV), dataset, allow_mixed)
    _grade_samples(rows, tasks, errors, out, samples, workers, timeout, _model_name(spec), dataset, tts)


def _environments(rows: list[dict[str, Any]], envs: Environments) -> tuple[dict[str, Task], dict[str, str]]:
    """The instances' Tasks with images (built with a progress line each), and the errors of those without."""
    from forager.eval.runs import instance_tasks

    with make_progress() as progress:
        bar = progress.add_task("environments", total=len(rows), detail="")

        def on_build(instance_id: str, stage: str) -> None:
            progress.update(bar, advance=1 if stage in ("done", "cached", "failed") else 0, detail=f"{instance_id}: {stage}")

        tasks, errors = instance_tasks(rows, envs, on_build)
        progress.update(bar, completed=len(rows))
    for instance_id, error in sorted(errors.items()):
        console.print(f"[red]{instance_id}[/]: {error}")
    return tasks, errors


def _grade(tasks: dict[str, Task], preds: list[dict[str, Any]], out: Path, sample: int, workers: int,
           errors: dict[str, str], timeout: float) -> list[InstanceResult]:
    from forager.eval.runs import grade_predictions

    out.mkdir(parents=True, exist_ok=True)
    with make_progress() as progress:
        bar = progress.add_task(f"grading {sample}", total=len(preds), detail="")
        return grade_predictions(tasks, preds, out, sample=sample, workers=workers, errors=errors, timeout=timeout,
                                 on_result=lambda r: progress.update(bar, advance=1, detail=f"{r.instance_id}: {r.status}"))


def _grade_samples(rows: list[dict[str, Any]], tasks: dict[str, Task], errors: dict[str, str], out: Path, samples: int,
                   workers: int, timeout: float, model_name: str, dataset: str, tts: int = 0) -> None:
    """Per sample index: the predictions file, its grading and report; then the summary over all of them."""
    from forager.cli.eval import show
    from forager.eval.predictions import make_report, write_predictions, write_report
    from forager.eval.summary import summarize, write_summary
    from forager.trajectories.store import read_trajectories

    trajectories = read_trajectories([out]) if (out / "trajectories.jsonl").is_file() else []
    ids = [row["instance_id"] for row in rows]
    official: dict[tuple[str, int], bool] = {}
    for k in range(samples):
        diffs = {t.task_id: t.diff for t in trajectories if t.sample == k}
        preds = [{"instance_id": i, "model_name_or_path": model_name, "model_patch": diffs.get(i)} for i in ids
                 if i in diffs or i in errors]
        write_predictions(out / f"predictions.{k}.jsonl", [p for p in preds if p["instance_id"] in diffs])
        results = _grade(tasks, preds, out, k, workers, errors, timeout)
        official.update({(r.instance_id, k): r.resolved for r in results})
        write_report(out / f"report.{k}.json", make_report(ids, preds, results))
        show_report(make_report(ids, preds, results), results, title=f"sample {k}")
    graded = [t.model_copy(update={"resolved": official.get((t.task_id, t.sample), False)}) for t in trajectories]
    run = {"command": ["forager", *sys.argv[1:]], "dataset": dataset, "instances": len(rows),
           "grading": "swebench eval script (forager.eval.swebench)"}
    if (out / "collection.json").is_file():  # the policy, the agent config and the collection's settings
        run["collection"] = json.loads((out / "collection.json").read_text())
    summary = summarize(graded, run)
    if tts:
        summary.test_time_scaling = _test_time_scaling(tasks, trajectories, official, ids, out, tts, workers, model_name)
    show(summary)
    console.print(f"summary: [bold]{write_summary(out, summary)}[/]; predictions.K.jsonl and report.K.json per sample")


def _test_time_scaling(tasks: dict[str, Task], trajectories: list[Any], official: dict[tuple[str, int], bool],
                       ids: list[str], out: Path, n: int, workers: int, model_name: str) -> dict[str, Any]:
    """Choose a candidate per instance (`forager.eval.tts`), write predictions.tts.jsonl and report.tts.json;
    the chosen candidates' verdicts are the official ones of their samples."""
    from forager.eval.predictions import make_report, write_predictions, write_report
    from forager.eval.swebench import InstanceResult
    from forager.eval.tts import select_all
    from forager.trajectories.store import read_trajectories

    candidates: dict[str, list[str]] = {}
    for t in sorted(trajectories, key=lambda t: t.sample):
        if t.sample < n:
            candidates.setdefault(t.task_id, []).append(t.diff)
    tests: dict[str, list[str]] = {}
    for t in read_trajectories([out / "tts-tests"]) if (out / "tts-tests" / "trajectories.jsonl").is_file() else []:
        tests.setdefault(t.task_id, []).append(t.diff)
    with make_progress() as progress:
        bar = progress.add_task("choosing", total=len(candidates), detail="")
        selections = select_all(tasks, candidates, tests, workers, on_selection=lambda s: progress.update(
            bar, advance=1, detail=f"{s.instance_id}: sample {s.chosen}, scores {s.scores}"))
    preds, results = [], []
    for s in selections:
        patch = candidates[s.instance_id][s.chosen] if s.chosen is not None else ""
        preds.append({"instance_id": s.instance_id, "model_name_or_path": f"{model_name}+tts{n}", "model_patch": patch})
        resolved = s.chosen is not None and official.get((s.instance_id, s.chosen), False)
        results.append(InstanceResult(s.instance_id, s.chosen or 0, status="resolved" if resolved else
                                      "unresolved" if s.chosen is not None else "empty_patch", resolved=bool(resolved)))
    write_predictions(out / "predictions.tts.jsonl", preds)
    report = write_report(out / "report.tts.json", make_report(ids, preds, results))
    rate = sum(r.resolved for r in results) / len(ids) if ids else 0.0
    console.print(f"test-time scaling ({n}): resolved {rate:.1%}; {report}")
    return {"n": n, "resolved_rate": rate, "selections": [vars(s) for s in selections]}


def _model_name(spec: Any) -> str:
    return str(spec.options.get("model") or spec.name)


def show_report(report: dict[str, Any], results: list[InstanceResult], title: str = "report") -> None:
    """swebench's counts, the per-instance errors, and whether swebench's own grading agreed."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("instances")
    table.add_column("count", justify="right")
    for key in ("total", "submitted", "completed", "resolved", "unresolved", "empty_patch", "error"):
        table.add_row(key.replace("_", " "), str(report[f"{key}_instances"]))
    judged = [r for r in results if r.swebench_resolved is not None and r.status in ("resolved", "unresolved")]
    if judged:
        table.add_row("swebench's get_eval_report agrees", f"{report['swebench_agrees']} of {len(judged)}")
    table_console().print(table)
    for instance_id, error in report["errors"].items():
        console.print(f"[red]{instance_id}[/]: {error.splitlines()[0][:300] if error else ''}")
