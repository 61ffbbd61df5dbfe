"""The `resumable-scheduler` command: inspect (table, --json, --plot, errors)
and demo."""

import json
import os
import subprocess
import sys

import keras
import pytest

import resumable_scheduler as rs
from resumable_scheduler import cli, demo, plot

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RS_KERAS = os.path.join(ROOT, "fixtures", "rs_v1", "e12.keras")
RS_H5 = os.path.join(ROOT, "fixtures", "rs_v1", "e12.weights.h5")
STOCK_KERAS = os.path.join(ROOT, "fixtures", "stock_keras_3_15", "e12.keras")


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("path", [RS_KERAS, RS_H5])
def test_inspect_prints_a_table(path, capsys):
    code, out, err = run(["inspect", path], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert f"checkpoint             {path}" in lines
    assert "next epoch             12" in lines
    assert "batch                  0" in lines
    assert "optimizer step         60" in lines
    assert "learning rate          0.008187308" in lines
    assert "initial learning rate  0.01" in lines
    assert "epoch  learning rate" in lines
    assert "    0  0.01" in lines
    assert "   10  0.009048374" in lines
    assert "   11  0.008187308" in lines
    assert not any(line.startswith("   12  ") for line in lines)  # 12 epochs: 0..11
    assert "other callbacks        (none)" in lines


def test_inspect_json_is_the_read_state_dict(capsys):
    code, out, err = run(["inspect", RS_KERAS, "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data.pop("goodput") == rs.goodput(RS_KERAS)  # no timeline in v1: empty
    assert data == json.loads(json.dumps(rs.read_state(RS_KERAS)))
    assert (data["epoch"], data["batch"], data["step"]) == (12, 0, 60)
    assert len(data["history"]) == 12
    assert set(data["callbacks"]) == {"LearningRateScheduler"}


def test_inspect_plot_writes_a_png(tmp_path, capsys):
    png = tmp_path / "lr.png"
    code, out, err = run(["inspect", RS_KERAS, "--plot", str(png)], capsys)
    assert code == 0, err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
    assert f"plot written to {png}" in out


def test_inspect_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    png = tmp_path / "lr.png"
    code, out, err = run(["inspect", RS_KERAS, "--plot", str(png)], capsys)
    assert code == 2
    assert err == (
        "resumable-scheduler inspect: error: matplotlib is not installed: "
        "pip install 'resumable-scheduler[plot]'\n"
    )
    assert not png.exists()


def test_inspect_missing_path_exits_2_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "nope.keras")
    code, out, err = run(["inspect", missing], capsys)
    assert code == 2
    assert out == ""
    assert err == (
        f"resumable-scheduler inspect: error: cannot inspect {missing!r}: "
        f"No checkpoint at path={missing!r}: it does not exist.\n"
    )


def test_inspect_a_stock_checkpoint_says_there_is_no_state(capsys):
    code, out, err = run(["inspect", STOCK_KERAS], capsys)
    assert code == 2
    assert err.startswith(f"resumable-scheduler inspect: error: cannot inspect {STOCK_KERAS!r}: No resumable_scheduler state")
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["garbage.keras", "garbage.weights.h5", "notes.txt"])
def test_inspect_an_unreadable_file_exits_2(tmp_path, name, capsys):
    path = tmp_path / name
    path.write_bytes(b"not a checkpoint")
    code, out, err = run(["inspect", str(path)], capsys)
    assert code == 2
    assert err.startswith(f"resumable-scheduler inspect: error: cannot inspect {str(path)!r}: ")
    assert err.count("\n") == 1


def test_inspect_a_stock_backup_dir(tmp_path, capsys):
    class StopAt3(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                raise KeyboardInterrupt

    backup = str(tmp_path / "backup")
    model = demo.build_model()
    x, y = demo.data()
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, epochs=15, batch_size=1, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq="epoch"), rs.LearningRateScheduler(demo.schedule), StopAt3()])
    code, out, err = run(["inspect", backup], capsys)
    assert code == 0, err
    assert "next epoch             3" in out.splitlines()
    assert "optimizer step         15" in out.splitlines()


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "usage: resumable-scheduler" in capsys.readouterr().err


def test_demo_subcommand_passes(tmp_path, capsys):
    # The default: 3 SIGKILLs at random batches of a child saving with
    # rs.BackupAndRestore(save_freq=1), shuffled; seed 3 kills after batches
    # 17, 31 and 70 of 75 (epoch 3 batch 2, epoch 6 batch 1, epoch 14 batch 0).
    code, out, err = run(["demo", "--seed", "3", "--workdir", str(tmp_path)], capsys)
    assert code == 0, out + err
    lines = out.splitlines()
    assert "weights match bit for bit: True" in lines
    assert any(line.startswith("uninterrupted:       learning rate 0.00607, iterations 75") for line in lines)
    assert any(line.startswith("killed and resumed:  learning rate 0.00607, iterations 75 (3 SIGKILL, 4 runs)") for line in lines)
    assert any("rs.BackupAndRestore(save_freq=1)" in line for line in lines)
    kills = [line for line in lines if line.startswith("[2/2] child run ") and ": killed at epoch " in line]
    assert [k.split(": killed at ")[1].split(" + ")[0] for k in kills] == [
        "epoch 3, batch 2", "epoch 6, batch 1", "epoch 14, batch 0"]
    assert all("checkpoint at epoch " in k for k in kills)
    assert lines[-1].startswith("OK in ")


def test_demo_kills_at_random_batches_and_resumes_bit_for_bit(tmp_path):
    result = demo.run_demo(seed=2, kills=3, workdir=str(tmp_path), out=None)
    # Seed 2 kills after batches 8, 11 and 12: mid-epoch, not at epoch ends.
    assert result["killed_after"] == [8, 11, 12]
    assert result["killed_at"] == [(1, 3), (2, 1), (2, 2)]
    assert result["runs"] == 4
    for at, saved in zip(result["killed_at"], result["checkpoints"]):
        # Saves are written in the background: when the child reports a
        # batch, its own write may be in flight, but the previous batch's is
        # committed (each save waits for the write before it). The kill
        # lands a few ms later, so the checkpoint is at most one batch behind
        # what was reported.
        assert saved is not None
        n = demo.BATCHES_PER_EPOCH
        assert saved[0] * n + saved[1] >= at[0] * n + at[1] - 1
    assert result["resumed"] == result["reference"]
    assert round(result["resumed"]["learning_rate"], 5) == 0.00607
    assert result["resumed"]["iterations"] == 75
    assert result["weights_equal"] is True
    assert result["ok"] is True


def _env(**changes):
    env = dict(os.environ)
    env.update(changes)
    return env


def test_console_script_inspect(capsys):
    script = os.path.join(os.path.dirname(sys.executable), "resumable-scheduler")
    assert os.path.exists(script), "the console script is not installed: pip install -e ."
    proc = subprocess.run([script, "inspect", RS_H5, "--json"], capture_output=True, text=True,
                          env=_env(KERAS_BACKEND="jax"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epoch"] == 12


def test_console_script_works_without_keras_backend_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)  # no keras.json: Keras's own default applies
    proc = subprocess.run([sys.executable, "-m", "resumable_scheduler.cli", "inspect", RS_H5, "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["epoch"] == 12


def test_table_and_plot_of_a_multi_optimizer_state(tmp_path):
    state = {
        "source": "multi.keras", "version": 1, "epoch": 2, "batch": 0, "step": 10,
        "learning_rate": 0.02, "initial_learning_rate": 0.02, "history": [0.02, 0.02],
        "optimizer_learning_rates": [0.02, 0.01],
        "optimizer_histories": [[0.02, 0.02], [0.01, 0.005]],
        "callbacks": {"LearningRateScheduler": {}, "ReduceLROnPlateau": {"wait": 1, "best": 0.5}},
    }
    lines = cli.format_table(state).splitlines()
    assert "optimizer learning rates  0.02, 0.01" in lines
    assert "epoch  learning rate  optimizer 0  optimizer 1" in lines
    assert "    1  0.02           0.02         0.005" in lines
    assert "  ReduceLROnPlateau: best, wait" in lines
    png = tmp_path / "multi.png"
    plot.plot_history(state, str(png))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_demo_rejects_an_impossible_number_of_kills(capsys):
    code, out, err = run(["demo", "--kills", "75"], capsys)
    assert code == 2
    assert err == (
        "resumable-scheduler demo: error: Invalid value for argument `kills`. "
        "Received: kills=75. Expected an integer from 0 to 74.\n"
    )
    with pytest.raises(ValueError, match="Expected an integer from 0 to 14"):
        demo.run_demo(kills=15, backup="stock", out=None)
    with pytest.raises(ValueError, match="Invalid value for argument `backup`"):
        demo.run_demo(backup="orbax", out=None)


RS_BACKUP = os.path.join(ROOT, "fixtures", "rs_v1_backup")


@pytest.mark.parametrize("path, what", [
    (RS_KERAS, "a .keras file"),
    (RS_H5, "a .weights.h5 file"),
    (RS_BACKUP, "a backup directory"),
])
def test_inspect_step_on_a_checkpoint_without_steps_is_an_error(path, what, capsys):
    code, out, err = run(["inspect", path, "--step", "3"], capsys)
    assert code == 2
    assert out == ""
    assert err == (
        f"resumable-scheduler inspect: error: cannot inspect {path!r}: --step 3 applies only "
        f"to an Orbax checkpoint directory; this is {what}, which has no steps.\n"
    )
    with pytest.raises(ValueError, match=(
        rf"^Invalid value for argument `step`\. Received: step=3, but '.*' is {what}, which "
        r"holds one state: only Orbax directories have steps\.$"
    )):
        rs.read_state(path, step=3)


# -- goodput ------------------------------------------------------------------------------------

NO_TIMELINE = ("goodput                      no timeline recorded (checkpoint written before "
               "timelines, or without a resumable fit)")


def png_data(path):
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text["resumable_scheduler"])


@pytest.fixture(scope="module")
def interrupted_file(tmp_path_factory):
    from resumable_scheduler.timeline import Timeline
    from tests.unit.test_goodput import interrupted_run, save_with_timeline

    return save_with_timeline(tmp_path_factory.mktemp("cli_gp") / "run.weights.h5", Timeline(interrupted_run()).to_json())


@pytest.mark.parametrize("path", [RS_KERAS, RS_H5, RS_BACKUP])
def test_inspect_a_v1_checkpoint_says_no_timeline_was_recorded(path, tmp_path, capsys):
    png = tmp_path / "v1.png"
    code, out, err = run(["inspect", path, "--plot", str(png)], capsys)
    assert code == 0, err
    assert NO_TIMELINE in out.splitlines()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_data(png) == {"resume_epochs": [], "segments": [], "steps_per_epoch": 5}


def test_inspect_prints_the_goodput_summary(interrupted_file, capsys):
    code, out, err = run(["inspect", interrupted_file], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert "next epoch             3" in lines  # the table comes first
    summary = lines[lines.index("goodput"):]
    assert summary == [
        "goodput",
        "wall time                    100.0 s",
        "productive training          66.5 s (66.5%), 75 steps",
        "start-up                     2.0 s",
        "lost to restarts             5.0 s",
        "work lost before kills       <= 5.5 s",
        "blocked in saves             2.0 s",
        "downtime                     19.0 s",
        "interruptions                4 (killed 3, signal 1, exception 0)",
        "  killed     epoch 3, batch 2, step 17",
        "  killed     epoch 6, batch 1, step 31",
        "  signal     epoch 9, batch 0, step 45",
        "  killed     epoch 14, batch 0, step 70",
        "redone steps                 0 (stock Keras would have retrained 3)",
    ]


def test_inspect_json_has_the_goodput_report(interrupted_file, capsys):
    code, out, err = run(["inspect", interrupted_file, "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["goodput"] == json.loads(json.dumps(rs.goodput(interrupted_file)))
    assert [i["cause"] for i in data["goodput"]["interruptions"]] == ["killed", "killed", "signal", "killed"]
    assert data["goodput"]["productive_steps"] == 75


def test_inspect_plot_marks_each_resume_and_draws_the_timeline(interrupted_file, tmp_path, capsys):
    png = tmp_path / "run.png"
    code, out, err = run(["inspect", interrupted_file, "--plot", str(png)], capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = png_data(png)
    # 5 batches per epoch (the saved positions say so): resumed at epoch 3
    # batch 2, epoch 6 batch 1, then epochs 9 and 14 at their start.
    assert data["steps_per_epoch"] == 5
    assert data["resume_epochs"] == pytest.approx([3.4, 6.2, 9.0, 14.0])
    segs = data["segments"]
    assert [s["cause"] for s in segs] == ["killed", "killed", "signal", "killed", "finished"]
    assert [s["start"] for s in segs] == pytest.approx([0.0, 25.0, 45.0, 70.0, 95.0])
    for s in segs:
        parts = s["restart"] + s["training"] + s["blocked"] + s["lost"] + s["downtime"]
        assert parts == pytest.approx(s["next_start"] - s["start"])
    assert sum(s["blocked"] for s in segs) == pytest.approx(2.0)
    assert sum(s["lost"] for s in segs) == pytest.approx(5.5)
    assert segs[-1]["next_start"] == pytest.approx(100.0)  # the wall time


def test_resume_markers_without_known_batches_per_epoch_are_at_the_epoch(tmp_path):
    report = {"resumes": [{"epoch": 3, "batch": 2, "step": 99, "at": 1.0}], "spans": []}
    state = {"history": [0.1] * 4, "epoch": 4, "batch": 0, "step": 20}  # 5 per epoch here, not at the resume
    png = tmp_path / "x.png"
    plot.plot_history(state, str(png), report)
    assert png_data(png)["resume_epochs"] == [3]
    assert png_data(png)["steps_per_epoch"] is None


def test_inspect_a_crafted_timeline_exits_2_naming_the_field(tmp_path, capsys):
    from tests.unit.test_goodput import save_with_timeline

    path = save_with_timeline(tmp_path / "bad.weights.h5", {"segments": [{}, {"started": -5}]}, epochs=1)
    code, out, err = run(["inspect", path], capsys)
    assert code == 2
    assert out == ""
    assert err == (
        f"resumable-scheduler inspect: error: cannot inspect {path!r}: Invalid value for field "
        f"`timeline.segments[1].started` in {path!r}. Received: started=-5. Expected a finite number "
        "of seconds >= 0.\n"
    )
