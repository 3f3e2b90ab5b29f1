import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from memgen.core.config import load_config, parse_overrides, presets
from memgen.core.errors import MemgenError


def test_defaults_validate() -> None:
    cfg = load_config()
    assert cfg.task == "color"
    assert cfg.train.lora.r == 8


def test_overrides_are_parsed_as_yaml() -> None:
    cfg = load_config(None, ["train.lr=3e-4", "neurons.top_n=[0.01, 0.02]", "task=math"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.neurons.top_n == [0.01, 0.02]
    assert cfg.task == "math"
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["train.bogus=1"], "unknown key 'train.bogus'"),
        (["train.lr=fast"], "train.lr"),
        (["train.steps=-3"], "train.steps"),
        (["nosection"], "not key=value"),
        (["train=3"], "train"),
        (["steer.alphas=[1,2"], "not valid YAML"),
        (["seed=-1"], "seed"),
        (["neurons.top_n=[]"], "neurons.top_n"),
        (["neurons.top_n=[5]"], "neurons.top_n"),  # 5 meant as 5%
        (["neurons.top_n=[0.05,0.050000001]"], "twice"),
        (["behave.target_flips=10"], "above target_flips"),
        (["train.patience=0"], "train.patience"),
    ],
)
def test_bad_overrides_name_the_key(overrides: list[str], fragment: str) -> None:
    with pytest.raises(MemgenError, match=fragment) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_a_bad_override_over_a_good_file_names_the_override(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  steps: 50\n")
    with pytest.raises(MemgenError, match=r"^override 'ablate.n_prompts=-1': ") as info:
        load_config(path, ["train.lr=0.01", "ablate.n_prompts=-1"])
    assert "run.yaml" not in str(info.value)
    path.write_text("train:\n  steps: -5\n")  # the file's own mistake names the file
    with pytest.raises(MemgenError, match=r"run\.yaml: .*train\.steps"):
        load_config(path, ["train.lr=0.01"])


def test_yaml_file_and_override_precedence(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\ntrain:\n  steps: 50\n  lr: 0.01\n")
    cfg = load_config(path, ["train.steps=7"])
    assert (cfg.seed, cfg.train.steps, cfg.train.lr) == (3, 7, 0.01)


def test_bad_yaml_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(MemgenError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(MemgenError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(MemgenError, match="mapping"):
        load_config(listing)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00train")
    with pytest.raises(MemgenError, match="not UTF-8"):
        load_config(binary)


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(Exception, match="frozen"):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parents[1].glob("src/memgen/configs/*.yaml"))
)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    if path.name == "color-default.yaml":
        assert cfg == load_config()  # the default run, written out


def test_presets_load_by_name_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the packaged copy answers
    assert load_config(Path("gpt2-cipher-cpu")).task == "cipher"
    assert load_config(Path("configs/gpt2-math-cpu.yaml")).task == "math"
    assert load_config("gpt2-math-cpu") == load_config(Path("gpt2-math-cpu"))  # str too
    with pytest.raises(MemgenError, match="gpt2-cipher-cpu"):  # the fix lists the presets
        load_config(Path("gpt2-ciper-cpu"))


@pytest.mark.slow  # builds the wheel with pip
def test_the_wheel_ships_every_preset(tmp_path: Path) -> None:
    root = Path(__file__).parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(root), "-w", str(tmp_path)],
                   check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("memgen-*.whl")
    shipped = {Path(n).stem for n in zipfile.ZipFile(wheel).namelist() if "/configs/" in n}
    assert shipped == set(presets()) and "gpt2-cipher-cpu" in shipped


def _alias_bomb(levels: int = 9) -> str:
    """One line of YAML whose aliases multiply nine-fold a level: 9**10 values from 400 bytes."""
    rows = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels + 1):
        rows.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "[" + ", ".join(rows) + "]"


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(f"steer:\n  alphas: {_alias_bomb()}\n")
    with pytest.raises(MemgenError, match="more than 100,000 values") as info:
        load_config(bomb)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(MemgenError, match="more than 100,000 values"):
        load_config(None, [f"steer.alphas={_alias_bomb()}"])
