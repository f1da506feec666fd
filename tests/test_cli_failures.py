"""`ranet` commands end a user's mistake with one `error:` line and exit 1 (2 for serve's settings), never
a traceback, and check what they can before the long work: the output path, the device, the port."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ranet_serve.cli import app
from ranet_serve.settings import Settings

runner = CliRunner()
CHECKPOINT = Path(__file__).resolve().parents[1] / "model_store" / "ranet-fmnist" / "1" / "checkpoint.pt"


class Planted:
    """A pickle that would create `marker` if it were ever unpickled with full pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def _fails_in_one_line(args: list[str], fragment: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (ValueError, OSError))
    assert result.output.startswith("error:") and fragment in " ".join(result.output.split()), result.output
    return result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--preset", "nosuch"], "unknown preset 'nosuch'"),
        (["train", "--epochs", "0"], "epochs: Input should be greater than or equal to 1"),
        (["train", "--device", "nosuch"], "unknown device 'nosuch'"),
        (["model-card", "{tmp}/nowhere"], "manifest.json: missing"),
        (["import", "{tmp}", "--config", "fmnist-default", "--out", "{tmp}/x.pt"], "is not a file"),
        (["flops", "{tmp}/config.json"], "is not JSON"),
    ],
)
def test_a_mistake_is_one_error_line_not_a_traceback(tmp_path: Path, args: list[str], fragment: str) -> None:
    (tmp_path / "config.json").write_text("{not json")
    filled = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if filled[0] == "train":
        filled += ["--out", str(tmp_path / "run"), "--max-train-images", "8"]
    _fails_in_one_line(filled, fragment)


def test_an_unwritable_out_fails_before_the_work_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    imported = ["import", str(CHECKPOINT), "--config", "fmnist-default", "--out"]
    _fails_in_one_line([*imported, str(blocker / "x.pt")], "File exists")
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    _fails_in_one_line([*imported, str(folder)], "Is a directory")
    assert {path.name for path in tmp_path.iterdir()} == {"a-file", "folder.pt"}  # no half-written .tmp
    # evaluate makes its --out first: a bundle that is not there is not even opened.
    _fails_in_one_line(
        ["evaluate", str(tmp_path / "nowhere"), "--out", str(blocker / "ev")], "Not a directory"
    )


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch notes the plain pickle
def test_a_pickle_with_code_is_refused_without_running_it_or_advising_unsafe_loading(tmp_path: Path) -> None:
    marker, planted = tmp_path / "ran", tmp_path / "planted.pt"
    planted.write_bytes(pickle.dumps({"state_dict": Planted(marker)}))
    args = ["import", str(planted), "--config", "fmnist-default", "--out", str(tmp_path / "x.pt")]
    output = _fails_in_one_line(args, "refused checkpoint")
    assert not marker.exists() and "weights_only" not in output


def test_export_over_a_bundle_names_the_option_that_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "store" / "m" / "1"
    out.mkdir(parents=True)
    (out / "something").write_text("")
    args = ["export", str(CHECKPOINT), "--config", "fmnist-default", "--out", str(out)]
    _fails_in_one_line(args, "--overwrite replaces it")


def test_serve_names_the_variable_or_option_a_bad_setting_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANET_WARMUP", "nope")
    from_env = runner.invoke(app, ["serve", "--model-store", str(tmp_path)])
    assert from_env.exit_code == 2 and "RANET_WARMUP:" in from_env.output
    assert "--warmup" not in from_env.output  # ranet serve has no such option
    monkeypatch.delenv("RANET_WARMUP")
    from_option = runner.invoke(app, ["serve", "--model-store", str(tmp_path), "--port", "99999"])
    assert from_option.exit_code == 2 and "--port:" in from_option.output
    monkeypatch.setenv("RANET_FRONTENDS", "2")
    both = runner.invoke(app, ["serve", "--model-store", str(tmp_path), "--one-process"])
    assert both.exit_code == 2
    assert "RANET_FRONTENDS=2 needs the engine in its own process" in " ".join(both.output.split())


def test_one_process_with_several_front_ends_is_refused() -> None:
    with pytest.raises(ValueError, match="must be 0 or 1"):
        Settings(engine_process=False, frontends=2)
    assert Settings(engine_process=False, frontends=1).frontends == 1
    assert Settings(engine_process=True, frontends=2).frontends == 2


@pytest.mark.parametrize("layout", ["--one-process", "--engine-process"])
def test_serve_on_a_taken_port_says_so_in_one_line(
    tiny_bundle_dir: Path, tmp_path: Path, layout: str
) -> None:
    store = tmp_path / "store"
    (store / "tiny").mkdir(parents=True)
    os.symlink(tiny_bundle_dir, store / "tiny" / "1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", layout, "--model-store", str(store), "--port", str(port), "--grpc-port", "0"]
        result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"cannot listen on 127.0.0.1 port {port} (Address already in use)" in result.output
