"""Passes are declared as data (compressor/passes/passes.def, one line per pass; each pass's schema
beside its implementation). From that one list come the registry, `lathe passes`, the docs' option
tables (docs/passes.md, which must equal `lathe passes --markdown`) and this check that every pass
is run by some test."""
import re
import subprocess
from pathlib import Path

import pytest


def declared_passes(source_dir: Path) -> list:
    """Pass names of passes.def, in order (LATHE_PASS(drop_experts) is the pass "drop-experts")."""
    text = (source_dir / "compressor/passes/passes.def").read_text()
    return [m.replace("_", "-") for m in re.findall(r"^LATHE_PASS\((\w+)\)", text, re.M)]


def listed_passes(lathe_bin: Path) -> list:
    out = subprocess.run([str(lathe_bin), "passes"], capture_output=True, text=True, check=True).stdout
    return re.findall(r"^(\S+)  — ", out, re.M)


def test_the_registry_is_the_list_file(lathe_bin, source_dir):
    declared = declared_passes(source_dir)
    assert len(declared) >= 11
    assert listed_passes(lathe_bin) == declared


def test_docs_option_tables_are_generated_from_the_schemas(lathe_bin, source_dir):
    generated = subprocess.run([str(lathe_bin), "passes", "--markdown"], capture_output=True, text=True,
                               check=True).stdout
    committed = (source_dir / "docs/passes.md").read_text()
    assert committed == generated, ("docs/passes.md is stale: regenerate it with "
                                    "`build/lathe passes --markdown > docs/passes.md`")
    for name in declared_passes(source_dir):
        assert f"\n## `{name}`\n" in generated
    # One table row per option, with the schema's default.
    assert "| `group-size` | int | `128` | an integer in [-1, 1048576] |" in generated
    assert "| `act-order` | enum | `static` | one of none, static, dynamic |" in generated


# How a test runs a pass: a recipe key (`- gptq:` / `{gptq: ...}`), a pipeline string
# (`gptq{bits=4}`), `--set passes.gptq.…`, or a PassInstance / find_pass by name in C++.
def run_patterns(name: str) -> list:
    n = re.escape(name)
    return [rf"(^|[\s\[{{,-]){n}:\s", rf"(^|[^\w-]){n}\{{", rf"passes\.{n}\.", rf"\"{n}\"\s*[,}})]",
            rf"'{n}'\s*[,}})\]:]", rf"\b{n}:\s*\{{"]


def test_every_pass_is_run_by_a_test(source_dir):
    files = [p for p in (source_dir / "tests/python").glob("test_*.py") if p.name != "test_passes_doc.py"]
    files += list((source_dir / "tests/unit").glob("*.cpp"))
    texts = {p.name: p.read_text(errors="replace") for p in files}
    missing = []
    for name in declared_passes(source_dir):
        patterns = [re.compile(p, re.M) for p in run_patterns(name)]
        users = [f for f, t in texts.items() if any(p.search(t) for p in patterns)]
        if not users:
            missing.append(name)
    assert not missing, f"passes no test runs: {missing}"


@pytest.mark.parametrize("text,found", [("  - gptq: {bits: 4}\n", True), ("gptq{bits=4}", True),
                                         ("--set passes.gptq.bits=3", True), ('{"gptq", opts}', True),
                                         ("the gptq pass", False), ("gptq_pass.cpp", False)])
def test_the_run_patterns_find_uses_not_mentions(text, found):
    assert any(re.search(p, text, re.M) for p in run_patterns("gptq")) == found
