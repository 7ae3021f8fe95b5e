"""Predicted peak RSS and time per recycling pass, and the chunking that fits a memory limit.

Memory. A pass's peak is the process before it (libraries, weights) plus the
activations live at the worst moment, and at every length those are a few
whole tensors of three kinds: the pair representation [L, L, 128] in fp32
(``pair_bytes``), the MSA [S, L, 256] and the extra MSA [E, L, 64]. So

    live = (k_pair[precision][groups] + k_prev) · pair_bytes + k_msa · msa_bytes + k_extra · extra_bytes
    peak = base + live + min(slack · live, 256 MiB) + k_outside · pair_bytes

the third term being what the engine's block cache still holds freed at the
moment of the live peak (its bound is a quarter of the peak, at most 256 MiB;
``slack`` is measured: on a Zen 3 the peak sits near base + live, since the
moment of most live memory leaves little free), the last what the end of the pass holds outside that cache (the
heads' logits, the confidence functions' numpy temporaries: the cache keeps
the trunk's blocks mapped, so these come on top). ``k_pair`` depends on the triangle multiplication's ``channel_groups``
(1: its whole [4c, L, L] projection at once; more: the grouped, row-sliced
path) and is measured by :mod:`.calibrate` (the block cache's own count of
live bytes during a pass), with ``base``; ``k_prev`` (the recycled pair,
float16, from the second pass on), ``k_msa`` and ``k_extra`` are counted from the engine (the stream, its LayerNorm copy and the attention
slices: two of each, three for the extra MSA, whose embedding also makes a
transient copy).

Time. A main Evoformer block costs ``flops_block / rate + e · L²`` (its
matmul work from :mod:`.flops` at the achieved rate, and the elementwise
work of its pair updates: LayerNorms, softmax, gating, memory-bound, so per
element); the rest of the pass (embeddings, the extra-MSA and template
stacks, structure module, heads) the same way with its own two
coefficients, plus a constant. The calibration times the main blocks apart
from the rest (the engine's progress hook), per precision. More channel
groups cost a little time (the grouped path recomputes a LayerNorm per
group), measured as a factor.

Pair storage. In bf16 the runner may store the pair itself in bf16 (the
policy's ``pair_storage``), as ColabFold's bf16 trunk does: it is chosen
only where the fp32 pair does not fit with any channel grouping, since it
adds ColabFold's own bf16 error. Its coefficients are measured apart, under
the key ``"bf16-pair"`` (:func:`memory_key`); its time is bf16's.

Without a calibration file for this CPU and thread count the built-in
coefficients of its vector ISA are used (:data:`BUILT_IN`: measured on an AMD
Zen 5 for AVX-512, on an AMD Zen 3 for AVX2, 2 threads each; the memory terms
differ little, the time terms about 3x), and ``Estimate.calibrated`` says so.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

from . import flops

GIB = 1 << 30
#: channel_groups the engine may choose, cheapest first (it divides the 128 intermediate channels).
GROUP_CHOICES = (1, 4, 16)
#: From this length the grouped triangle multiplication costs no time: `af2cpu calibrate` on a Zen 5,
#: 2 threads, a pass with 2 Evoformer blocks: 13.4 s grouped vs 13.7 s whole at 512 residues, 34.4 vs 36.7 s
#: at 768 (2.7 vs 2.4 s at 256).
GROUPED_FROM = 512
#: Counted, not fitted (see the module docstring).
K_MSA, K_EXTRA = 2.0, 3.0
#: The recycled pair (float16 [L, L, 128]: half a pair tensor), held through every pass after the first.
K_PREV = 0.5
#: The monomer template embedding's peak above the pair it is added to, in fp32 pair tensors:
#: ``bench/template_memory.py`` on a Zen 3, fp32, 4 groups, 4 templates: 2.55 at 1,000 residues (3.02 at
#: 600, where fixed costs weigh more). One template's [L, L, 64] stack, its working set and the running
#: template attention (templates are attended one at a time, never stacked). Where it exceeds the trunk's
#: ``k_pair`` the templates are the pass's peak.
K_TEMPLATES = 2.55
COEFFICIENTS_VERSION = 4
#: The block cache's bound on the freed bytes it keeps mapped: a quarter of the live peak, at most 256 MiB
#: (``kernels/block_cache.cpp``).
MAX_SLACK = 0.25
CACHE_SLACK_BYTES = 256 << 20


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one model pass sees.

    num_res: residues (all chains); msa_depth: MSA cluster rows the model
    embeds (1 for a single sequence); extra_msa_depth: extra-MSA rows;
    templates: template count (0: none); multimer: an AlphaFold-Multimer model.
    """

    num_res: int
    msa_depth: int = 1
    extra_msa_depth: int = 1
    templates: int = 0
    multimer: bool = False


@dataclasses.dataclass(frozen=True)
class Estimate:
    peak_rss_bytes: int
    seconds_per_pass: float
    channel_groups: int  # triangle multiplication: channels contracted in this many groups (1: unchunked)
    memory_limit: Optional[int]  # bytes the prediction must fit in (None: no limit known)
    calibrated: bool  # coefficients measured on this machine (else built-in defaults)
    pair_storage: str = "fp32"  # the dtype the trunk stores the pair in ("bf16" only under bf16 precision)

    @property
    def fits(self) -> bool:
        return self.memory_limit is None or self.peak_rss_bytes <= self.memory_limit


@dataclasses.dataclass(frozen=True)
class Coefficients:
    """What the calibration measures (see the module docstring for the model).

    ``base_bytes[precision]``: the process before the activations (bf16 holds its weights' GEMM
    layouts in bf16: less). ``k_pair[precision][groups]``: pair-sized tensors live at the trunk's
    peak (torch's, counted by the block cache). ``k_outside[precision]``: pair-sized memory held
    outside the cache at the end of the pass (heads, the confidence functions' numpy temporaries).
    ``time[precision]``: seconds per FLOP and per pair element of a main
    Evoformer block, the same for the rest of the pass, and a fixed cost.
    ``group_time_factor[groups]``: time relative to 1 group. ``slack``: the block cache's freed
    bytes at the live peak, as a fraction of the live bytes (the cache's own bound, 1/4, unless measured).
    """

    base_bytes: Dict[str, float]
    k_pair: Dict[str, Dict[int, float]]
    time: Dict[str, Dict[str, float]]
    group_time_factor: Dict[int, float]
    k_outside: Dict[str, float] = dataclasses.field(default_factory=dict)
    slack: float = MAX_SLACK
    cpu: str = ""
    threads: int = 0
    calibrated: bool = False

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["version"] = COEFFICIENTS_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Coefficients":
        if d.get("version") != COEFFICIENTS_VERSION:
            raise ValueError(f"calibration format {d.get('version')!r}, expected {COEFFICIENTS_VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in fields}
        d["k_pair"] = {p: {int(g): float(k) for g, k in by_group.items()} for p, by_group in d["k_pair"].items()}
        d["group_time_factor"] = {int(k): float(v) for k, v in d["group_time_factor"].items()}
        return cls(**d)


#: Built-in for AVX-512: ``af2cpu calibrate`` on an AMD EPYC Zen 5, 2 threads (2026-12-01, with the cache slack
#: fitted, as the AVX2 ones), rounded.
DEFAULT = Coefficients(
    base_bytes={"fp32": 1.15 * GIB, "bf16": 1.04 * GIB, "bf16-pair": 1.04 * GIB},
    k_pair={"fp32": {1: 7.12, 4: 2.87, 16: 2.31}, "bf16": {1: 4.02, 4: 2.01}, "bf16-pair": {4: 1.41, 16: 1.12}},
    k_outside={"fp32": 0.0, "bf16": 0.375, "bf16-pair": 0.52},
    slack=0.092,
    time={"fp32": {"block_seconds_per_flop": 1 / 561e9, "block_seconds_per_pair_element": 4.6e-6,
                   "rest_seconds_per_flop": 1 / 406e9, "rest_seconds_per_pair_element": 4.0e-6, "fixed_seconds": 0.0},
          "bf16": {"block_seconds_per_flop": 1 / 1045e9, "block_seconds_per_pair_element": 2.4e-6,
                   "rest_seconds_per_flop": 1 / 456e9, "rest_seconds_per_pair_element": 9.2e-7, "fixed_seconds": 0.0}},
    group_time_factor={1: 1.0, 4: 1.0, 16: 1.0},
    cpu="AMD Zen 5 (AVX-512)", threads=2,
)

#: Built-in for AVX2 (fp32 only: no native bf16): ``af2cpu calibrate`` on an AMD EPYC Zen 3, 2 threads
#: (2026-11-30), rounded. The memory terms are the Zen 5's within 5%; a pass takes about 3x as long.
AVX2 = Coefficients(
    base_bytes={"fp32": 1.15 * GIB},
    k_pair={"fp32": {1: 7.01, 4: 2.76, 16: 2.19}},
    k_outside={"fp32": 0.067},
    slack=0.033,
    time={"fp32": {"block_seconds_per_flop": 1 / 67.6e9, "block_seconds_per_pair_element": 0.0,
                   "rest_seconds_per_flop": 1 / 85.6e9, "rest_seconds_per_pair_element": 7.1e-6,
                   "fixed_seconds": 0.0}},
    group_time_factor={1: 1.0, 4: 1.08, 16: 1.10},
    cpu="AMD Zen 3 (AVX2)", threads=2,
)

#: The built-in coefficients by torch's CPU capability (``torch.backends.cpu.get_cpu_capability()``);
#: any other level gets the AVX-512 ones.
BUILT_IN = {"AVX512": DEFAULT, "AVX2": AVX2}


def built_in(capability: str, threads: Optional[int] = None) -> Coefficients:
    """The built-in coefficients for a CPU of torch capability ``capability`` ("AVX512", "AVX2", ...), for
    ``threads`` threads: their time terms scaled from the 2 they were measured with as if a pass's work
    divided evenly (optimistic for many threads; ``af2cpu calibrate`` measures the real scaling)."""
    c = BUILT_IN.get(capability, DEFAULT)
    if not threads or threads == c.threads:
        return c
    ratio = c.threads / threads
    time = {p: {k: v * ratio for k, v in t.items()} for p, t in c.time.items()}
    return dataclasses.replace(c, time=time, threads=threads)


def calibration_dir() -> Path:
    root = os.environ.get("AF2CPU_CALIBRATION_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "af2cpu-plugin" / "calibration"


def calibration_path(cpu_model: str, threads: int) -> Path:
    safe = "".join(ch if ch.isalnum() else "-" for ch in cpu_model).strip("-") or "cpu"
    return calibration_dir() / f"{safe}-{threads}t.json"


def load(cpu_model: Optional[str] = None, threads: Optional[int] = None,
         capability: Optional[str] = None) -> Coefficients:
    """This machine's calibration for ``threads`` if one is stored, else the built-in coefficients of
    this CPU's capability (:func:`built_in`)."""
    if cpu_model is None or capability is None:
        from af2cpu_plugin.cpu import cpu_info

        info = cpu_info()
        cpu_model = info.calibration_name if cpu_model is None else cpu_model
        capability = info.capability if capability is None else capability
    path = calibration_path(cpu_model, threads or 1)
    try:
        return _read(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError):
        return built_in(capability, threads)


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int) -> Coefficients:
    """Parsed once per file version (the runner asks once per pass)."""
    return Coefficients.from_json(json.loads(Path(path).read_text()))


def save(coefficients: Coefficients) -> Path:
    from af2cpu_plugin.atomic import atomic_write_bytes

    path = calibration_path(coefficients.cpu, coefficients.threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(coefficients.to_json(), indent=2).encode())
    return path


def tensor_bytes(workload: Workload) -> Tuple[int, int, int]:
    """(pair, MSA, extra-MSA) bytes of one fp32 copy of each representation."""
    L = workload.num_res
    return (L * L * flops.C_Z * 4, max(workload.msa_depth, 1) * L * flops.C_M * 4,
            max(workload.extra_msa_depth, 1) * L * flops.C_E * 4)


def memory_key(precision: str, pair_storage: str = "fp32") -> str:
    """The coefficients' key for a precision and pair storage: the precision, or ``"bf16-pair"``."""
    return "bf16-pair" if pair_storage == "bf16" else precision


def peak_rss(workload: Workload, groups: int, coefficients: Coefficients = DEFAULT, precision: str = "fp32",
             pair_storage: str = "fp32", passes: int = 2) -> int:
    """``base`` plus the activations live at the peak (with ``passes`` > 1, the recycled pair too), plus
    what the engine's block cache still holds freed then (``slack`` of it, at most 256 MiB), plus what the
    end of the pass holds outside that cache."""
    pair, msa, extra = tensor_bytes(workload)
    key = memory_key(precision, pair_storage)
    if key not in coefficients.k_pair and key in DEFAULT.k_pair:
        coefficients = DEFAULT  # a calibration made before bf16 pair storage existed: the built-in values
    by_group = coefficients.k_pair.get(key) or coefficients.k_pair["fp32"]
    # A group count not calibrated in this precision (bf16 measures 1 and 4): the nearest fewer groups
    # measured (more groups never hold more), else the most frugal one measured.
    fewer = [g for g in by_group if g <= groups]
    k_pair = by_group[max(fewer)] if fewer else by_group[min(by_group)]
    if workload.templates and not workload.multimer:
        k_pair = max(k_pair, 1.0 + K_TEMPLATES)  # the pair, plus the template embedding made beside it
    live = (k_pair + (K_PREV if passes > 1 else 0.0)) * pair + K_MSA * msa + K_EXTRA * extra
    base = coefficients.base_bytes.get(key) or coefficients.base_bytes["fp32"]
    outside = coefficients.k_outside.get(key, 0.0) * pair
    return int(base + live + min(coefficients.slack * live, CACHE_SLACK_BYTES) + outside)


def seconds_per_pass(workload: Workload, precision: str, groups: int,
                     coefficients: Coefficients = DEFAULT) -> float:
    L, T = workload.num_res, workload.templates
    rows = workload.msa_depth + (T if T and not workload.multimer else 0)  # template torsion rows
    t = coefficients.time.get(precision) or coefficients.time["fp32"]
    block = t["block_seconds_per_flop"] * flops.main_block_flops(L, rows) + t["block_seconds_per_pair_element"] * L * L
    rest = (t["rest_seconds_per_flop"] * flops.pass_flops(L, rows, workload.extra_msa_depth, T, main_blocks=0)
            + t["rest_seconds_per_pair_element"] * L * L * flops.pair_blocks(T, main_blocks=0)
            + t["fixed_seconds"])
    return (flops.MAIN_BLOCKS * block + rest) * coefficients.group_time_factor.get(groups, 1.0)


def estimate(workload: Workload, precision: str = "fp32", threads: int = 1,
             memory_limit: Optional[int] = None, coefficients: Optional[Coefficients] = None,
             passes: int = 2) -> Estimate:
    """The chunking the engine will use, and its predicted peak RSS and time per pass.

    From :data:`GROUPED_FROM` residues the grouped triangle multiplication
    (4 groups) is as fast as the whole one, so it is used even when memory is
    plentiful; below that, 1 group. More groups where ``memory_limit`` needs
    them; when nothing fits, the most frugal choice (``Estimate.fits`` says so).
    """
    c = coefficients or load(threads=threads)
    groups = [g for g in GROUP_CHOICES if g >= (4 if workload.num_res >= GROUPED_FROM else 1)]
    # Cheapest first: the fp32 pair in ever more channel groups (the same result to rounding), then,
    # in bf16 only, the bf16 pair (ColabFold's bf16 error).
    choices = [("fp32", g) for g in groups] + ([("bf16", g) for g in groups] if precision == "bf16" else [])
    if memory_limit is None:
        storage, g = choices[0]
    else:
        storage, g = next((sg for sg in choices
                           if peak_rss(workload, sg[1], c, precision, sg[0], passes) <= memory_limit), choices[-1])
    return Estimate(peak_rss_bytes=peak_rss(workload, g, c, precision, storage, passes),
                    seconds_per_pass=seconds_per_pass(workload, precision, g, c),
                    channel_groups=g, memory_limit=memory_limit, calibrated=c.calibrated, pair_storage=storage)
