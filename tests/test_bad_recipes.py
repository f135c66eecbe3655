"""The corpus of bad recipes in tests/bad_recipes/: each must fail with its exact first error line.

Each file's first line is ``# expect: <first line of the error>`` (``{version}``
stands for the kernel version). The recipe is run through the real command
(``python -m tailor config FILE``) against the real kernel tree: it must exit
non-zero, print the expected line, no traceback, and create no output.
"""

from pathlib import Path

import pytest

CORPUS = sorted((Path(__file__).parent / "bad_recipes").glob("*.yaml"))


def expected_line(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return first[len("# expect: "):]


def test_corpus_is_big_enough():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_recipe_fails_clearly(path, run_tailor, ktree, linux_tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "src").symlink_to(linux_tree.parent.parent)  # share the unpacked kernel source
    proc = run_tailor("config", str(path.relative_to(path.parents[2])), env={"TAILOR_OUT": str(out)})
    want = expected_line(path).format(version=ktree.version)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines and lines[0] == f"tailor: error: {want}", proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "config").exists(), "a failing recipe must not create outputs"
