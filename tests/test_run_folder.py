"""One run per folder: a new run into a folder holding a run is refused, --overwrite archives (or
deletes) the old run's files and the next --resume continues the new run only; the lock refuses a
second process naming the holder and is released when the holder dies."""
import json
import socket
import subprocess
import sys
import textwrap

import pytest
from test_trainer import Brightness, config, model

from progrpo_fast.train.checkpoint import CheckpointStore
from progrpo_fast.train.run import train
from progrpo_fast.train.run_folder import RunFolder, RunFolderError


def run(out_dir, iterations: int, **kwargs) -> dict:
    return train(config(out_dir, f"train.iterations={iterations}", "log.eval_prompts=0", "log.keep_last=2"),
                 model=model(), reward=Brightness(), **kwargs)


def logged(out_dir) -> list[int]:
    return [json.loads(line)["iteration"] for line in (out_dir / "log.jsonl").read_text().splitlines()]


def test_a_new_run_into_a_run_folder_is_refused_and_overwrite_archives_the_old_run(tmp_path, capsys):
    old = run(tmp_path, 3)
    old_files = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    with pytest.raises(RunFolderError, match=rf"holds run {old['run_id']} .*log\.jsonl.*--resume.*--overwrite .*previous-{old['run_id']}"):
        run(tmp_path, 2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == old_files  # untouched
    assert logged(tmp_path) == [0, 1, 2]

    new = run(tmp_path, 1, overwrite="archive")
    archive = tmp_path / f"previous-{old['run_id']}"
    assert f"--overwrite: moved run {old['run_id']}" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (archive / "checkpoints").iterdir()} == old_files
    assert logged(archive) == [0, 1, 2] and (archive / "summary.json").is_file() and (archive / "run.json").is_file()
    assert new["run_id"] != old["run_id"] and json.loads((tmp_path / "run.json").read_text())["run_id"] == new["run_id"]
    assert CheckpointStore(tmp_path / "checkpoints").steps() == [1]
    # the probe: --resume continues the new run (not the old run's iteration 3), each iteration logged once
    resumed = run(tmp_path, 2, resume=True)
    assert [h["iteration"] for h in resumed["history"]] == [1] and resumed["run_id"] == new["run_id"]
    assert logged(tmp_path) == [0, 1]

    run(tmp_path, 1, overwrite="delete")
    assert f"--overwrite=delete: removed run {new['run_id']}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("previous-")) == [archive.name]


def test_resume_and_overwrite_exclude_each_other_and_resume_needs_a_run_id(tmp_path):
    with pytest.raises(RunFolderError, match="give one of them"):
        RunFolder.claim(tmp_path, config(tmp_path), resume=True, overwrite="archive")
    (tmp_path / "log.jsonl").write_text("")  # a folder written before run ids
    with pytest.raises(RunFolderError, match=r"holds run files \(log\.jsonl\) but no run\.json.*--overwrite"):
        RunFolder.claim(tmp_path, config(tmp_path), resume=True)


HOLDER = textwrap.dedent("""
    import sys
    from progrpo_fast.train.config import load_config
    from progrpo_fast.train.run_folder import RunFolder
    folder = RunFolder.claim(sys.argv[1], load_config(None, [f"log.out_dir={sys.argv[1]}"]))
    print(folder.run_id, flush=True)
    sys.stdin.read()  # holds the lock until the test closes stdin or kills it
""")


def test_a_second_trainer_is_refused_naming_the_holder_until_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        run_id = holder.stdout.readline().strip()
        assert run_id, "the holder process did not claim the folder"
        with pytest.raises(RunFolderError, match=rf"in use by another trainer: pid {holder.pid} on host {socket.gethostname()} "):
            RunFolder.claim(tmp_path, config(tmp_path), resume=True)
    finally:
        holder.kill()  # kill -9: the OS releases its lock
        holder.communicate(timeout=60)
    folder = RunFolder.claim(tmp_path, config(tmp_path), resume=True)
    try:
        assert folder.run_id == run_id and folder.resumed
    finally:
        folder.close()
