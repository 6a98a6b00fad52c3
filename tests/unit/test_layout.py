"""tests/ mirrors the package: every module gpt2lab/<package>/<module>.py has its unit tests in
tests/unit/<package>/test_<module>.py (a package's __init__.py in test_init.py, when it holds code of its own rather
than imports), and everything under tests/e2e/ is marked slow, so `pytest -m "not slow"` is the unit tests alone (with
tests/cuda/, marked cuda, which skip without a GPU)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / "gpt2lab"
NO_UNIT_TESTS = {"__main__.py"}  # `python -m gpt2lab`: three lines, run by every end-to-end test


def holds_code(path: Path) -> bool:
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               for node in ast.parse(path.read_text(encoding="utf-8")).body)


def expected_test_files() -> dict[Path, Path]:
    """module -> its unit test file."""
    expected = {}
    for module in sorted(PACKAGE.rglob("*.py")):
        if module.name in NO_UNIT_TESTS or (module.name == "__init__.py" and not holds_code(module)):
            continue
        folder = TESTS / "unit" / module.parent.relative_to(PACKAGE)
        name = "test_init.py" if module.name == "__init__.py" else f"test_{module.name}"
        expected[module] = folder / name
    return expected


def test_every_module_has_its_unit_test_file_and_every_unit_test_file_its_module():
    expected = expected_test_files()
    assert len(expected) > 60  # the walk found the package
    missing = [str(test.relative_to(TESTS.parent)) for test in expected.values() if not test.is_file()]
    assert missing == [], "modules without their unit test file: " + ", ".join(missing)
    # the other way round: a unit test file names a module (the whole-package checks live at the top)
    whole_package = {TESTS / "unit" / name for name in ("test_import_cycles.py", "test_layout.py")}
    orphans = [str(path.relative_to(TESTS.parent)) for path in sorted((TESTS / "unit").rglob("test_*.py"))
               if path not in set(expected.values()) | whole_package]
    assert orphans == [], "unit test files that mirror no module: " + ", ".join(orphans)


def test_everything_under_e2e_is_marked_slow_everything_under_cuda_cuda_and_nothing_else():
    """tests/conftest.py marks each collected test by where it lives."""
    from tests import conftest

    class Item:
        def __init__(self, path):
            self.path, self.marks = path, []

        def add_marker(self, mark):
            self.marks.append(mark.name)

    items = [Item(TESTS / "e2e" / "test_train.py"), Item(TESTS / "unit" / "train" / "test_trainer.py"),
             Item(TESTS / "unit" / "test_layout.py"), Item(TESTS / "e2e" / "test_serve_api.py"),
             Item(TESTS / "cuda" / "test_cuda.py")]
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.marks for item in items] == [["slow"], [], [], ["slow"], ["cuda"]]
