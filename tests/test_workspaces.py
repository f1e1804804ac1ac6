"""Private workspaces: what one visitor makes, no other can see, stop, download or delete; the teacher sees all."""

from __future__ import annotations

import shutil

import pytest

import tlcore.engines
from tlcore import runs, workspaces

from test_app_pages import FakeJob, FakeManager, sidebar_text, texts

TEACHER_KEY = "correct horse battery staple"


@pytest.fixture
def space(tmp_path, monkeypatch):
    """Private workspaces (the default) in folders of this test, with a teacher key set."""
    monkeypatch.setenv("TLCORE_WORKSPACES", "on")
    monkeypatch.setenv("TLCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TLCORE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("TLCORE_TEACHER_KEY", TEACHER_KEY)
    return tmp_path


def visitor(page=None, token=None, job=None):
    """A browser tab: a new visitor, or one whose address holds `token` (and `job`)."""
    from streamlit.testing.v1 import AppTest

    from test_app_pages import ROOT, TIMEOUT

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if token:
        at.query_params["ws"] = token
    if job:
        at.query_params["job"] = job
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def token_of(at) -> str:
    return at.session_state["workspace_token"]


def give_run(token: str, trained_run, space) -> str:
    """Copies a finished run into the workspace of `token`; returns its name."""
    target = workspaces.Workspace.open(token, space / "runs").runs_dir / trained_run.name
    shutil.copytree(trained_run, target)
    return target.name


def test_a_new_visitor_gets_a_new_workspace_and_its_token_stays_in_the_address(space):
    first, second = visitor(), visitor()
    assert workspaces.valid_token(token_of(first)) and token_of(first) != token_of(second)
    assert token_of(first) in str(first.query_params.get("ws"))
    first.switch_page("pages/runs.py").run()
    assert token_of(first) in str(first.query_params["ws"]), "a page switch keeps the workspace in the address"


def test_a_token_that_is_not_one_of_ours_opens_a_new_workspace(space):
    at = visitor(token="../../etc/passwd")
    assert token_of(at) != "../../etc/passwd" and workspaces.valid_token(token_of(at))


def test_another_workspace_cannot_see_open_or_delete_a_run(space, trained_run):
    owner = visitor()
    name = give_run(token_of(owner), trained_run, space)
    owner.switch_page("pages/runs.py").run()
    assert name in " ".join(str(frame.value) for frame in owner.dataframe), "the owner sees the run"

    stranger = visitor("runs")
    assert not stranger.dataframe or name not in " ".join(str(f.value) for f in stranger.dataframe)
    for page in ("predict", "evaluate"):
        stranger.switch_page(f"pages/{page}.py").run()
        assert not stranger.exception
        assert any("no trained model yet" in text for text in texts(stranger.info)), page
    # Knowing the run's name grants nothing: the Train page does not show it.
    peeking = visitor("train", job=name)
    assert not [b for b in peeking.button if "Download" in b.label]
    assert not any("Training finished" in text for text in texts(peeking.success))
    assert (space / "runs" / "workspaces").is_dir() and runs.Run(
        workspaces.Workspace.open(token_of(owner), space / "runs").runs_dir / name).has_model


def test_a_running_training_of_another_workspace_is_not_theirs_to_follow_or_stop(space, monkeypatch):
    owner = visitor()
    folder = workspaces.Workspace.open(token_of(owner), space / "runs").runs_dir / "20260101-000000-theirs"
    folder.mkdir(parents=True)
    fake = FakeManager(FakeJob(folder, status=runs.RUNNING, epoch=1, epochs=5, phase="training"))
    monkeypatch.setattr(tlcore.engines, "engine", lambda: fake)
    stranger = visitor("train", job=folder.name)
    assert stranger.session_state["job_id"] is None, "a job id alone makes nobody its owner"
    assert not [b for b in stranger.button if b.label == "Stop training"]
    assert "Nothing training now" in sidebar_text(stranger)
    same = visitor("train", token=token_of(owner))
    assert same.session_state["job_id"] == folder.name, "the workspace's other tab follows it"
    assert [b for b in same.button if b.label == "Stop training"]


def test_a_new_tab_of_a_workspace_keeps_its_dataset_and_model(space):
    first = visitor()
    first.button[0].click().run()  # the default sample
    assert not first.exception
    name = first.session_state["dataset_name"]
    first.switch_page("pages/model.py").run()
    first.number_input(key="keep.input_size").set_value(128).run()
    assert first.session_state["model_config"].input_size == 128
    again = visitor(token=token_of(first))
    assert again.session_state["dataset_name"] == name
    assert again.session_state["model_config"].input_size == 128
    assert "dataset_name" not in visitor().session_state, "a new visitor starts with nothing chosen"


def test_the_teacher_sees_every_workspace_and_publishes_a_dataset(space, trained_run):
    students = [visitor(), visitor()]
    names = [give_run(token_of(at), trained_run, space) for at in students]
    teacher = visitor("class")
    teacher.text_input[0].set_value("not the key")
    teacher.button[0].click().run()
    assert any("not the teacher key" in text for text in texts(teacher.error))
    assert not teacher.dataframe, "no leaderboard without the key"
    teacher.text_input[0].set_value(TEACHER_KEY)
    teacher.button[0].click().run()
    board = teacher.dataframe[0].value
    assert len(board) == 2 and list(board["run"]) == names
    labels = {f"workspace {workspaces.Workspace.open(token_of(at), space / 'runs').key[:6]}" for at in students}
    assert set(board["workspace"]) == labels
    assert not any(token_of(at) in str(board.to_dict()) for at in students), "tokens are never shown"

    teacher.switch_page("pages/data.py").run()
    teacher.button[0].click().run()  # the default sample becomes the teacher's dataset
    teacher.switch_page("pages/class.py").run()
    [publish] = [b for b in teacher.button if b.label == "Publish it to the class"]
    publish.click().run()
    student = visitor()
    [use] = [b for b in student.button if b.label == "Use the teacher's dataset"]
    use.click().run()
    assert student.session_state["dataset_source"] == teacher.session_state["dataset_source"]


def test_without_a_teacher_key_the_class_page_says_how_to_turn_it_on(space, monkeypatch):
    monkeypatch.delenv("TLCORE_TEACHER_KEY")
    at = visitor("class")
    assert "TLCORE_TEACHER_KEY" in at.info[0].value and not at.text_input
