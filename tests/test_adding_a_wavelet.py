"""README.md's "Adding a wavelet" is complete: the catalogue is the only list of wavelets, every
kernel refuses a code it has no branch for, and a sixth wavelet added by touching exactly the
listed files passes the suite's own tests for it, on both backends.

The sixth wavelet is the Gaussian psi(z) = exp(-z^2/2), dpsi = -z exp(-z^2/2). It is written
into a copy of the package and of the tests (the listed files only) and the copy's tests run in
a subprocess: if any other file had to know about it (a list of codes, a branch elsewhere),
they fail. With the kernels' file left out, the kernels refuse it when they compile.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import layer_inputs

from wavkan import WAVELETS, get_wavelet
from wavkan.wavelets import CATALOGUE, Wavelet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "wavkan"

# The files README.md's "Adding a wavelet" lists (besides README.md itself), and what goes into
# each for the throwaway wavelet: (file, anchor, text inserted before the anchor's every match).
NAME = "gaussian"
EDITS = {
    "src/wavkan/wavelets.py": [
        ("def _hamming_window(", '''def _gaussian(z, need_dpsi):
    e = torch.exp(-0.5 * (z * z))
    return e, (-(z * e) if need_dpsi else None)


'''),
        ('        Wavelet("shannon", 4, _shannon, window=_hamming_window),\n',
         '        Wavelet("shannon", 4, _shannon, window=_hamming_window),\n'
         '        Wavelet("gaussian", 5, _gaussian, gaussian=True, fold=(GAUSS_K, 1.0), fold_bwd=(GAUSS_K, 1.0, -1.0 / GAUSS_K)),\n'),
    ],
    "src/wavkan/kernels/device.py": [
        ("\nPI = tl.constexpr(", '\nGAUSSIAN = tl.constexpr(get_wavelet("gaussian").code)\n'),
        # One branch in each dispatch: psi at zs = k z; (psi, dpsi / (-1/k)) = (e, zs e).
        ("    else:\n        return _unknown_wavelet(WAVELET)\n\n\n@triton.jit\ndef wavelet_psi_dpsi_folded",
         "    elif WAVELET == GAUSSIAN:\n        return tl.exp2(zs * -zs)\n"),
        ("    else:\n        return _unknown_wavelet(WAVELET)\n\n\n@triton.jit\ndef wavelet_grad_terms",
         "    elif WAVELET == GAUSSIAN:\n        e = tl.exp2(zs * -zs)\n        return e, zs * e\n"),
    ],
    "tests/oracle.py": [
        ("    raise ValueError(name)", '    if name == "gaussian":\n        return torch.exp(-(z**2) / 2)\n'),
    ],
}


def _readme_list() -> set:
    """The files README.md's "Adding a wavelet" lists: each numbered item's first path."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Adding a wavelet", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\d+\. .*?`((?:src|tests)/[\w/]+\.py)`", section, flags=re.MULTILINE))


def test_readme_lists_these_files():
    listed = _readme_list()
    assert listed == set(EDITS), listed


def _wavelet_name_lists(path: Path) -> list:
    """Container literals in a module's code (not its docstrings) naming two or more wavelets."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            names = {i.value for i in items if isinstance(i, ast.Constant) and i.value in WAVELETS}
            if len(names) >= 2:
                found.append((path.name, node.lineno, sorted(names)))
    return found


def test_the_catalogue_is_the_only_list_of_wavelets():
    offenders = [hit for path in PACKAGE.rglob("*.py") if path.name != "wavelets.py" for hit in _wavelet_name_lists(path)]
    assert not offenders, offenders
    codes = [w.code for w in CATALOGUE]
    assert sorted(codes) == list(range(len(codes))), codes


def _bogus() -> Wavelet:
    # A catalogue-like entry whose code no device function knows.
    return Wavelet("bogus", 99, get_wavelet("dog").psi_dpsi, gaussian=True)


@pytest.mark.parametrize("kernel", ["fwd", "bwd_dx", "bwd_dparams"])
def test_every_kernel_refuses_an_unknown_code(kernel, kernel_device):
    """No default branch: a code without a device function fails when the kernel compiles
    (tl.static_assert), instead of computing some other wavelet."""
    from wavkan.kernels import wavkan_bwd_dparams, wavkan_bwd_dx, wavkan_fwd

    x, s, t, w = layer_inputs(3, 4, 2, torch.float32, kernel_device)
    g = torch.randn(3, 2, device=kernel_device)
    call = {
        "fwd": lambda: wavkan_fwd(x, s, t, w, _bogus()),
        "bwd_dx": lambda: wavkan_bwd_dx(g, x, s, t, w, _bogus()),
        "bwd_dparams": lambda: wavkan_bwd_dparams(g, x, s, t, w, _bogus()),
    }[kernel]
    with pytest.raises(Exception) as raised:
        call()
    # The interpreter raises the assertion itself; a compile wraps it (CompilationError causes).
    messages, error = [], raised.value
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("no device function for this wavelet code" in m for m in messages), messages


def _copy_with_edits(tmp_path: Path, files) -> Path:
    """A copy of src/ and tests/ with the throwaway wavelet written into ``files``."""
    for part in ("src", "tests"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for rel in files:
        path = tmp_path / rel
        text = path.read_text()
        for anchor, inserted in EDITS[rel]:
            assert anchor in text, (rel, anchor)
            text = text.replace(anchor, inserted + anchor)
        path.write_text(text)
    return tmp_path


def _run(root: Path, *args, timeout=240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root / "src"), TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_sixth_wavelet_needs_exactly_the_listed_files(tmp_path):
    root = _copy_with_edits(tmp_path / "all", EDITS)
    # The suite's own tests, selected for the new wavelet: the catalogue against its oracle
    # formula, the reference against the per-edge loop and gradcheck, the kernels (every pass,
    # fp32 and fp16, leading dims, strided) against the reference, and the fuzz cases.
    selection = [
        "tests/test_wavelets.py", "tests/test_reference.py", "tests/test_kernels.py", "tests/test_fuzz.py",
        "-k", f"{NAME} and not gpu and not large_translation", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
    ]
    done = _run(root, "-m", "pytest", *selection)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 25 and "failed" not in summary, summary
    # Without the kernels' file the catalogue entry alone is refused when a kernel compiles.
    partial = _copy_with_edits(tmp_path / "partial", [f for f in EDITS if not f.endswith("device.py")])
    code = ("import torch; from wavkan import wavkan_linear; x = torch.randn(2, 3); p = torch.ones(2, 3);"
            f"wavkan_linear(x, p, p * 0, p, {NAME!r}, backend='triton')")
    refused = _run(partial, "-c", code)
    assert refused.returncode != 0 and "no device function for this wavelet code" in refused.stderr, refused.stderr[-2000:]
