"""LoRA on a pretrained model: the real data and train stages on tiny random models of five
families saved as local folders; the adapter, its reload, the frozen base, and bad input."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from conftest import Exited, build_tiny
from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.core.examples import read_jsonl
from memgen.core.generation import generate
from memgen.core.modeling import load_trained, unwrap
from memgen.pipeline import run_all, run_stage
from memgen.tasks import make_task
from memgen.tasks.tokenizer import build_tokenizer
from memgen.train.stage import build_model

TINY = [
    "data.n_train=64", "data.n_test=12", "data.n_dev=12", "train.steps=3",
    "train.eval_every=3", "train.batch_size=8", "train.warmup_steps=1", "train.lr=0.02",
    "train.max_other=1.0", "device=cpu",
]  # fmt: skip


def _tiny(family: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> PreTrainedModel:
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return build_tiny(family, seed=seed, token_ids=ids)


def _save_base(family: str, folder: Path, seed: int = 0) -> Path:
    tokenizer = build_tokenizer(make_task("color").tokenizer_spec())
    _tiny(family, tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral", "gpt_neox"])
def test_lora_training_saves_an_adapter_that_reloads_exactly(family: str, tmp_path: Path) -> None:
    base_dir = _save_base(family, tmp_path / "base")
    base_weights = load_file(base_dir / "model.safetensors")
    run = tmp_path / "run"
    cfg = load_config(None, [f"train.model={base_dir}", *TINY])
    run_stage("data", run, cfg)
    stage = run_stage("train", run, cfg)

    adapter = stage.path / "model"
    files = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json"}
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)
    # LoRA's B starts at zero: a non-zero B means the adapter was trained and saved.
    assert any(t.abs().sum() > 0 for name, t in saved.items() if "lora_B" in name)
    # Only adapter weights were trainable, so the base stayed frozen.
    trainable = load_file(stage.path / "checkpoints" / "last" / "trainable.safetensors")
    assert trainable and all("lora_" in name for name in trainable)
    base_config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(base_config["base_model_name_or_path"]) == base_dir.resolve()

    loaded, tokenizer = load_trained(adapter)
    for name, tensor in unwrap(loaded).state_dict().items():
        plain = name.replace(".base_layer", "")
        if "lora_" not in name and plain in base_weights:
            assert torch.equal(tensor, base_weights[plain]), name

    # The trained model as it was in memory: the same base and LoRA wrapping, with the
    # trainable weights of the last step (the only evaluation, so the kept one).
    task = make_task("color")
    examples = read_jsonl(run / "data" / "test.jsonl")
    trained, _ = build_model(cfg, task, examples, torch.device("cpu"))
    trained.load_state_dict(trainable, strict=False)
    prompts = [ex.prompt for ex in examples]
    ids = tokenizer(prompts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**ids).logits, trained.eval()(**ids).logits)
    expected = generate(trained, tokenizer, prompts, max_new_tokens=3)
    assert generate(loaded, tokenizer, prompts, max_new_tokens=3) == expected


def test_loss_on_sequence_trains_too(tmp_path: Path) -> None:
    base_dir = _save_base("llama", tmp_path / "base")
    cfg = load_config(None, [f"train.model={base_dir}", "train.loss_on=sequence", *TINY])
    run_stage("data", tmp_path / "run", cfg)
    stage = run_stage("train", tmp_path / "run", cfg)
    history = json.loads((stage.path / "history.json").read_text())
    assert history[-1]["step"] == 3 and history[-1]["loss"] > 0
    assert (stage.path / "model" / "adapter_model.safetensors").is_file()


def test_rebuilding_the_base_reruns_training(tmp_path: Path) -> None:
    base_dir = _save_base("llama", tmp_path / "base")
    cfg = load_config(None, [f"train.model={base_dir}", *TINY])
    run_stage("data", tmp_path / "run", cfg)
    stage = run_stage("train", tmp_path / "run", cfg)
    first = stage.manifest()["created"], stage.manifest_path.stat().st_mtime_ns
    run_stage("train", tmp_path / "run", cfg)  # unchanged base: skipped
    assert (stage.manifest()["created"], stage.manifest_path.stat().st_mtime_ns) == first
    _save_base("llama", base_dir, seed=1)
    run_stage("train", tmp_path / "run", cfg)
    assert stage.manifest_path.stat().st_mtime_ns != first[1]


def test_a_base_that_no_longer_loads_keeps_the_finished_training(tmp_path: Path) -> None:
    base_dir = _save_base("llama", tmp_path / "base")
    cfg = load_config(None, [f"train.model={base_dir}", *TINY])
    run_stage("data", tmp_path / "run", cfg)
    stage = run_stage("train", tmp_path / "run", cfg)
    before = stage.manifest()
    weights = base_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])  # the base changed: training would re-run
    with pytest.raises(MemgenError):
        run_stage("train", tmp_path / "run", cfg)
    assert stage.manifest() == before  # the finished training stands, adapter and all
    assert (stage.path / "model" / "adapter_model.safetensors").is_file()


def test_a_run_that_fails_on_another_base_keeps_the_folder_s_config(tmp_path: Path) -> None:
    run_dir, base = tmp_path / "run", _save_base("llama", tmp_path / "a")
    run_all(run_dir, load_config(None, [f"train.model={base}", *TINY]), until="train")
    other = _save_base("llama", tmp_path / "b")
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])  # passes the preflight, fails to load
    kept = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(MemgenError):
        run_all(run_dir, load_config(None, [f"train.model={other}", *TINY]), until="train")
    # data was skipped, train failed: config.yaml still describes what the folder holds
    assert (run_dir / "config.yaml").read_bytes() == kept


def test_remote_code_is_not_run_by_default(tmp_path: Path) -> None:
    base_dir = _save_base("llama", tmp_path / "base")
    marker = tmp_path / "remote_code_ran"
    # A model folder that asks for its own code, which would leave a marker if imported.
    (base_dir / "custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig as CustomConfig\n"
        "from transformers import LlamaForCausalLM as CustomModel\n"
    )
    config = json.loads((base_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig",
                          "AutoModelForCausalLM": "custom.CustomModel"}  # fmt: skip
    (base_dir / "config.json").write_text(json.dumps(config))
    cfg = load_config(None, [f"train.model={base_dir}", *TINY])
    assert cfg.train.trust_remote_code is False
    model, _ = build_model(cfg, make_task("color"), [], torch.device("cpu"))
    assert type(unwrap(model)) is LlamaForCausalLM
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "no_config", "truncated_weights"])
def test_a_bad_model_path_is_a_one_line_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "models" / "nothing"
    if kind == "no_config":
        path.mkdir(parents=True)
    if kind == "truncated_weights":
        _save_base("llama", path)
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:64])
    cfg = load_config(None, [f"train.model={path}", *TINY])
    run_stage("data", tmp_path / "run", cfg)
    with pytest.raises(MemgenError) as info:
        run_stage("train", tmp_path / "run", cfg)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not (tmp_path / "run" / "train" / "manifest.json").exists()


@pytest.fixture
def hub_out_of_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub answering every question as an unreachable one does (no network in tests)."""
    from huggingface_hub import HfApi

    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)


@pytest.mark.usefixtures("hub_out_of_reach")
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no model folder at"),
        ("no_config", "holds no config.json"),
        ("hub", "cannot fetch model 'memgen-tests/no-such-model'"),
        ("malformed", "cannot fetch model 'Org/Model 0.5B'"),
    ],
)
def test_a_bad_model_source_is_refused_before_any_work(
    kind: str, message: str, tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    source = {"hub": "memgen-tests/no-such-model", "malformed": "Org/Model 0.5B"}.get(kind)
    if source is None:
        path = tmp_path / "models" / "nothing"
        if kind == "no_config":
            path.mkdir(parents=True)
        source = str(path)
    run_dir = tmp_path / "run"
    done = memgen_cli("run", "--run-dir", run_dir, f"train.model={source}", *TINY)
    assert done.returncode == 2 and len(done.errors) == 1, done.stderr
    assert message in done.errors[0]
    assert not run_dir.exists()  # no data made, no config written, no empty train/


@pytest.mark.usefixtures("hub_out_of_reach")
def test_commands_that_do_not_train_do_not_ask_the_hub(
    tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    run_dir = tmp_path / "run"
    done = memgen_cli("data", "--run-dir", run_dir, "train.model=memgen-tests/no-such-model", *TINY)
    assert done.returncode == 0, done.stderr
    assert (run_dir / "data" / "manifest.json").is_file()


@pytest.mark.usefixtures("hub_out_of_reach")
def test_a_finished_run_given_an_unreachable_hub_model_is_left_as_it_was(
    tmp_path: Path, memgen_cli: Callable[..., Exited]
) -> None:
    run_dir = tmp_path / "run"
    assert memgen_cli("run", "--run-dir", run_dir, "--until", "train", *TINY).returncode == 0
    files = (run_dir / "config.yaml", run_dir / "train" / "manifest.json")
    kept = {p: p.read_bytes() for p in files}
    done = memgen_cli("run", "--run-dir", run_dir, "--until", "train",
                      "train.model=memgen-tests/no-such-model", *TINY)  # fmt: skip
    assert done.returncode == 2 and len(done.errors) == 1, done.stderr
    assert "cannot fetch model" in done.errors[0]
    assert {p: p.read_bytes() for p in kept} == kept  # config and training untouched


def test_a_corrupt_adapter_config_is_a_one_line_error(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(MemgenError, match="not valid JSON"):
        load_trained(folder)


def test_device_map_places_the_base_and_trains_through_it(tmp_path: Path) -> None:
    """`train.device_map` loads the base with transformers' placement (all on the CPU
    here; over the GPUs where there are several, untested without them) and trains and
    reloads through it."""
    base_dir = _save_base("llama", tmp_path / "base")
    cfg = load_config(
        None, [f"train.model={base_dir}", "train.device_map=auto", "train.dtype=float32", *TINY]
    )
    run_stage("data", tmp_path / "run", cfg)
    stage = run_stage("train", tmp_path / "run", cfg)
    assert (stage.path / "model" / "adapter_model.safetensors").is_file()
    # With no GPU, "auto" keeps every weight on the CPU (no map is recorded then).
    loaded, _ = load_trained(stage.path / "model", device_map="auto")
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    with pytest.raises(MemgenError, match="device_map places a pretrained model"):
        load_config(None, ["train.device_map=auto"])


def test_mixed_precision_trains_in_bf16_autocast(tmp_path: Path) -> None:
    base_dir = _save_base("gpt2", tmp_path / "base")
    cfg = load_config(
        None,
        [f"train.model={base_dir}", "train.mixed_precision=bf16", "train.dtype=float32", *TINY],
    )
    run_stage("data", tmp_path / "run", cfg)
    stage = run_stage("train", tmp_path / "run", cfg)
    history = json.loads((stage.path / "history.json").read_text())
    assert history[-1]["step"] == 3 and 0 < history[-1]["loss"] < float("inf")
    saved = load_file(stage.path / "model" / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 for t in saved.values())  # weights stay float32
