"""The SFT export: per-message loss weights, observation masking, filters, JSONL and Parquet that `datasets` loads."""

from __future__ import annotations

import json

import pytest

from forager.trajectories.store import TrajectoryFileError
from forager.trajectories.export import ExportError, ExportFilter, export_dataset, export_row, export_rows, message_weights
from forager.core import Trajectory, TrajectoryMessage


def episode(tid: str, turns: int = 3, resolved: bool = False, reward: float = 0.0, termination: str = "submitted",
            observation_role: str = "user", tokens: bool = False) -> Trajectory:
    """system, task prompt, then `turns` x (assistant action, observation), then a submit."""
    def toks(n: int, start: int) -> list[int] | None:
        return list(range(start, start + n)) if tokens else None

    messages = [TrajectoryMessage(role="system", content="You are an agent."),
                TrajectoryMessage(role="user", content=f"Fix {tid}.", token_ids=toks(5, 100))]
    for n in range(turns):
        messages.append(TrajectoryMessage(role="assistant", content=f"<tool: bash>\nls {n}\n</tool>", loss_mask=1,
                                          token_ids=toks(3, 200 + 10 * n), logprobs=[-0.1] * 3 if tokens else None,
                                          action={"name": "bash", "arguments": {"command": f"ls {n}"}}))
        messages.append(TrajectoryMessage(role=observation_role, content=f"file{n}.py",
                                          token_ids=toks(2, 300 + 10 * n)))
    messages.append(TrajectoryMessage(role="assistant", content="<tool: submit>\n</tool>", loss_mask=1,
                                      token_ids=toks(2, 400), logprobs=[-0.1] * 2 if tokens else None,
                                      action={"name": "submit", "arguments": {}}))
    return Trajectory(trajectory_id=f"{tid}#0", task_id=tid, repo="org/x", kind="mutate-fix", messages=messages,
                      resolved=resolved, reward=reward, termination=termination, num_turns=turns + 1)


def write(path, trajectories) -> None:
    path.write_text("".join(t.to_json() + "\n" for t in trajectories))


@pytest.mark.parametrize("observation_role", ["user", "tool"])
def test_assistant_turns_train_and_everything_else_is_masked_by_default(observation_role):
    row = export_row(episode("t-1", observation_role=observation_role))
    assert [(m["role"], m["weight"]) for m in row["messages"]] == [
        ("system", 0), ("user", 0),
        ("assistant", 1), (observation_role, 0), ("assistant", 1), (observation_role, 0),
        ("assistant", 1), (observation_role, 0), ("assistant", 1)]
    assert {k: row[k] for k in ("id", "task_id", "repo", "kind", "reward", "resolved", "termination")} == {
        "id": "t-1#0", "task_id": "t-1", "repo": "org/x", "kind": "mutate-fix", "reward": 0.0, "resolved": False,
        "termination": "submitted"}
    assert set(row["messages"][2]) == {"role", "content", "weight"}


def test_masked_share_of_observations_follows_the_option_and_the_seed():
    trajectories = [episode(f"t-{n}", turns=20) for n in range(100)]  # 2000 observations

    def masked_share(p: float, seed: int) -> tuple[float, list[list[int]]]:
        weights = [message_weights(t, mask_observations=p, seed=seed) for t in trajectories]
        observed = [w for t, ws in zip(trajectories, weights) for m, w in zip(t.messages, ws)
                    if m.role == "user" and m.content.startswith("file")]
        return 1 - sum(observed) / len(observed), weights

    share, first = masked_share(0.5, seed=1)
    assert share == pytest.approx(0.5, abs=0.04)
    assert masked_share(0.5, seed=1)[1] == first  # deterministic
    assert masked_share(0.5, seed=2)[1] != first
    assert masked_share(0.2, seed=1)[0] == pytest.approx(0.2, abs=0.04)
    assert masked_share(0.0, seed=1)[0] == 0.0 and masked_share(1.0, seed=1)[0] == 1.0
    for t, weights in zip(trajectories, first):  # prompts never train, actions always do
        assert weights[:2] == [0, 0]
        assert all(w == 1 for m, w in zip(t.messages, weights) if m.role == "assistant")
    # a row does not depend on which other trajectories are exported
    alone = export_rows(trajectories[7:8], mask_observations=0.5, seed=1)
    together = export_rows(trajectories, mask_observations=0.5, seed=1)
    assert alone[0] == together[7]
    with pytest.raises(ExportError, match="share"):
        message_weights(trajectories[0], mask_observations=1.5)


def test_filters():
    trajs = [episode("a", resolved=True, reward=1.0), episode("b", reward=-1.0, termination="out_of_turns"),
             episode("c", reward=0.5, termination="out_of_context")]
    trajs.append(Trajectory(trajectory_id="d#0", task_id="d", messages=trajs[0].messages[:2], termination="crashed"))
    ids = lambda f: [r["id"] for r in export_rows(trajs, filter=f)]  # noqa: E731
    assert ids(ExportFilter()) == ["a#0", "b#0", "c#0"]  # no assistant turn: nothing to learn
    assert ids(ExportFilter(resolved_only=True)) == ["a#0"]
    assert ids(ExportFilter(min_reward=0.5)) == ["a#0", "c#0"]
    assert ids(ExportFilter(terminations=frozenset({"out_of_turns", "out_of_context"}))) == ["b#0", "c#0"]
    with pytest.raises(ExportError, match="unknown termination"):
        ExportFilter(terminations=frozenset({"finished"}))


def test_jsonl_and_parquet_load_with_datasets_and_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    trajs = [episode("a", resolved=True, reward=1.0), episode("b", reward=-1.0), episode("c", termination="crashed")]
    trajs[1].messages[3].content = "unicode ✓ and </script> and \x00 nul"
    write(tmp_path / "trajectories.jsonl", trajs)
    result = export_dataset([tmp_path], tmp_path / "sft" / "data", mask_observations=0.5, seed=3,
                            filter=ExportFilter(terminations=frozenset({"submitted"})))
    assert result.rows == 2 and result.skipped == {"termination crashed": 1}
    assert [p.name for p in result.paths] == ["data.jsonl", "data.parquet"]
    assert result.observations_masked + result.observations_trained == 6
    expected = export_rows(trajs[:2], mask_observations=0.5, seed=3)

    cache = str(tmp_path / "hf-cache")
    from_json = datasets.load_dataset("json", data_files=str(result.paths[0]), cache_dir=cache)["train"]
    from_parquet = datasets.load_dataset("parquet", data_files=str(result.paths[1]), cache_dir=cache)["train"]
    assert list(from_json) == expected
    assert list(from_parquet) == expected
    assert [json.loads(line) for line in result.paths[0].read_text().splitlines()] == expected
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == ["data.jsonl", "data.parquet"]


def test_parquet_only_function_calls_and_tokens(tmp_path):
    datasets = pytest.importorskip("datasets")
    plain = episode("a", tokens=True)
    calls = episode("b", tokens=True, observation_role="tool")
    for n, message in enumerate(calls.messages):
        if message.role == "assistant":
            message.tool_calls = [{"id": f"call_{n}", "type": "function",
                                   "function": {"name": "bash", "arguments": json.dumps({"command": "ls"})}}]
        elif message.role == "tool":
            message.tool_call_id = f"call_{n - 1}"
    write(tmp_path / "t.jsonl", [plain, calls])
    result = export_dataset([tmp_path / "t.jsonl"], tmp_path / "out.parquet", formats=["parquet"], tokens=True)
    assert [p.name for p in result.paths] == ["out.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet", "t.jsonl"]  # no staging file left

    rows = list(datasets.load_dataset("parquet", data_files=str(result.paths[0]),
                                      cache_dir=str(tmp_path / "hf-cache"))["train"])
    for row, traj in zip(rows, (plain, calls)):
        ids, mask, _ = traj.token_sequence()
        assert row["input_ids"] == ids
        assert row["assistant_masks"] == mask  # default masking: the trajectory's own loss mask
    assert rows[0]["messages"][2]["tool_calls"] is None
    assert rows[1]["messages"][2]["tool_calls"][0]["function"] == {"name": "bash", "arguments": '{"command": "ls"}'}
    assert rows[1]["messages"][3]["tool_call_id"] == "call_2"


def test_tokens_need_token_ids_and_bad_lines_name_file_and_line(tmp_path):
    write(tmp_path / "t.jsonl", [episode("a")])
    with pytest.raises(ExportError, match=r"t\.jsonl:1: a#0: an assistant turn has no token ids"):
        export_dataset([tmp_path / "t.jsonl"], tmp_path / "out", tokens=True)
    assert not list(tmp_path.glob("out*"))
    (tmp_path / "t.jsonl").write_text(episode("a").to_json() + "\n" + '{"trajectory_id": 3}\n')
    with pytest.raises(TrajectoryFileError, match=r"t\.jsonl:2: not a trajectory"):
        export_dataset([tmp_path / "t.jsonl"], tmp_path / "out")
    with pytest.raises(ExportError, match="unknown format"):
        export_dataset([tmp_path / "t.jsonl"], tmp_path / "out", formats=["csv"])
