"""Every CUDA source of scratchlm.kernels.cuda compiles with nvcc and defines the kernels that ops.py loads.

Runs where nvcc is installed (CI has it), with or without a GPU: the sources are
compiled to PTX, warnings count as errors, and the PTX must hold each
``<name>_f32`` / ``<name>_f64`` entry point that ``scratchlm/kernels/cuda/ops.py`` asks for.
"""

import importlib.resources
import re
import shutil
import subprocess

import pytest

KERNELS = importlib.resources.files("scratchlm.kernels.cuda")
SOURCES = sorted(p.name for p in KERNELS.iterdir() if p.name.endswith(".cu"))
NVCC = shutil.which("nvcc")


def loaded_by_gpu_module():
    """{source name: kernel names} from the ``_kernel("<module>", "<name>", ...)`` calls in ops.py."""
    wanted = {}
    for module, name in re.findall(r'_kernel\("(\w+)", "(\w+)"', KERNELS.joinpath("ops.py").read_text()):
        wanted.setdefault(f"{module}.cu", set()).add(name)
    return wanted


def test_every_kernel_ops_py_loads_has_a_source():
    wanted = loaded_by_gpu_module()
    assert wanted and set(wanted) <= set(SOURCES)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("name", SOURCES)
def test_cuda_source_compiles(name, tmp_path):
    ptx = tmp_path / f"{name}.ptx"
    with importlib.resources.as_file(KERNELS.joinpath(name)) as source:
        result = subprocess.run(
            [NVCC, "--ptx", "-std=c++14", "--Werror", "all-warnings", "-o", str(ptx), str(source)],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 0, result.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    for kernel in loaded_by_gpu_module().get(name, ()):
        assert {f"{kernel}_f32", f"{kernel}_f64"} <= entries, entries


# -- the Transformer's kernels (issue 15) ------------------------------------------------------------------

TRANSFORMER_SOURCES = ["attention.cu", "layernorm.cu", "feedforward.cu"]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("name", TRANSFORMER_SOURCES)
def test_transformer_kernels_assemble_for_a_real_gpu_without_spills(name, tmp_path):
    """Past PTX: ptxas for sm_80 (A100), with register spills and local-memory use as errors (the backward
    attention kernels keep 4 entries of a row per thread in registers)."""
    cubin = tmp_path / f"{name}.cubin"
    with importlib.resources.as_file(KERNELS.joinpath(name)) as source:
        result = subprocess.run(
            [
                NVCC,
                "--cubin",
                "-arch=sm_80",
                "-std=c++14",
                "--Werror",
                "all-warnings",
                "-Xptxas",
                "-warn-spills,-warn-lmem-usage",
                "-o",
                str(cubin),
                str(source),
            ],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 0 and "spill" not in result.stderr, result.stderr


def test_gpu_module_offers_every_operation_of_the_cpu_one():
    """kernels/cuda/ops.py defines every name of kernels/numba/ops.py's __all__ (read from the sources: CuPy need
    not be installed), so a layer that finds a fused op on the NumPy backend finds it on CuPy too."""
    import ast

    def top_level(package):
        return ast.parse(importlib.resources.files(package).joinpath("ops.py").read_text()).body

    cpu_all = next(
        ast.literal_eval(node.value)
        for node in top_level("scratchlm.kernels.numba")
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
    )
    gpu_defs = {node.name for node in top_level("scratchlm.kernels.cuda") if isinstance(node, ast.FunctionDef)}
    assert set(cpu_all) <= gpu_defs, sorted(set(cpu_all) - gpu_defs)
