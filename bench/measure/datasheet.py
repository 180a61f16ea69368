"""Datasheet dense peaks of NVIDIA data-center GPUs, the denominator of `compute.mfu_datasheet`.

`compute.mfu` divides by the matmul peak measured on the node (bench.backends.matmul_peak_flops_per_s),
which on an H100 is about 0.8 of the datasheet's dense bf16 figure; published MFU figures divide by
the datasheet. Both are recorded.

Sources: the NVIDIA product datasheets (H100 Tensor Core GPU, H200 Tensor Core GPU, A100 Tensor Core
GPU, L4 Tensor Core GPU, L40S GPU), boost clock. Tensor Core figures are dense: where a datasheet
gives only the "with sparsity" figure (H100, H200, L4), the dense figure is half of it. float32 is
the CUDA-core (non-Tensor-Core) figure; tf32 the TF32 Tensor Core one. Keys are the names NVML
reports (`nvmlDeviceGetName`); the SXM parts of A100 and H100 report their memory and form factor.
"""
from __future__ import annotations

SOURCE = "NVIDIA datasheet, dense (half the 'with sparsity' figure where only that is given)"

_T = 1e12
# (float32, tf32, bfloat16, float16) dense FLOP/s
_H100_SXM = (67 * _T, 494.5 * _T, 989.5 * _T, 989.5 * _T)
_H100_PCIE = (51 * _T, 378 * _T, 756.5 * _T, 756.5 * _T)
_HOPPER_NVL = (60 * _T, 417.5 * _T, 835.5 * _T, 835.5 * _T)  # H100 NVL and H200 NVL
_A100 = (19.5 * _T, 156 * _T, 312 * _T, 312 * _T)  # SXM4 and PCIe alike
_L4 = (30.3 * _T, 60 * _T, 121 * _T, 121 * _T)
_L40S = (91.6 * _T, 183 * _T, 362.05 * _T, 362.05 * _T)

DENSE_PEAKS = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,  # H100 SXM5
    "NVIDIA H100 PCIe": _H100_PCIE,
    "NVIDIA H100 NVL": _HOPPER_NVL,
    "NVIDIA H200": _H100_SXM,  # H200 SXM: the H100 SXM's compute, more and faster memory
    "NVIDIA H200 NVL": _HOPPER_NVL,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA L4": _L4,
    "NVIDIA L40S": _L40S,
}
_COLUMN = {"float32": 0, "tf32": 1, "bfloat16": 2, "float16": 3}


def dense_peak_flops_per_s(board: str | None, dtype: str, float32_matmul: str | None = None,
                           mig: bool = False) -> tuple[float | None, str]:
    """The datasheet's dense peak of `board` (its NVML name; None: a CPU trial) at compute `dtype`
    ("float32" | "bfloat16" | "float16"; float32 under float32_matmul "tf32" reads the TF32 Tensor
    Core figure), and its source; (None, reason) when there is none."""
    if board is None:
        return None, "a CPU trial: no datasheet peak"
    if mig:
        return None, f"a MIG instance of {board}: its share of the board's datasheet peak is not tabulated"
    if board not in DENSE_PEAKS:
        return None, (f"{board!r} is not in the datasheet table (bench/measure/datasheet.py: "
                      f"{', '.join(DENSE_PEAKS)})")
    column = "tf32" if dtype == "float32" and float32_matmul == "tf32" else dtype
    if column not in _COLUMN:
        return None, f"no datasheet figure for {dtype}"
    return DENSE_PEAKS[board][_COLUMN[column]], f"{SOURCE}: {board}, {column}"
