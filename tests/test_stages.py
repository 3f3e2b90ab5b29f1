"""The stage table: the only list of stages, the import graph it implies, declared config."""

import ast
from pathlib import Path

import pytest
import typer

from memgen.cli import app
from memgen.core.config import load_config
from memgen.core.errors import MemgenError
from memgen.pipeline import RUN_ORDER, SPECS, STAGES, declared, identity, upstream

PACKAGE = Path(__file__).parents[1] / "src" / "memgen"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every memgen module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("memgen"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("memgen"))
    return found


MODULES = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}
STAGE_MODULES = {spec.run.split(":")[0] for spec in STAGES}


def test_core_imports_only_core() -> None:
    for module, imported in MODULES.items():
        if module.startswith("memgen.core"):
            outside = {name for name in imported if not name.startswith("memgen.core")}
            assert not outside, f"{module} imports {outside}"


def test_no_module_imports_a_stage_module() -> None:
    """Stages hand data over through files and `core`'s readers, never through each other."""
    for module, imported in MODULES.items():
        if module in ("memgen.pipeline", "memgen.cli"):
            continue
        reached = imported & STAGE_MODULES - {module}
        assert not reached, f"{module} imports the stage module(s) {reached}"


def test_the_table_is_consistent_and_the_cli_comes_from_it() -> None:
    for spec in STAGES:
        assert all(read in SPECS for read in (*spec.reads, *spec.optional)), spec.name
        # A stage reads only stages before it in the table: the run order is a valid order.
        assert all(STAGES.index(SPECS[read]) < STAGES.index(spec) for read in spec.reads)
    commands = {command.name for command in typer.main.get_command(app).commands.values()}
    assert set(SPECS) <= commands
    assert tuple(spec.name for spec in STAGES if spec.in_run) == RUN_ORDER
    assert upstream("steer") == ("data", "train", "behave", "record", "neurons")


def test_a_stage_sees_only_the_config_it_declares() -> None:
    cfg = load_config()
    view = declared("specificity", cfg)
    assert view.steer.n_prompts == cfg.steer.n_prompts  # declared field by field
    assert view.behave == cfg.behave and view.train == cfg.train  # upstream sections
    with pytest.raises(MemgenError, match=r"'specificity' read steer.alphas"):
        _ = view.steer.alphas
    with pytest.raises(MemgenError, match=r"'neurons' read steer.draws"):
        _ = declared("neurons", cfg).steer.draws
    # The identity holds exactly the declared entries (and task, seed).
    assert set(identity("specificity", cfg)) == {"task", "seed", *SPECS["specificity"].config}
    changed = load_config(None, ["steer.alphas=[7]"])  # not read by specificity
    assert identity("specificity", changed) == identity("specificity", cfg)
    assert identity("steer", changed) != identity("steer", cfg)


def test_shared_files_are_named_only_where_core_reads_them() -> None:
    """No stage opens another's files by a string: the names live beside core's readers."""
    shared = ("test_outputs.jsonl", "pairs.jsonl", "scores.safetensors", "dev.jsonl")
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path).startswith("memgen.core"):
            continue
        literals = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        }
        assert not literals & set(shared), f"{path.name} names {literals & set(shared)}"
